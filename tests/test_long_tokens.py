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
