"""Parallel sequences in the llamacpp backend give the answers of the one-post-at-a-time path.

The key checks run on the tiny f32 model with an f32 KV cache, where the two paths compute the
same numbers but for the order of float sums (batched matmuls): greedy answers identical on
every task, and the logits of every generated position equal within 1e-4 (seen: ~1e-6).
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from mentalglm import Analyzer, MentalGLMError, OptionsError
from mentalglm.core.backend import GenerationRequest
from mentalglm.data.readers import read_posts

pytest.importorskip("llama_cpp", reason="the llamacpp backend tests need the llamacpp extra")

TASKS = ("depression", "suicide-risk", "cognitive-distortion", "cognitive-pathway")
F32 = {"n_ctx": 1024, "cache_type": "f32", "max_new_tokens": 40}


def _posts(task, n=12):
    return read_posts(f"sample:{task}", None)[:n]


@pytest.fixture(scope="module")
def backends(exported):
    """The f32 model at parallel 1 (today's path), 8, and 3 (fewer slots than posts: refill)."""
    from mentalglm.backends.llamacpp_backend import LlamaCppBackend

    opened = {n: LlamaCppBackend(str(exported("glm", "f32")), {**F32, "parallel": n}) for n in (1, 3, 8)}
    yield opened
    for backend in opened.values():
        backend.close()


@pytest.mark.parametrize("task", TASKS)
def test_greedy_answers_are_identical_at_every_parallelism(backends, task):
    results = {}
    for n, backend in backends.items():
        analyzer = Analyzer(task=task, backend=backend, batch_size=12)
        results[n] = [(p.id, p.output, p.labels, p.valid) for p in analyzer.analyze_many(_posts(task))]
    assert results[8] == results[1] and results[3] == results[1]
    assert [r[0] for r in results[1]] == [p.id for p in _posts(task)]  # input order, ids as given
    assert all(valid for *_, valid in results[8])  # the grammar holds in every sequence


class _Forced:
    """A sampler that feeds given tokens (teacher forcing) and keeps the logits row it was shown."""

    def __init__(self, tokens, rows):
        self.tokens, self.rows, self.i = tokens, rows, 0

    def sample(self, context, index):
        self.rows.append(context.logits(index))
        self.i += 1
        return self.tokens[self.i - 1]

    def close(self):
        pass


def test_logits_of_every_generated_position_equal_the_sequential_path(backends, exported):
    from mentalglm.backends.llamacpp_batch import Continuation, Job
    from models import load_llama

    backend = backends[3]
    analyzer = Analyzer(task="cognitive-distortion", backend=backend)
    prompts = [backend._tokenize(analyzer.render(p)) for p in _posts("cognitive-distortion", 7)]
    rng = np.random.default_rng(0)
    # Different lengths end sequences at different steps, so slots are refilled mid-flight.
    forced = [[int(t) for t in rng.integers(10, 500, size=int(rng.integers(3, 20)))] for _ in prompts]
    rows = [[] for _ in prompts]
    jobs = [Job(p, Continuation(len(f), (), lambda t: False, backend._detokenize),
                lambda f=f, r=r: _Forced(f, r)) for p, f, r in zip(prompts, forced, rows)]
    outcomes = backend._decoder.generate(jobs)
    assert [o.generated for o in outcomes] == forced

    reference = load_llama(exported("glm", "f32"), n_ctx=1024)
    try:
        for tokens, continuation, got in zip(prompts, forced, rows):
            reference.reset()
            reference.eval(tokens + continuation[:-1])
            expected = np.array(reference.scores[len(tokens) - 1: len(tokens) + len(continuation) - 1])
            assert np.abs(np.array(got) - expected).max() < 1e-4
    finally:
        reference.close()


def test_the_shared_prefix_is_evaluated_once(exported, monkeypatch):
    from mentalglm.backends.llamacpp_backend import LlamaCppBackend
    from mentalglm.backends.llamacpp_batch import common_prefix

    with LlamaCppBackend(str(exported("glm", "f32")), {**F32, "parallel": 4, "max_new_tokens": 4}) as backend:
        context = backend._decoder.context
        evaluated = []
        real_decode = context.decode

        def counting_decode(tokens, *rest):
            evaluated.append(len(tokens))
            real_decode(tokens, *rest)

        monkeypatch.setattr(context, "decode", counting_decode)
        analyzer = Analyzer(task="depression", backend=backend, batch_size=8)
        posts = _posts("depression", 8)  # twice as many posts as slots
        generated = sum(p.usage["completion_tokens"] for p in analyzer.analyze_many(posts))
        prompts = [backend._tokenize(analyzer.render(p)) for p in posts]
    shared = min(common_prefix(prompts[0], p) for p in prompts[1:])
    assert shared > 20  # the instruction
    # Every prompt's own tokens and every generated token but the last, the shared part once.
    assert sum(evaluated) <= sum(len(p) for p in prompts) - (len(prompts) - 1) * shared + generated


def test_sampling_with_a_seed_gives_the_same_answers_in_parallel(exported):
    from mentalglm.backends.llamacpp_backend import LlamaCppBackend

    outputs = {}
    for n in (1, 8):
        options = {**F32, "parallel": n, "temperature": 0.9, "top_p": 0.95, "seed": 7, "max_new_tokens": 24}
        with LlamaCppBackend(str(exported("glm", "f32")), options) as backend:
            analyzer = Analyzer(task="depression", backend=backend)
            outputs[n] = [p.output for p in analyzer.analyze_many(_posts("depression"))]
    assert outputs[8] == outputs[1]
    assert len(set(outputs[1])) > 1  # it did sample


def test_score_mode_in_batches_equals_one_post_at_a_time(backends):
    labels = ["高自杀风险", "低自杀风险", "完全没有任何问题", "emoji😭"]  # the last two are several tokens
    analyzer = Analyzer(task="suicide-risk", backend=backends[1])
    prompts = [analyzer.render(p) + analyzer.response_format.label_head for p in _posts("suicide-risk", 10)]
    sequential = np.array([backends[1].score_labels(p, labels) for p in prompts])
    batched = np.array(backends[3].score_labels_batch(prompts, labels))  # 10 posts through 3 slots
    one = np.array([backends[8].score_labels(p, labels) for p in prompts])
    assert np.abs(batched - sequential).max() < 1e-4 and np.abs(one - sequential).max() < 1e-4
    assert any(len(backends[3]._tokenize(label, special=False)) > 1 for label in labels)
    # Through the Analyzer: a batch is scored in one call, then explained in one call.
    scored = {n: list(Analyzer(task="suicide-risk", backend=backends[n], mode="score")
                      .analyze_many(_posts("suicide-risk", 6))) for n in (1, 8)}
    assert all(abs(a.scores[k] - b.scores[k]) < 1e-4 for a, b in zip(scored[1], scored[8]) for k in a.scores)
    assert [p.output for p in scored[1]] == [p.output for p in scored[8]]


def test_generate_mode_confidence_equals_score_mode_scores(backends):
    # The label scores after generating are score mode's, whichever the parallelism.
    posts = _posts("suicide-risk", 5)
    scored = list(Analyzer(task="suicide-risk", backend=backends[1], mode="score", explain=False).analyze_many(posts))
    for n in (1, 8):
        generated = list(Analyzer(task="suicide-risk", backend=backends[n], confidence=True).analyze_many(posts))
        for g, s in zip(generated, scored):
            assert all(abs(g.scores[k] - s.scores[k]) < 1e-4 for k in s.scores)
            assert g.confidence is None or 0 < g.confidence < 1


def test_finish_reasons_stop_strings_and_budgets_match(backends):
    analyzer = Analyzer(task="depression", backend=backends[1])
    prompt, answer = analyzer.render(_posts("depression", 1)[0]), analyzer.response_format
    requests = [GenerationRequest(id="a", prompt=prompt, max_new_tokens=0),
                GenerationRequest(id="b", prompt=prompt, max_new_tokens=3),
                GenerationRequest(id="c", prompt=prompt, stop=("：",), response_format=answer),  # 标签：…
                GenerationRequest(id="d", prompt=prompt + "标签")]
    got = {n: [(c.id, c.text, c.finish_reason, c.usage) for c in backends[n].generate(requests)] for n in (1, 8)}
    assert got[8] == got[1]
    assert [r[2] for r in got[8]][:3] == ["length", "length", "stop"] and got[8][2][1] == "标签"


def test_options_defaults_and_errors(exported):
    from mentalglm.backends.llamacpp_backend import CPU_PARALLEL, LlamaCppBackend

    path = str(exported("glm", "q8_0"))
    with pytest.raises(OptionsError, match="parallel"):
        LlamaCppBackend.parse_options({"parallel": 0})
    with pytest.raises(OptionsError, match="at most"):
        LlamaCppBackend(path, {"parallel": 100000})
    with LlamaCppBackend(path, {"n_ctx": 300}) as default, LlamaCppBackend(path, {"n_ctx": 300, "parallel": 1}) as one:
        assert default.parallel == CPU_PARALLEL and one.parallel == 1 and one._decoder is None
        assert default.context_length == one.context_length >= 300  # each sequence has the whole window
        with pytest.raises(MentalGLMError, match="does not fit"):
            default.generate([GenerationRequest(id="x", prompt="好" * 2000)])
    assert default.llm is None and default._decoder is None  # closed


def test_gpu_budget_counts_the_kv_cache_of_every_sequence(exported):
    from mentalglm.backends.gpu_budget import layer_costs
    from mentalglm.backends.llamacpp_backend import BUDGET_PARALLEL, LlamaCppOptions, placement

    path = exported("glm", "f16")
    one, eight = layer_costs(path, 1000), layer_costs(path, 1000, n_seq=8)
    kv = 2 * 1000 * 2 * 32 * 2  # k and v × n_ctx × kv heads × head dim × f16
    assert [b - a for a, b in zip(one.layer_bytes, eight.layer_bytes)] == [7 * kv, 7 * kv]
    # With offload and a budget: the most sequences that keep every layer (and the output) on the GPU.

    def everything(n):
        return sum(layer_costs(path, 1000, n_seq=n).layer_bytes) + one.output_bytes + 512 * 2**20

    budget = everything(16)
    options = LlamaCppOptions(gpu_memory=str(budget), n_ctx=1000)
    assert placement(options, path, can_offload=True) == (16, 3)
    assert placement(LlamaCppOptions(gpu_memory=str(everything(BUDGET_PARALLEL[0])), n_ctx=1000), path, True)[0] == 64
    small = LlamaCppOptions(gpu_memory=str(512 * 2**20 + eight.layer_bytes[0]), n_ctx=1000)
    assert placement(small, path, True) == (BUDGET_PARALLEL[-1], 1)  # the smallest, with what fits
    assert placement(LlamaCppOptions(gpu_memory=str(budget), n_ctx=1000, parallel=2), path, True) == (2, 3)
    assert placement(LlamaCppOptions(), path, can_offload=False)[0] == 8
    assert placement(LlamaCppOptions(n_gpu_layers=-1), path, can_offload=True) == (16, -1)


def test_sizes_reports_the_kv_cache_of_parallel_sequences():
    from conftest import run_cli

    result = run_cli("sizes", "--model", "examples/glm-4-9b-chat", "--ctx", "4096", "--parallel", "4", "--json")
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    one = document["kv_cache_bytes"]["4096"]
    assert one == 160 * 2**20  # GLM-4-9B: 2 KV heads × 128 × 40 layers × 4096 tokens × k and v × f16
    assert document["parallel"] == 4 and document["parallel_kv_cache_bytes"]["4096"] == 4 * one
    text = run_cli("sizes", "--model", "examples/glm-4-9b-chat", "--ctx", "4096", "--parallel", "4")
    assert "-O parallel=4" in text.stdout and "640.0 MiB at 4096" in text.stdout


def test_common_prefix_matches_a_token_by_token_scan():
    import random

    from mentalglm.backends.llamacpp_batch import common_prefix

    def scan(a, b):
        n = 0
        while n < min(len(a), len(b)) and a[n] == b[n]:
            n += 1
        return n

    rng = random.Random(0)
    for _ in range(2000):
        a = [rng.randint(0, 2) for _ in range(rng.randint(0, 12))]
        b = a[:rng.randint(0, len(a))] + [rng.randint(0, 2) for _ in range(rng.randint(0, 5))]
        assert common_prefix(a, b) == common_prefix(b, a) == scan(a, b)
