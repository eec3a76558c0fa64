"""The llamacpp backend on tiny GGUF models: grammar-valid answers, label scoring, prefix reuse, offload budget."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest

from mentalglm import Analyzer, OptionsError
from mentalglm.data.readers import read_posts

pytest.importorskip("llama_cpp", reason="the llamacpp backend tests need the llamacpp extra")

TASKS = ("depression", "suicide-risk", "cognitive-distortion", "cognitive-pathway")


@pytest.fixture(scope="module")
def backend(exported):
    from mentalglm.backends.llamacpp_backend import LlamaCppBackend

    with LlamaCppBackend(str(exported("glm", "f32")), {"n_ctx": 1024, "cache_type": "f32", "max_new_tokens": 48}) as b:
        yield b


def _posts(task, n=12):
    return read_posts(f"sample:{task}", None)[:n]


@pytest.mark.parametrize("task", TASKS)
def test_grammar_makes_every_answer_valid(backend, task):
    analyzer = Analyzer(task=task, backend=backend)
    fmt = analyzer.task.response_format()
    for prediction in analyzer.analyze_many(_posts(task)):
        assert fmt.allows(prediction.output.encode()), prediction.output
        assert prediction.valid, (prediction.problem, prediction.output)


@pytest.mark.parametrize("parallel", [1, 4])
def test_greedy_shortlists_give_the_answers_of_a_whole_vocabulary_grammar_pass(exported, monkeypatch, parallel):
    """Sample-then-check with shortlists (and, inside an unfinished UTF-8 character, only the tokens that can
    continue it) is exact for greedy decoding: the same answers as offering every token to the grammar at
    each rejected step — and the random tiny model is rejected often."""
    from mentalglm.backends import llamacpp_native
    from mentalglm.backends.llamacpp_backend import LlamaCppBackend

    seen = {"rejections": 0, "full_passes": 0}
    close = llamacpp_native.SequenceSampler.close

    def counting_close(sampler):
        seen["rejections"] += sampler.rejections
        seen["full_passes"] += sampler.full_passes
        close(sampler)

    monkeypatch.setattr(llamacpp_native.SequenceSampler, "close", counting_close)
    posts = _posts("cognitive-distortion", 6)
    answers, counts = {}, {}
    for shortlists in ((16, 256), ()):  # about a thousand tokens: 16, then 256, then all of them
        seen.update(rejections=0, full_passes=0)
        monkeypatch.setattr(llamacpp_native, "GREEDY_SHORTLISTS", shortlists)
        with LlamaCppBackend(str(exported("glm", "f32")), {"n_ctx": 1024, "cache_type": "f32", "max_new_tokens": 40,
                                                            "parallel": parallel}) as b:
            if not shortlists:
                b._continuations = None  # the reference: every refused step through the whole vocabulary
            analyzer = Analyzer(task="cognitive-distortion", backend=b)
            answers[shortlists] = [p.output for p in analyzer.analyze_many(posts)]
        counts[shortlists] = dict(seen)
    assert answers[(16, 256)] == answers[()]
    # with shortlists: many rejected tokens, most settled without a whole-vocabulary pass
    assert counts[(16, 256)]["rejections"] > 2 * counts[(16, 256)]["full_passes"]
    assert counts[()]["full_passes"] == counts[()]["rejections"] == counts[(16, 256)]["rejections"] > 0


def test_without_grammar_the_tiny_model_babbles(exported):
    from mentalglm.backends.llamacpp_backend import LlamaCppBackend

    with LlamaCppBackend(str(exported("glm", "f32")),
                         {"n_ctx": 1024, "constrained": False, "max_new_tokens": 24}) as free:
        outputs = [p for p in Analyzer(task="depression", backend=free).analyze_many(_posts("depression", 6))]
    assert not all(p.valid for p in outputs)


def test_score_labels_equals_transformers(backend, tiny_models):
    from transformers import AutoTokenizer

    from models import hf_logits

    tokenizer = AutoTokenizer.from_pretrained(tiny_models["glm"])
    prompt = "[gMASK]<sop><|user|>\n识别认知歪曲。\n大家肯定都觉得我很烦<|assistant|>\n标签："
    labels = ["读心术", "深度悲观主义倾向", "emoji😭", "完全没有任何问题"]  # some are several tokens
    got = backend.score_labels(prompt, labels)
    prompt_ids = tokenizer.encode(prompt, add_special_tokens=False)
    for label, score in zip(labels, got):
        ids = tokenizer.encode(label, add_special_tokens=False)
        logits = hf_logits(tiny_models["glm"], prompt_ids + ids).astype(np.float64)
        top = logits.max(-1, keepdims=True)
        log_probs = logits - top - np.log(np.exp(logits - top).sum(-1, keepdims=True))
        expected = sum(log_probs[len(prompt_ids) - 1 + i, t] for i, t in enumerate(ids))
        assert score == pytest.approx(expected, abs=1e-3), label
    assert any(len(tokenizer.encode(l, add_special_tokens=False)) > 1 for l in labels)  # multi-token path covered


def test_score_mode_picks_the_most_likely_label_and_explains_it(backend):
    analyzer = Analyzer(task="suicide-risk", backend=backend, mode="score")
    for prediction in analyzer.analyze_many(_posts("suicide-risk", 4)):
        assert prediction.valid and prediction.labels == [max(prediction.scores, key=prediction.scores.get)]
        assert prediction.output.startswith(f"标签：{prediction.labels[0]}\n解释：")
    with pytest.raises(Exception, match="single-label"):
        Analyzer(task="cognitive-distortion", backend=backend, mode="score")


def test_prefix_reuse_changes_nothing_but_speed(exported):
    from mentalglm.backends.llamacpp_backend import LlamaCppBackend

    outputs = {}
    for reuse in (True, False):
        with LlamaCppBackend(str(exported("glm", "f32")), {"n_ctx": 1024, "cache_type": "f32", "prefix_cache": reuse,
                                                            "max_new_tokens": 24}) as b:
            outputs[reuse] = [p.output for p in
                              Analyzer(task="depression", backend=b).analyze_many(_posts("depression", 5))]
    assert outputs[True] == outputs[False]


def test_too_long_posts_are_truncated_and_flagged(exported, caplog):
    from mentalglm.backends.llamacpp_backend import LlamaCppBackend

    secret = "这是一条很长的帖子，不应出现在日志里。" * 40
    with LlamaCppBackend(str(exported("glm", "f32")), {"n_ctx": 256, "max_new_tokens": 32}) as b:
        analyzer = Analyzer(task="depression", backend=b)
        with caplog.at_level(logging.WARNING):
            prediction = analyzer.analyze(secret, id="long")
        assert prediction.truncated and prediction.valid
        short = analyzer.analyze("好累", id="short")
    assert not short.truncated
    assert "truncated" in caplog.text and "帖子" not in caplog.text


def test_gpu_memory_budget_picks_layers_from_the_file(exported):
    import gguf

    from mentalglm.backends.gpu_budget import layer_costs, parse_bytes

    path = exported("glm", "f16")
    reader = gguf.GGUFReader(str(path))
    block0 = sum(int(t.n_bytes) for t in reader.tensors if t.name.startswith("blk.0."))
    output = sum(int(t.n_bytes) for t in reader.tensors if t.name.startswith("output"))
    costs = layer_costs(path, n_ctx=1000)
    kv = 2 * 1000 * 2 * 32 * 2  # k and v × n_ctx × kv heads × head dim × f16
    assert costs.n_layers == 2 and costs.layer_bytes[0] == block0 + kv and costs.output_bytes == output
    reserve = 1000
    assert costs.layers_that_fit(reserve + costs.layer_bytes[0] - 1, reserve) == 0
    assert costs.layers_that_fit(reserve + costs.layer_bytes[0], reserve) == 1
    assert costs.layers_that_fit(reserve + sum(costs.layer_bytes), reserve) == 2
    assert costs.layers_that_fit(reserve + sum(costs.layer_bytes) + output, reserve) == 3  # all + output
    assert parse_bytes("6GiB") == 6 * 2**30 and parse_bytes("8 GB") == 8 * 10**9 and parse_bytes("512MiB") == 2**29
    with pytest.raises(OptionsError, match="not a memory size"):
        parse_bytes("six gigs")


def test_offload_options_and_reporting(exported):
    from mentalglm.backends.llamacpp_backend import LlamaCppBackend
    from mentalglm.backends.llamacpp_native import load_llama_cpp

    path = str(exported("glm", "q8_0"))
    with pytest.raises(OptionsError, match="not both"):
        LlamaCppBackend(path, {"n_gpu_layers": 2, "gpu_memory": "1GiB"})
    with pytest.raises(OptionsError, match="Did you mean 'n_gpu_layers'"):
        LlamaCppBackend.parse_options({"n_gpu_layer": 3})
    with LlamaCppBackend(path, {"gpu_memory": "8GiB", "n_ctx": 256}) as b:
        assert b.total_layers == 2
        expected = 3 if load_llama_cpp().llama_supports_gpu_offload() else 0
        assert b.offloaded_layers == expected
    assert b.llm is None  # closed


def test_cli_analyze_with_llamacpp_keeps_c_logs_off_stderr(exported, tmp_path):
    from conftest import run_cli

    result = run_cli("analyze", "--task", "depression", "--backend", "llamacpp",
                     "--model", str(exported("glm", "q8_0")),
                     "--option", "n_ctx=512", "--option", "max_new_tokens=16", "--json", "最近总是失眠")
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert json.loads(result.stdout)["valid"] is True


def test_extra_weight_buffers_are_off_where_the_cpu_advertises_amx():
    from mentalglm.backends.llamacpp_native import cpu_advertises_amx

    assert cpu_advertises_amx("processor\t: 0\nflags\t\t: fpu avx512f amx_bf16 amx_tile amx_int8\n")
    assert not cpu_advertises_amx("processor\t: 0\nflags\t\t: fpu avx2 avx512f\n")


def test_q8_0_generates_with_the_default_buffers_and_reports_them(exported):
    # On an AMX-advertising VM, llama.cpp's AMX buffers crash q8_0 matmuls with SIGILL; the
    # default keeps them off there, so a q8_0 model must generate in-process.
    from mentalglm.backends.llamacpp_backend import LlamaCppBackend
    from mentalglm.backends.llamacpp_native import default_extra_buffers
    from mentalglm.core.backend import GenerationRequest

    with LlamaCppBackend(str(exported("glm", "q8_0")), {"n_ctx": 256, "max_new_tokens": 4}) as backend:
        completion = backend.generate([GenerationRequest(id="1", prompt="[gMASK]<sop><|user|>\n你好<|assistant|>\n")])
    assert completion[0].usage["completion_tokens"] >= 1
    assert backend.options.extra_buffers is None and isinstance(default_extra_buffers(), bool)
