"""GGUF export proven against llama.cpp itself: tokens, logits, greedy output, quantized agreement."""

from __future__ import annotations

import json

import numpy as np
import pytest

from models import VARIED_TEXTS, hf_greedy, hf_logits, llama_greedy, llama_logits, load_llama

MODELS = ("glm", "glm4", "chatglm")
PROMPT = ("[gMASK]<sop><|user|>\n判断下面这条社交媒体帖子的发帖者是否表现出抑郁。\n"
          "最近总是失眠，什么都不想做😭<|assistant|>\n")


@pytest.fixture(scope="module")
def hf_tokenizer(tiny_models):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_models["glm"])


@pytest.mark.parametrize("model", MODELS)
def test_llama_cpp_token_ids_equal_hf(model, tiny_models, exported, hf_tokenizer):
    llm = load_llama(exported(model, "f32"), logits_all=False)
    for text in VARIED_TEXTS:
        expected = hf_tokenizer.encode(text, add_special_tokens=False)
        assert llm.tokenize(text.encode("utf-8"), add_bos=False, special=True) == expected, text
    llm.close()


@pytest.mark.parametrize("model", MODELS)
def test_f32_logits_equal_transformers_at_every_position(model, tiny_models, exported, hf_tokenizer):
    source = tiny_models["glm" if model == "chatglm" else model]  # the ChatGLM copy of glm must match glm
    llm = load_llama(exported(model, "f32"))
    for text in (PROMPT, VARIED_TEXTS[2], VARIED_TEXTS[4]):
        ids = hf_tokenizer.encode(text, add_special_tokens=False)
        expected = hf_logits(source, ids)
        got = llama_logits(llm, ids)
        assert got.shape == expected.shape
        assert np.abs(got - expected).max() <= 1e-3
    llm.close()


@pytest.mark.parametrize("model", MODELS)
def test_greedy_32_tokens_identical(model, tiny_models, exported, hf_tokenizer):
    source = tiny_models["glm" if model == "chatglm" else model]
    ids = hf_tokenizer.encode(PROMPT, add_special_tokens=False)
    llm = load_llama(exported(model, "f32"))
    assert llama_greedy(llm, ids, 32) == hf_greedy(source, ids, 32)
    llm.close()


@pytest.mark.parametrize("model", ("glm", "glm4"))
def test_q8_0_argmax_agreement_at_least_95_percent(model, tiny_models, exported, hf_tokenizer):
    llm = load_llama(exported(model, "q8_0"))
    agree = total = 0
    for text in [PROMPT] + VARIED_TEXTS:
        ids = hf_tokenizer.encode(text, add_special_tokens=False)
        expected = hf_logits(tiny_models[model], ids).argmax(-1)
        got = llama_logits(llm, ids).argmax(-1)
        agree += int((expected == got).sum())
        total += len(ids)
    llm.close()
    assert agree / total >= 0.95, f"{agree}/{total}"


def test_q4_k_m_loads_and_generates(exported, hf_tokenizer):
    from mentalglm.converters.gguf_inspect import inspect_gguf

    path = exported("glm", "q4_k_m")
    info = inspect_gguf(path)
    assert info["provenance"]["mentalglm.outtype"] == "q4_k_m"
    assert "Q4_K" in info["tensor_types"] or "Q5_0" in info["tensor_types"]  # tiny rows fall back, as in the 9B
    assert path.stat().st_size < exported("glm", "q8_0").stat().st_size
    assert not list(path.parent.glob(".*intermediate*"))  # the intermediate file is gone
    llm = load_llama(path, logits_all=False, type_k=1, type_v=1)
    completion = llm.create_completion(llm.tokenize(PROMPT.encode(), add_bos=False, special=True), max_tokens=8,
                                       temperature=0.0)
    assert completion["usage"]["completion_tokens"] >= 1
    llm.close()


def test_metadata_is_right_where_llama_cpps_converter_is_wrong(exported, tiny_models):
    from mentalglm.converters.gguf_inspect import inspect_gguf

    config = json.loads((tiny_models["glm"] / "config.json").read_text())
    for model in ("glm", "chatglm"):
        info = inspect_gguf(exported(model, "f16"))
        shape = info["shape"]
        assert info["architecture"] == "chatglm"
        assert shape["context_length"] == config["max_position_embeddings"] != config["hidden_size"]
        assert shape["rope.freq_base"] == pytest.approx(5e6)
        assert shape["attention.layer_norm_rms_epsilon"] == pytest.approx(1e-6)
        head_dim = config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]
        assert shape["rope.dimension_count"] == head_dim // 2
        assert shape["attention.head_count"] == config["num_attention_heads"]
        assert shape["attention.head_count_kv"] == config["num_key_value_heads"]
        assert shape["block_count"] == config["num_hidden_layers"]
        tok = info["tokenizer"]
        assert (tok["model"], tok["pre"], tok["tokens"]) == ("gpt2", "chatglm-bpe", config["vocab_size"])
        assert tok["eos"]["text"] == "<|endoftext|>" and tok["eot"]["text"] == "<|user|>" and tok["add_bos"] is False
        assert {"[gMASK]", "<sop>", "<|user|>", "<|assistant|>", "<|observation|>"} <= set(tok["control_tokens"])
        assert "[gMASK]<sop>" in info["chat_template"]
        assert info["provenance"]["mentalglm.outtype"] == "f16"
    assert inspect_gguf(exported("glm4", "f16"))["architecture"] == "glm4"


def test_direct_out_types_have_expected_tensor_types(exported):
    from mentalglm.converters.gguf_inspect import inspect_gguf

    for outtype, kind in (("f32", "F32"), ("f16", "F16"), ("bf16", "BF16"), ("q8_0", "Q8_0")):
        types = inspect_gguf(exported("glm", outtype))["tensor_types"]
        assert kind in types and set(types) <= {kind, "F32", "F16"}, (outtype, types)


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("outtype", ("f16", "q8_0", "q4_k_m"))
def test_size_estimate_equals_the_exported_tensors(model, outtype, tiny_models, exported):
    from mentalglm.converters.gguf_inspect import inspect_gguf
    from mentalglm.converters.glm_spec import read_spec
    from mentalglm.converters.sizing import estimate, parameter_count

    spec = read_spec(tiny_models[model])
    info = inspect_gguf(exported(model, outtype))
    size = estimate(spec, outtype)
    assert size.bytes_by_type == info["tensor_bytes_by_type"]
    assert parameter_count(spec) == info["parameters"]
