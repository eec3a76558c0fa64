"""The in-process ``llamacpp`` backend (sequential and ``parallel=8``) against ``python -m llama_cpp.server``
serving the same GGUF file, through the ``openai`` backend — side by side in one run.

The same posts, task (depression, constrained) and budget (32 new tokens) for all three; the
server gets ``concurrency=8`` requests at a time (it decodes one at a time: llama-cpp-python's
server has no parallel slots) and as many threads as the in-process backend. Rounds alternate
(:func:`bench_models.alternate`); figures are medians. Answers are compared with the sequential
path's.

Model: the parallel benchmark's layers (≥ 200 MB) with a 1k vocabulary (see the fixture).
Out type: f32. On this project's 2-core Xeon the server dies with SIGILL on q8_0/q4_k_m files
(llama.cpp's AMX kernels, which the in-process backend turns off and the server does not; see
BENCHMARKS.md), so f32 is the one file all three can serve here; ``MENTALGLM_BENCH_OUTTYPE``
picks another on a machine without that trap.

    pytest benchmarks/test_llamacpp_server.py --benchmark-only
"""

from __future__ import annotations

import os
import statistics

import pytest

from bench_models import SCALE, alternate, bench_threads, depression_posts, server_launcher

pytest.importorskip("llama_cpp", reason="the server benchmark needs the llamacpp extra")

FULL = SCALE == "full"
ROUNDS = int(os.environ.get("MENTALGLM_BENCH_ROUNDS") or (3 if FULL else 1))
N_POSTS = 32 if FULL else 4
MAX_NEW_TOKENS = 32 if FULL else 8
OUTTYPE = os.environ.get("MENTALGLM_BENCH_OUTTYPE", "f32")


@pytest.fixture(scope="module")
def gguf(tmp_path_factory):
    from test_llamacpp_parallel import SHAPE  # the parallel benchmark's ≥ 200 MB GLM (full scale)

    from mentalglm.converters.gguf_export import export_gguf
    from mentalglm.demo.tiny import build_tiny_glm

    # A 1k vocabulary: the 8k one has tokens of 33+ bytes, which llama-cpp-python's server drops from its
    # text (a 32-byte buffer per piece), so its answers fail the constraint check; the layers, which make
    # the model's size and the time per token, are the parallel benchmark's.
    shape = {**SHAPE, "tokenizer_vocab_size": 1024}
    model = build_tiny_glm(tmp_path_factory.mktemp("server-bench") / f"glm-{SCALE}", arch="glm", seed=0, **shape)
    return export_gguf(model, model.parent / f"bench-{OUTTYPE}.gguf", outtype=OUTTYPE).path


def test_in_process_vs_llama_cpp_server(benchmark, gguf, tmp_path_factory):
    from mentalglm import Analyzer
    threads = bench_threads()
    posts = depression_posts(N_POSTS)
    local = {"n_ctx": 1024, "max_new_tokens": MAX_NEW_TOKENS, "n_threads": threads}
    with server_launcher()(gguf, tmp_path_factory.mktemp("server-log"), n_threads=threads, n_ctx=1024) as (url, _):
        analyzers = {
            "in-process, parallel=1": Analyzer(task="depression", backend="llamacpp", model=str(gguf),
                                               options={**local, "parallel": 1}, batch_size=len(posts)),
            "in-process, parallel=8": Analyzer(task="depression", backend="llamacpp", model=str(gguf),
                                               options={**local, "parallel": 8}, batch_size=len(posts)),
            "llama_cpp.server": Analyzer(task="depression", backend="openai", model="m", batch_size=len(posts),
                                         redact=False,  # the in-process runs see the posts as they are
                                         options={"base_url": url, "max_new_tokens": MAX_NEW_TOKENS,
                                                  "concurrency": 8}),
        }
        try:
            for analyzer in analyzers.values():  # warm-up and the server's canary, outside the clock
                analyzer.backend.preflight(["x"], response_format=analyzer.response_format)
                list(analyzer.analyze_many(posts[:1]))
            measured: dict = {}

            def run():
                seconds, outputs = alternate({label: (lambda a=a: [p.output for p in a.analyze_many(posts)])
                                              for label, a in analyzers.items()}, ROUNDS)
                measured.update(seconds=seconds, outputs=outputs)

            benchmark.pedantic(run, rounds=1, iterations=1)
        finally:
            for analyzer in analyzers.values():
                analyzer.close()
    reference = measured["outputs"]["in-process, parallel=1"]
    rates = {label: len(posts) / statistics.median(times) for label, times in measured["seconds"].items()}
    benchmark.extra_info.update({
        "outtype": OUTTYPE, "posts": len(posts), "rounds": ROUNDS, "max_new_tokens": MAX_NEW_TOKENS,
        "threads": threads, "posts_per_second": rates,
        "vs_server": {label: rate / rates["llama_cpp.server"] for label, rate in rates.items()},
        "same_answers_as_sequential": {label: sum(a == b for a, b in zip(out, reference)) / len(reference)
                                       for label, out in measured["outputs"].items()}})
    assert all(len(out) == len(posts) for out in measured["outputs"].values())
