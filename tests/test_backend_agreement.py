"""Backends agree: torch and llama.cpp give the same greedy answers on a tiny f32 model; the openai
backend against llama.cpp's server gives the same as llama.cpp in-process."""

from __future__ import annotations

import pytest

from mentalglm import Analyzer
from mentalglm.data.readers import read_posts
from mentalglm.modelfiles.tokens import GLM4_SPECIAL_TOKENS

OPTIONS = {"max_new_tokens": 32}


def _posts(task, n):
    return read_posts(f"sample:{task}")[:n]


@pytest.fixture(scope="module")
def torch_backend(tiny_models):
    from mentalglm.backends.torch_backend import TorchBackend

    with TorchBackend(str(tiny_models["glm"]), {**OPTIONS, "dtype": "float32", "device": "cpu"}) as backend:
        yield backend


@pytest.fixture(scope="module")
def llama_backend(exported):
    from mentalglm.backends.llamacpp_backend import LlamaCppBackend

    with LlamaCppBackend(str(exported("glm", "f32")), {**OPTIONS, "n_ctx": 1024, "cache_type": "f32"}) as backend:
        yield backend


@pytest.mark.parametrize("task", ["depression", "cognitive-distortion", "cognitive-pathway"])
def test_torch_and_llamacpp_constrained_greedy_outputs_are_identical(task, torch_backend, llama_backend):
    posts = _posts(task, 6)
    from_torch = [p.output for p in Analyzer(task=task, backend=torch_backend).analyze_many(posts)]
    from_llama = [p.output for p in Analyzer(task=task, backend=llama_backend).analyze_many(posts)]
    assert from_torch == from_llama


def test_torch_and_llamacpp_unconstrained_greedy_outputs_are_identical(tiny_models, exported):
    from mentalglm.backends.llamacpp_backend import LlamaCppBackend
    from mentalglm.backends.torch_backend import TorchBackend

    posts = _posts("suicide-risk", 6)
    with TorchBackend(str(tiny_models["glm"]), {**OPTIONS, "dtype": "float32", "constrained": False}) as torch_b, \
            LlamaCppBackend(str(exported("glm", "f32")), {**OPTIONS, "n_ctx": 1024, "cache_type": "f32",
                                                           "constrained": False}) as llama_b:
        from_torch = [p.output for p in Analyzer(task="suicide-risk", backend=torch_b).analyze_many(posts)]
        from_llama = [p.output for p in Analyzer(task="suicide-risk", backend=llama_b).analyze_many(posts)]
    assert from_torch == from_llama


def test_score_mode_agrees(torch_backend, llama_backend):
    posts = _posts("depression", 4)
    for mine, theirs in zip(Analyzer(task="depression", backend=torch_backend, mode="score",
                                     explain=False).analyze_many(posts),
                            Analyzer(task="depression", backend=llama_backend, mode="score",
                                     explain=False).analyze_many(posts)):
        assert mine.labels == theirs.labels
        assert mine.scores == pytest.approx(theirs.scores, abs=1e-3)


def test_openai_backend_on_llama_server_equals_llamacpp_in_process(llama_server, exported):
    from mentalglm.backends.llamacpp_backend import LlamaCppBackend
    from mentalglm.backends.openai_backend import OpenAIBackend

    base_url, gguf_path = llama_server
    posts = _posts("cognitive-distortion", 4)
    with OpenAIBackend("tiny", {**OPTIONS, "base_url": base_url, "grammar_field": "grammar"}) as remote, \
            LlamaCppBackend(str(gguf_path), {**OPTIONS, "n_ctx": 512}) as local:
        # redaction off on both sides, so both see the same text
        over_http = list(Analyzer(task="cognitive-distortion", backend=remote, redact=False).analyze_many(posts))
        in_process = list(Analyzer(task="cognitive-distortion", backend=local).analyze_many(posts))
    for remote_p, local_p in zip(over_http, in_process):
        assert remote_p.labels == local_p.labels and remote_p.valid
        # Same tokens, two decoders: the server's create_completion drops bytes that are not
        # valid UTF-8 (ours shows U+FFFD, as transformers does) and control tokens such as
        # <sop> (ours keeps their text, as transformers does), and at the token limit it runs on
        # to finish a character. So ours without U+FFFD and control tokens is a prefix of the server's text.
        ours = local_p.output.replace("\ufffd", "")
        for control in GLM4_SPECIAL_TOKENS:
            ours = ours.replace(control, "")
        assert remote_p.output.startswith(ours) and len(remote_p.output) - len(ours) <= 2
