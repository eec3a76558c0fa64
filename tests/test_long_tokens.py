"""Tokens longer than 32 bytes: llama-cpp-python's own detokenize drops them silently; the backend's
text must hold every byte the model generated, exactly as transformers decodes it."""

from __future__ import annotations

import pytest

pytest.importorskip("llama_cpp", reason="needs the llamacpp extra")


@pytest.fixture(scope="module")
def big_vocab_model(tmp_path_factory):
    pytest.importorskip("torch", reason="the tiny model is built with torch")
    from mentalglm.converters.gguf_export import export_gguf
    from mentalglm.demo.tiny import build_tiny_glm

    folder = build_tiny_glm(tmp_path_factory.mktemp("long-tokens") / "glm", hidden_size=64, num_layers=1,
                            intermediate_size=128, tokenizer_vocab_size=8192)
    return folder, export_gguf(folder, folder.parent / "glm-f32.gguf", outtype="f32").path


def test_every_byte_of_a_long_token_reaches_the_text(big_vocab_model):
    from transformers import AutoTokenizer

    from mentalglm.backends.llamacpp_backend import LlamaCppBackend

    folder, gguf = big_vocab_model
    tokenizer = AutoTokenizer.from_pretrained(folder)
    long_ids = [i for i in range(len(tokenizer)) if len(tokenizer.decode([i]).encode()) > 32]
    assert long_ids, "the 8k vocabulary trained on the samples has tokens of 11+ Chinese characters"
    with LlamaCppBackend(str(gguf), {"n_ctx": 256, "parallel": 1}) as backend:
        sequence = long_ids[:5] + [tokenizer.convert_tokens_to_ids("<|user|>")] + long_ids[5:10]
        assert backend._detokenize(sequence) == tokenizer.decode(sequence)


def test_llama_cpp_python_server_loses_long_pieces_and_the_openai_backend_says_so(big_vocab_model, tmp_path, caplog):
    """llama-cpp-python's server, on a vocabulary with tokens over 32 bytes: its detokenize returns less than the
    text it tokenized (what its answers lose too), so the openai backend names it and what to use instead."""
    import json
    import urllib.request

    from transformers import AutoTokenizer

    from conftest import llama_server_process
    from mentalglm.backends.openai_backend import OpenAIBackend

    folder, gguf = big_vocab_model
    tokenizer = AutoTokenizer.from_pretrained(folder)
    text = tokenizer.decode([i for i in range(len(tokenizer)) if len(tokenizer.decode([i]).encode()) > 32][:3])
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def post(url, body):
        request = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
        return json.loads(opener.open(request, timeout=60).read())

    with llama_server_process(gguf, tmp_path) as (base_url, _):
        root = base_url[: -len("/v1")]
        tokens = post(f"{root}/extras/tokenize", {"input": text})["tokens"]
        assert len(tokens) == 3
        assert post(f"{root}/extras/detokenize", {"tokens": tokens})["text"] != text  # the pieces are lost
        OpenAIBackend("m", {"base_url": base_url}).server_info  # noqa: B018 -- identifies the server
    assert "drops token pieces longer than 32 bytes" in caplog.text
    assert "llama-server" in caplog.text and "vLLM" in caplog.text
