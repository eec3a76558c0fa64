"""llama.cpp benchmarks: framework overhead against a plain llama_cpp loop, and prompt-prefix reuse.

Targets (checked at full scale): the ``llamacpp`` backend through the Analyzer is at most 5 %
slower than a plain llama_cpp loop on the same prompts; prefix reuse is at least 1.5× faster
when the instruction is ≥ 4× as long as the post. Both on the one-post-at-a-time path
(``parallel=1``, the one a plain loop compares with); parallel sequences are measured in
test_llamacpp_parallel.py. Both are measured side by side, alternating
rounds, in one process, and reported as ratios of the median round times.

    pytest benchmarks/test_llamacpp.py --benchmark-only
"""

from __future__ import annotations

import statistics

import pytest

from bench_models import SCALE, alternate, bench_threads, build_bench_model, long_instruction_task

ROUNDS = 5 if SCALE == "full" else 1
N_POSTS = 24 if SCALE == "full" else 4


@pytest.fixture(scope="module")
def gguf_model(tmp_path_factory):
    from mentalglm.converters.gguf_export import export_gguf

    root = tmp_path_factory.mktemp("bench")
    return export_gguf(build_bench_model(root), root / "bench-q8_0.gguf", outtype="q8_0").path


@pytest.fixture(scope="module")
def posts():
    from dataclasses import replace

    from mentalglm.data.readers import read_posts

    # Plain posts: a C-IMHI record's own instruction would replace the task's (long) one.
    return [replace(p, instruction=None) for p in read_posts("sample:depression") if 20 <= len(p.text) <= 120][:N_POSTS]


def _medians(workloads: dict, rounds: int) -> dict:
    """Median round seconds of each workload, run in rotating order (:func:`bench_models.alternate`)."""
    seconds, _ = alternate(workloads, rounds)
    return {label: statistics.median(times) for label, times in seconds.items()}


def test_framework_overhead_vs_plain_llama_cpp(benchmark, gguf_model, posts):
    from mentalglm import Analyzer
    from mentalglm.backends.llamacpp_backend import LlamaCppBackend

    options = {"n_ctx": 2048, "max_new_tokens": 32, "constrained": False, "parallel": 1, "n_threads": bench_threads()}
    with LlamaCppBackend(str(gguf_model), options) as backend:
        analyzer = Analyzer(task="depression", backend=backend, batch_size=8)
        prompts = [analyzer.render(p) for p in posts]
        stop = list(analyzer.prompt.stop)
        llm = backend.llm

        def ours():
            list(analyzer.analyze_many(posts))

        def plain():
            for prompt in prompts:
                llm.create_completion(llm.tokenize(prompt.encode(), add_bos=False, special=True), max_tokens=32,
                                      temperature=0.0, top_k=0, top_p=1.0, min_p=0.0, repeat_penalty=1.0, stop=stop)

        result = {}
        benchmark.pedantic(lambda: result.update(_medians({"ours": ours, "plain": plain}, ROUNDS)),
                           rounds=1, iterations=1)
    ratio = result["ours"] / result["plain"]
    benchmark.extra_info.update({"posts": len(posts), "ours_s": result["ours"], "plain_s": result["plain"],
                                 "overhead_ratio": ratio, "threads": options["n_threads"]})
    if SCALE == "full":
        assert ratio <= 1.05, benchmark.extra_info


def test_prefix_reuse_speedup(benchmark, gguf_model, posts):
    from mentalglm import Analyzer
    from mentalglm.backends.llamacpp_backend import LlamaCppBackend

    task = long_instruction_task()
    mean_post = statistics.mean(len(p.text) for p in posts)
    assert len(task.instruction) >= 4 * mean_post
    common = {"n_ctx": 2048, "max_new_tokens": 4, "constrained": False, "parallel": 1, "n_threads": bench_threads()}
    with LlamaCppBackend(str(gguf_model), {**common, "prefix_cache": True}) as reuse, \
            LlamaCppBackend(str(gguf_model), {**common, "prefix_cache": False}) as fresh:
        with_reuse = Analyzer(task=task, backend=reuse)
        without = Analyzer(task=task, backend=fresh)
        result = {}
        benchmark.pedantic(lambda: result.update(_medians({"on": lambda: list(with_reuse.analyze_many(posts)),
                                                           "off": lambda: list(without.analyze_many(posts))}, ROUNDS)),
                           rounds=1, iterations=1)
    speedup = result["off"] / result["on"]
    benchmark.extra_info.update({"instruction_chars": len(task.instruction), "mean_post_chars": mean_post,
                                 "reuse_on_s": result["on"], "reuse_off_s": result["off"], "speedup": speedup,
                                 "threads": common["n_threads"]})
    if SCALE == "full":
        assert speedup >= 1.5, benchmark.extra_info
