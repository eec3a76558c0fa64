"""The tiny-model factory: a GLM-4-style tokenizer and tiny Glm / Glm4 models, built offline."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("tokenizers")

import torch  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402

from mentalglm.demo.tiny import (  # noqa: E402
    GLM4_SPECIAL_TOKENS,
    TOKENIZER_CHECK_TEXTS,
    build_tiny_glm,
    build_tokenizer,
    corpus_texts,
    parameter_count,
)
from mentalglm.modelfiles.tokens import byte_to_unicode  # noqa: E402


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    return build_tokenizer(tmp_path_factory.mktemp("tokenizer"))


@pytest.fixture(scope="module")
def tokenizer(tokenizer_dir):
    return AutoTokenizer.from_pretrained(tokenizer_dir)


@pytest.fixture(scope="module")
def tokenizer_json(tokenizer_dir):
    return json.loads((tokenizer_dir / "tokenizer.json").read_text(encoding="utf-8"))


def ids_of(tokenizer, *tokens):
    return [tokenizer.convert_tokens_to_ids(t) for t in tokens]


# --- tokenizer -----------------------------------------------------------------------------


def test_corpus_holds_the_samples_and_extra_lines():
    texts = corpus_texts()
    assert len(texts) == len(set(texts)) > 100
    assert any("抑郁" in t for t in texts)
    assert any("😭" in t for t in texts) and any("1234567" in t for t in texts)


def test_special_tokens_follow_the_bpe_vocabulary(tokenizer_json, tokenizer):
    vocab = tokenizer_json["model"]["vocab"]
    assert sorted(vocab.values()) == list(range(1024))
    added = tokenizer_json["added_tokens"]
    assert [t["content"] for t in added] == list(GLM4_SPECIAL_TOKENS)
    assert [t["id"] for t in added] == list(range(1024, 1034))
    assert all(t["special"] for t in added)
    assert len(tokenizer) == 1034
    assert ids_of(tokenizer, "<|endoftext|>", "[gMASK]", "<sop>", "<|user|>", "<|assistant|>") == \
        [1024, 1026, 1028, 1031, 1032]


def test_every_byte_is_a_token(tokenizer_json):
    vocab = tokenizer_json["model"]["vocab"]
    assert all(ch in vocab for ch in byte_to_unicode().values())


def test_tokenizer_components_are_glm4(tokenizer_json):
    pre = tokenizer_json["pre_tokenizer"]
    assert pre["type"] == "Sequence"
    assert [p["type"] for p in pre["pretokenizers"]] == ["Split", "ByteLevel"]
    assert pre["pretokenizers"][1]["use_regex"] is False
    assert tokenizer_json["decoder"]["type"] == "ByteLevel"
    assert tokenizer_json["post_processor"]["type"] == "TemplateProcessing"


def test_prompt_markers_are_single_tokens(tokenizer):
    prompt = "[gMASK]<sop><|system|>\n你是心理咨询助手<|user|>\n最近总是失眠<|assistant|>\n"
    ids = tokenizer(prompt, add_special_tokens=False).input_ids
    g, sop, system, user, assistant = ids_of(tokenizer, "[gMASK]", "<sop>", "<|system|>", "<|user|>", "<|assistant|>")
    assert ids[:3] == [g, sop, system]
    assert ids.count(user) == 1 and ids.count(assistant) == 1
    assert ids[ids.index(assistant) + 1:] == tokenizer("\n", add_special_tokens=False).input_ids
    assert tokenizer.decode(ids) == prompt


def test_plain_encoding_prepends_gmask_sop(tokenizer):
    ids = tokenizer("你好").input_ids
    assert ids[:2] == ids_of(tokenizer, "[gMASK]", "<sop>")
    assert ids[2:] == tokenizer("你好", add_special_tokens=False).input_ids


@pytest.mark.parametrize("text", TOKENIZER_CHECK_TEXTS)
def test_decode_encode_round_trip(tokenizer, text):
    ids = tokenizer(text, add_special_tokens=False).input_ids
    assert tokenizer.decode(ids) == text
    assert tokenizer.decode(tokenizer(text).input_ids, skip_special_tokens=True) == text
    assert max(ids) < 1024


def test_merges_give_compact_chinese(tokenizer):
    text = "判断下面这条社交媒体帖子的发帖者是否表现出抑郁。"
    assert len(tokenizer(text, add_special_tokens=False).input_ids) < len(text.encode("utf-8")) / 2


def test_chat_template_renders_the_glm4_prompt(tokenizer):
    user = [{"role": "user", "content": "最近总是失眠"}]
    assert tokenizer.apply_chat_template(user, tokenize=False, add_generation_prompt=True) == \
        "[gMASK]<sop><|user|>\n最近总是失眠<|assistant|>\n"
    with_system = [{"role": "system", "content": "你是助手"}] + user
    assert tokenizer.apply_chat_template(with_system, tokenize=False, add_generation_prompt=True) == \
        "[gMASK]<sop><|system|>\n你是助手<|user|>\n最近总是失眠<|assistant|>\n"
    assert tokenizer.apply_chat_template(user, tokenize=False) == "[gMASK]<sop><|user|>\n最近总是失眠"


def test_tokenizer_config(tokenizer_dir, tokenizer):
    config = json.loads((tokenizer_dir / "tokenizer_config.json").read_text(encoding="utf-8"))
    assert config["tokenizer_class"] == "PreTrainedTokenizerFast"
    assert "chat_template" in config
    assert tokenizer.padding_side == "left"
    assert tokenizer.eos_token == tokenizer.pad_token == "<|endoftext|>"


def test_tokenizer_build_is_deterministic(tokenizer_dir, tmp_path):
    # Another process, so hash seeds and thread scheduling differ too.
    code = "import sys; from mentalglm.demo.tiny import build_tokenizer; build_tokenizer(sys.argv[1])"
    subprocess.run([sys.executable, "-c", code, str(tmp_path)], check=True)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        assert (tmp_path / name).read_bytes() == (tokenizer_dir / name).read_bytes()


def test_merges_recovered_from_ranks_are_the_trained_merges(tokenizer_json):
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers, trainers

    from mentalglm.demo.tiny import GLM4_PRETOKENIZE_REGEX

    trained = Tokenizer(models.BPE())
    trained.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(GLM4_PRETOKENIZE_REGEX), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    trained.train_from_iterator(corpus_texts(), trainer=trainers.BpeTrainer(
        vocab_size=1024, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
    assert json.loads(trained.to_str())["model"]["merges"] == tokenizer_json["model"]["merges"]


def test_tokenizer_rejects_a_tiny_vocab(tmp_path):
    with pytest.raises(ValueError, match="at least 257"):
        build_tokenizer(tmp_path, vocab_size=100)


# --- models --------------------------------------------------------------------------------

MODEL_CASES = {
    "glm": dict(arch="glm"),
    "glm4": dict(arch="glm4"),
    "glm-9b-rope": dict(arch="glm", rope_theta=5e6, rms_norm_eps=1e-6, num_kv_heads=1, max_position_embeddings=4096),
    "glm4-quarter-rotary": dict(arch="glm4", rope_theta=5e6, rms_norm_eps=1e-6, partial_rotary_factor=0.25,
                                hidden_size=96, num_heads=3, num_kv_heads=1, head_dim=32),
}


@pytest.fixture(scope="module")
def models(tmp_path_factory, tokenizer_dir):
    return {name: build_tiny_glm(tmp_path_factory.mktemp(name), tokenizer_dir=tokenizer_dir, **kwargs)
            for name, kwargs in MODEL_CASES.items()}


@pytest.mark.parametrize("case", sorted(MODEL_CASES))
def test_model_loads_without_remote_code_and_round_trips_its_config(models, tokenizer, case):
    kwargs = MODEL_CASES[case]
    model = AutoModelForCausalLM.from_pretrained(models[case])
    assert type(model).__name__ == {"glm": "GlmForCausalLM", "glm4": "Glm4ForCausalLM"}[kwargs["arch"]]
    config = model.config
    assert config.rope_parameters["rope_theta"] == kwargs.get("rope_theta", 10000.0)
    assert config.rope_parameters["partial_rotary_factor"] == kwargs.get("partial_rotary_factor", 0.5)
    assert config.rms_norm_eps == kwargs.get("rms_norm_eps", 1e-5)
    assert config.max_position_embeddings == kwargs.get("max_position_embeddings", 2048)
    assert config.head_dim == kwargs.get("head_dim", 16)
    assert config.num_key_value_heads == kwargs.get("num_kv_heads", 2)
    assert config.attention_bias is True
    assert config.vocab_size == 1088  # 1034 tokens rounded up to a multiple of 64
    assert config.eos_token_id == ids_of(tokenizer, "<|endoftext|>", "<|user|>", "<|observation|>")
    assert config.pad_token_id == tokenizer.pad_token_id
    assert model.generation_config.eos_token_id == config.eos_token_id

    ids = tokenizer("[gMASK]<sop><|user|>\n最近总是失眠<|assistant|>\n", add_special_tokens=False,
                    return_tensors="pt").input_ids
    with torch.no_grad():
        logits = model(ids).logits
    assert logits.shape == (1, ids.shape[1], 1088)
    assert torch.isfinite(logits).all()
    assert logits[0, -1].std() > 0.3  # well-spread, not near-uniform
    assert not torch.allclose(logits[0, -1], logits[0, -2])


def test_glm4_has_the_post_sublayer_norms(models):
    from safetensors import safe_open

    with safe_open(str(models["glm4"] / "model.safetensors"), framework="pt") as f:
        names = set(f.keys())
        norm = f.get_tensor("model.layers.0.post_mlp_layernorm.weight")
        bias = f.get_tensor("model.layers.0.self_attn.q_proj.bias")
    assert "model.layers.1.post_self_attn_layernorm.weight" in names
    assert not torch.allclose(norm, torch.ones_like(norm))  # random, so a dropped norm shows
    assert bias.abs().sum() > 0


def test_weights_follow_the_seed(tmp_path, tokenizer_dir, models):
    same = build_tiny_glm(tmp_path / "same", tokenizer_dir=tokenizer_dir)
    other = build_tiny_glm(tmp_path / "other", tokenizer_dir=tokenizer_dir, seed=1)
    assert (same / "model.safetensors").read_bytes() == (models["glm"] / "model.safetensors").read_bytes()
    assert (other / "model.safetensors").read_bytes() != (same / "model.safetensors").read_bytes()


def test_dtype_and_parameter_count(tmp_path, tokenizer_dir, models):
    half = build_tiny_glm(tmp_path / "bf16", tokenizer_dir=tokenizer_dir, dtype="bfloat16")
    assert json.loads((half / "config.json").read_text())["dtype"] == "bfloat16"
    model = AutoModelForCausalLM.from_pretrained(models["glm"])
    assert parameter_count(models["glm"]) == parameter_count(half) == model.num_parameters()


def test_trains_its_own_tokenizer_when_none_given(tmp_path, tokenizer_dir):
    model_dir = build_tiny_glm(tmp_path, hidden_size=32, num_layers=1, intermediate_size=64, num_heads=2,
                               num_kv_heads=1, tokenizer_vocab_size=512)
    assert AutoTokenizer.from_pretrained(model_dir).convert_tokens_to_ids("<|endoftext|>") == 512
    assert json.loads((model_dir / "config.json").read_text())["vocab_size"] == 576


@pytest.mark.parametrize("kwargs, message", [
    (dict(arch="llama"), "unknown arch"),
    (dict(dtype="int8"), "unknown dtype"),
    (dict(num_heads=4, num_kv_heads=3), "multiple of num_kv_heads"),
    (dict(vocab_size=1000), "smaller than the tokenizer"),
])
def test_bad_arguments_raise(tmp_path, tokenizer_dir, kwargs, message):
    with pytest.raises(ValueError, match=message):
        build_tiny_glm(tmp_path, tokenizer_dir=tokenizer_dir, **kwargs)
