"""ChatGLM (THUDM original layout) → transformers-native Glm import, on tiny models built here."""

from __future__ import annotations

import base64
import json
import shutil

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("safetensors")

import torch  # noqa: E402
from safetensors.torch import save_file  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402

from mentalglm.converters.chatglm import (  # noqa: E402
    TensorSource,
    import_chatglm,
    is_chatglm_layout,
    tokenizer_json_from_tiktoken,
)
from mentalglm.core.errors import MentalGLMError  # noqa: E402
from mentalglm.demo.tiny import (  # noqa: E402
    GLM4_SPECIAL_TOKENS,
    TOKENIZER_CHECK_TEXTS,
    build_tiny_glm,
    build_tokenizer,
    write_chatglm_layout,
)

THUDM_KEYS = {
    "architectures", "model_type", "auto_map", "add_bias_linear", "add_qkv_bias", "apply_query_key_layer_scaling",
    "apply_residual_connection_post_layernorm", "attention_dropout", "attention_softmax_in_fp32",
    "bias_dropout_fusion", "ffn_hidden_size", "fp32_residual_connection", "hidden_dropout", "hidden_size",
    "kv_channels", "layernorm_epsilon", "multi_query_attention", "multi_query_group_num", "num_attention_heads",
    "num_layers", "num_hidden_layers", "original_rope", "padded_vocab_size", "post_layer_norm", "rmsnorm",
    "rope_ratio", "seq_length", "use_cache", "torch_dtype", "tie_word_embeddings", "eos_token_id", "pad_token_id",
}
PROMPT = "[gMASK]<sop><|user|>\n最近总是失眠，什么都不想做。<|assistant|>\n"


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    return build_tokenizer(tmp_path_factory.mktemp("tokenizer"))


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory, tokenizer_dir):
    # GLM-4-9B-chat's rope base and epsilon, so rope_ratio and layernorm_epsilon are exercised.
    return build_tiny_glm(tmp_path_factory.mktemp("hf"), tokenizer_dir=tokenizer_dir, rope_theta=5e6,
                          rms_norm_eps=1e-6, num_heads=4, num_kv_heads=2, max_position_embeddings=4096)


@pytest.fixture(scope="module")
def chatglm_dir(tmp_path_factory, hf_dir):
    # Small shards so the importer reads an index like the real 10-shard checkpoints.
    return write_chatglm_layout(hf_dir, tmp_path_factory.mktemp("chatglm"), max_shard_size=64_000)


@pytest.fixture(scope="module")
def imported_dir(tmp_path_factory, chatglm_dir):
    return import_chatglm(chatglm_dir, tmp_path_factory.mktemp("imported"))


def all_tensors(model_dir):
    source = TensorSource(model_dir)
    return {name: source.get(name) for name in source.names()}


def logits_of(model_dir, ids):
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    with torch.no_grad():
        return model(ids).logits[0]


@pytest.fixture(scope="module")
def prompt_ids(hf_dir):
    return AutoTokenizer.from_pretrained(hf_dir)(PROMPT, add_special_tokens=False, return_tensors="pt").input_ids


# --- the ChatGLM layout -------------------------------------------------------------------


def test_chatglm_config_has_the_thudm_keys(chatglm_dir):
    config = json.loads((chatglm_dir / "config.json").read_text())
    assert THUDM_KEYS <= set(config)
    assert "vocab_size" not in config
    assert config["architectures"] == ["ChatGLMModel"] and config["model_type"] == "chatglm"
    assert config["auto_map"]["AutoModelForCausalLM"] == "modeling_chatglm.ChatGLMForConditionalGeneration"
    assert config["rope_ratio"] == 500.0 and config["layernorm_epsilon"] == 1e-6
    assert (config["padded_vocab_size"], config["kv_channels"], config["multi_query_group_num"]) == (1088, 16, 2)
    assert (config["seq_length"], config["ffn_hidden_size"], config["num_layers"]) == (4096, 128, 2)
    assert config["eos_token_id"] == [1024, 1031, 1033] and config["pad_token_id"] == 1024
    assert is_chatglm_layout(chatglm_dir)


def test_chatglm_tensors_are_named_and_fused_like_thudm(chatglm_dir):
    index = json.loads((chatglm_dir / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1
    source = TensorSource(chatglm_dir)
    layer = "transformer.encoder.layers.1."
    expected = {"transformer.embedding.word_embeddings.weight", "transformer.encoder.final_layernorm.weight",
                "transformer.output_layer.weight", "transformer.rotary_pos_emb.inv_freq"}
    for n in range(2):
        expected |= {f"transformer.encoder.layers.{n}.{s}" for s in (
            "input_layernorm.weight", "self_attention.query_key_value.weight", "self_attention.query_key_value.bias",
            "self_attention.dense.weight", "post_attention_layernorm.weight", "mlp.dense_h_to_4h.weight",
            "mlp.dense_4h_to_h.weight")}
    assert set(source.names()) == expected
    assert source.shape(layer + "self_attention.query_key_value.weight") == ((4 + 2 * 2) * 16, 64)
    assert source.shape(layer + "mlp.dense_h_to_4h.weight") == (2 * 128, 64)
    # The buffer ChatGLM's RotaryEmbedding(kv_channels // 2) registers: base 10000 (rope_ratio is
    # applied only in its forward pass).
    expected_inv_freq = 1.0 / (10000 ** (torch.arange(0, 8, 2, dtype=torch.float32) / 8))
    assert torch.allclose(source.get("transformer.rotary_pos_emb.inv_freq"), expected_inv_freq)


def test_tokenizer_model_is_tiktoken(chatglm_dir, tokenizer_dir):
    lines = (chatglm_dir / "tokenizer.model").read_text().splitlines()
    assert len(lines) == 1024
    assert [int(line.split()[1]) for line in lines] == list(range(1024))
    tokens = [base64.b64decode(line.split()[0]) for line in lines]
    assert len(set(tokens)) == 1024 and {bytes([b]) for b in range(256)} <= set(tokens)
    assert "你".encode() in tokens or any(t.startswith("你".encode()) for t in tokens)
    assert not any(t in tokens for t in (s.encode() for s in GLM4_SPECIAL_TOKENS))
    config = json.loads((chatglm_dir / "tokenizer_config.json").read_text())
    assert config["tokenizer_class"] == "ChatGLM4Tokenizer"
    assert config["auto_map"] == {"AutoTokenizer": ["tokenization_chatglm.ChatGLM4Tokenizer", None]}
    assert {int(i): t["content"] for i, t in config["added_tokens_decoder"].items()} == \
        {1024 + i: t for i, t in enumerate(GLM4_SPECIAL_TOKENS)}
    assert config["padding_side"] == "left" and config["remove_space"] is False
    assert config["eos_token"] == config["pad_token"] == "<|endoftext|>"
    assert config["additional_special_tokens"] == list(GLM4_SPECIAL_TOKENS)


def _rms_norm(x, weight, eps):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight


def _chatglm_reference_logits(model_dir, ids):
    """GLM-4's forward pass as THUDM's modeling_chatglm.py computes it, written out for the test."""
    config = json.loads((model_dir / "config.json").read_text())
    w = {name: t.float() for name, t in all_tensors(model_dir).items()}
    heads, groups, hd = config["num_attention_heads"], config["multi_query_group_num"], config["kv_channels"]
    eps, seq = config["layernorm_epsilon"], ids.shape[1]
    rot = hd // 2  # RotaryEmbedding(kv_channels // 2): the first half of each head rotates
    inv_freq = 1.0 / ((10000 * config["rope_ratio"]) ** (torch.arange(0, rot, 2, dtype=torch.float32) / rot))
    angles = torch.outer(torch.arange(seq, dtype=torch.float32), inv_freq)  # [seq, rot/2]
    cos, sin = angles.cos()[None, :, None, :], angles.sin()[None, :, None, :]

    def rope(x):  # x: [batch, seq, heads, hd]; adjacent pairs rotate (GLM's interleaved rotary)
        x_rot, x_pass = x[..., :rot], x[..., rot:]
        pairs = x_rot.reshape(*x_rot.shape[:-1], rot // 2, 2)
        out = torch.stack([pairs[..., 0] * cos - pairs[..., 1] * sin,
                           pairs[..., 1] * cos + pairs[..., 0] * sin], dim=-1).flatten(-2)
        return torch.cat([out, x_pass], dim=-1)

    hidden = w["transformer.embedding.word_embeddings.weight"][ids]
    mask = torch.full((seq, seq), float("-inf")).triu(1)
    for n in range(config["num_layers"]):
        p = f"transformer.encoder.layers.{n}."
        x = _rms_norm(hidden, w[p + "input_layernorm.weight"], eps)
        mixed = x @ w[p + "self_attention.query_key_value.weight"].T + w[p + "self_attention.query_key_value.bias"]
        q, k, v = mixed.split([heads * hd, groups * hd, groups * hd], dim=-1)
        q = rope(q.unflatten(-1, (heads, hd)))
        k = rope(k.unflatten(-1, (groups, hd)))
        v = v.unflatten(-1, (groups, hd))
        k = k.repeat_interleave(heads // groups, dim=2)  # each group serves consecutive query heads
        v = v.repeat_interleave(heads // groups, dim=2)
        scores = torch.einsum("bqhd,bkhd->bhqk", q, k) / hd ** 0.5 + mask
        context = torch.einsum("bhqk,bkhd->bqhd", scores.softmax(-1), v).flatten(-2)
        hidden = hidden + context @ w[p + "self_attention.dense.weight"].T
        x = _rms_norm(hidden, w[p + "post_attention_layernorm.weight"], eps)
        gate, up = (x @ w[p + "mlp.dense_h_to_4h.weight"].T).chunk(2, dim=-1)
        hidden = hidden + (torch.nn.functional.silu(gate) * up) @ w[p + "mlp.dense_4h_to_h.weight"].T
    hidden = _rms_norm(hidden, w["transformer.encoder.final_layernorm.weight"], eps)
    return (hidden @ w["transformer.output_layer.weight"].T)[0]


def test_chatglm_layout_computes_what_the_hf_model_computes(chatglm_dir, hf_dir, prompt_ids):
    reference = _chatglm_reference_logits(chatglm_dir, prompt_ids)
    assert torch.allclose(reference, logits_of(hf_dir, prompt_ids), atol=1e-4, rtol=1e-4)


def test_layout_refuses_what_chatglm_cannot_hold(tmp_path, tokenizer_dir):
    glm4 = build_tiny_glm(tmp_path / "glm4", arch="glm4", tokenizer_dir=tokenizer_dir, num_layers=1)
    with pytest.raises(ValueError, match="'glm'"):
        write_chatglm_layout(glm4, tmp_path / "out1")
    quarter = build_tiny_glm(tmp_path / "quarter", tokenizer_dir=tokenizer_dir, num_layers=1,
                             partial_rotary_factor=0.25)
    with pytest.raises(ValueError, match="partial_rotary_factor 0.25"):
        write_chatglm_layout(quarter, tmp_path / "out2")


# --- the import ---------------------------------------------------------------------------


def test_import_gives_back_identical_tensors(hf_dir, imported_dir):
    original, imported = all_tensors(hf_dir), all_tensors(imported_dir)
    assert set(original) == set(imported)
    for name, tensor in original.items():
        assert imported[name].dtype == tensor.dtype, name
        assert torch.equal(imported[name], tensor), name


def test_import_gives_back_the_config(hf_dir, imported_dir):
    original = json.loads((hf_dir / "config.json").read_text())
    imported = json.loads((imported_dir / "config.json").read_text())
    for key in ("architectures", "model_type", "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                "num_attention_heads", "num_key_value_heads", "head_dim", "max_position_embeddings", "rms_norm_eps",
                "rope_parameters", "attention_bias", "tie_word_embeddings", "eos_token_id", "pad_token_id", "dtype"):
        assert imported[key] == original[key], key
    assert imported["rope_parameters"]["rope_theta"] == 5e6
    generation = json.loads((imported_dir / "generation_config.json").read_text())
    assert generation["eos_token_id"] == [1024, 1031, 1033] and generation["pad_token_id"] == 1024


def test_imported_model_gives_identical_logits(hf_dir, imported_dir, prompt_ids):
    assert torch.equal(logits_of(imported_dir, prompt_ids), logits_of(hf_dir, prompt_ids))


def test_imported_tokenizer_encodes_like_the_original(hf_dir, imported_dir):
    original = AutoTokenizer.from_pretrained(hf_dir)
    imported = AutoTokenizer.from_pretrained(imported_dir)
    for text in (*TOKENIZER_CHECK_TEXTS, PROMPT):
        assert imported(text, add_special_tokens=False).input_ids == original(text, add_special_tokens=False).input_ids
        assert imported(text).input_ids == original(text).input_ids
    assert (imported_dir / "tokenizer.json").read_text() == (hf_dir / "tokenizer.json").read_text()
    assert imported.apply_chat_template([{"role": "user", "content": "你好"}], tokenize=False,
                                        add_generation_prompt=True) == "[gMASK]<sop><|user|>\n你好<|assistant|>\n"
    assert imported.padding_side == "left" and imported.pad_token == imported.eos_token == "<|endoftext|>"


def test_tokenizer_json_from_tiktoken(chatglm_dir, hf_dir):
    data = tokenizer_json_from_tiktoken(chatglm_dir)
    assert data == json.loads((hf_dir / "tokenizer.json").read_text())


def test_single_file_layout_to_sharded_bf16_import(tmp_path, hf_dir):
    single = write_chatglm_layout(hf_dir, tmp_path / "single")
    assert (single / "model.safetensors").exists() and not (single / "model.safetensors.index.json").exists()
    out = import_chatglm(single, tmp_path / "out", dtype="bfloat16", max_shard_size=100_000)
    assert (out / "model.safetensors.index.json").exists()
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"
    original, imported = all_tensors(hf_dir), all_tensors(out)
    assert all(imported[n].dtype == torch.bfloat16 and torch.equal(imported[n], t.to(torch.bfloat16))
               for n, t in original.items())
    assert AutoModelForCausalLM.from_pretrained(out).dtype == torch.bfloat16


def test_without_tokenizer_config_the_remote_special_tokens_follow_the_ranks(chatglm_dir, hf_dir, tmp_path):
    src = tmp_path / "src"
    shutil.copytree(chatglm_dir, src)
    (src / "tokenizer_config.json").unlink()
    data = tokenizer_json_from_tiktoken(src)
    added = {t["id"]: t["content"] for t in data["added_tokens"]}
    assert [added[1024 + i] for i in range(10)] == list(GLM4_SPECIAL_TOKENS)
    assert added[1037] == "<|end_of_video|>"  # GLM-4's image/video markers come next
    out = import_chatglm(src, tmp_path / "out")
    original, imported = AutoTokenizer.from_pretrained(hf_dir), AutoTokenizer.from_pretrained(out)
    assert imported(PROMPT).input_ids == original(PROMPT).input_ids


def test_is_chatglm_layout_is_false_elsewhere(hf_dir, tmp_path):
    assert not is_chatglm_layout(hf_dir)
    assert not is_chatglm_layout(tmp_path)


# --- errors -------------------------------------------------------------------------------


def copy_without_weights(src, dst):
    dst.mkdir()
    for path in src.iterdir():
        if not path.name.endswith((".safetensors", ".json")) or path.name in ("config.json", "tokenizer_config.json",
                                                                               "generation_config.json"):
            shutil.copy(path, dst / path.name)
    return dst


def one_line_error(src, out) -> str:
    with pytest.raises(MentalGLMError) as caught:
        import_chatglm(src, out)
    message = str(caught.value)
    assert "\n" not in message
    return message


def test_pickle_checkpoint_is_refused(chatglm_dir, tmp_path):
    src = copy_without_weights(chatglm_dir, tmp_path / "src")
    (src / "pytorch_model.bin").write_bytes(b"not unpickled")
    message = one_line_error(src, tmp_path / "out")
    assert "pytorch_model.bin" in message and "pickle" in message and "safetensors" in message
    assert not (tmp_path / "out").exists()


def test_missing_tokenizer_model_is_named(chatglm_dir, tmp_path):
    src = tmp_path / "src"
    shutil.copytree(chatglm_dir, src)
    (src / "tokenizer.model").unlink()
    assert "tokenizer.model" in one_line_error(src, tmp_path / "out")


def test_malformed_tokenizer_model_names_the_line(chatglm_dir, tmp_path):
    src = tmp_path / "src"
    shutil.copytree(chatglm_dir, src)
    lines = (src / "tokenizer.model").read_text().splitlines()
    lines[6] = "not-base64!! 6"
    (src / "tokenizer.model").write_text("\n".join(lines) + "\n")
    assert "tokenizer.model:7:" in one_line_error(src, tmp_path / "out")


def test_missing_config_is_named(chatglm_dir, tmp_path):
    src = tmp_path / "src"
    shutil.copytree(chatglm_dir, src)
    (src / "config.json").unlink()
    assert "config.json" in one_line_error(src, tmp_path / "out")


def test_missing_config_key_is_named(chatglm_dir, tmp_path):
    src = tmp_path / "src"
    shutil.copytree(chatglm_dir, src)
    config = json.loads((src / "config.json").read_text())
    del config["ffn_hidden_size"]
    (src / "config.json").write_text(json.dumps(config))
    message = one_line_error(src, tmp_path / "out")
    assert "config.json" in message and "ffn_hidden_size" in message


def test_missing_tensor_is_named(chatglm_dir, tmp_path):
    src = copy_without_weights(chatglm_dir, tmp_path / "src")
    tensors = all_tensors(chatglm_dir)
    del tensors["transformer.encoder.layers.1.mlp.dense_4h_to_h.weight"]
    save_file(tensors, str(src / "model.safetensors"))
    message = one_line_error(src, tmp_path / "out")
    assert "model.safetensors" in message and "transformer.encoder.layers.1.mlp.dense_4h_to_h.weight" in message


def test_wrong_shape_is_named(chatglm_dir, tmp_path):
    src = tmp_path / "src"
    shutil.copytree(chatglm_dir, src)
    config = json.loads((src / "config.json").read_text())
    config["multi_query_group_num"] = 4
    (src / "config.json").write_text(json.dumps(config))
    assert "query_key_value" in one_line_error(src, tmp_path / "out")
