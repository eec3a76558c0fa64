"""The openai backend over 1 vs 2 replicas: two ``python -m llama_cpp.server`` processes on loopback.

Both configurations run side by side in one process, alternating rounds (:func:`bench_models.alternate`):
the same posts through the Analyzer with ``base_url`` = one server, then = both (least-busy choice,
``concurrency=4``). Each server decodes one request at a time on one thread (``--n_threads 1``), so
two replicas can use two cores; on a shared 2-core machine expect little or no speed-up — the
figure is the replica layer's cost or gain, not a scaling claim. Reported: posts/s of each and
their ratio (``MENTALGLM_BENCH_SCALE=smoke``: a tiny model, four posts, one round).

    pytest benchmarks/test_replicas.py --benchmark-only
"""

from __future__ import annotations

import statistics

import pytest

from bench_models import SCALE, alternate, server_launcher, shared_gguf

ROUNDS = 3 if SCALE == "full" else 1
N_POSTS = 24 if SCALE == "full" else 4
MAX_NEW_TOKENS = 32 if SCALE == "full" else 8


@pytest.fixture(scope="module")
def posts():
    from dataclasses import replace

    from mentalglm.data.readers import read_posts

    return [replace(p, instruction=None) for p in read_posts("sample:depression")][:N_POSTS]


def test_one_vs_two_replicas(benchmark, tmp_path_factory, posts):
    from mentalglm import Analyzer

    pytest.importorskip("llama_cpp")
    start = server_launcher()
    # f32: on this machine's CPU, llama-cpp-python's server dies with SIGILL on the q8_0 file's first completion.
    model = shared_gguf(tmp_path_factory, "f32")
    logs = tmp_path_factory.mktemp("replica-servers")
    options = {"max_new_tokens": MAX_NEW_TOKENS, "concurrency": 4, "constrained": True}
    with start(model, logs, n_threads=1, n_ctx=1024) as (a_url, _), start(model, logs, n_threads=1,
                                                                           n_ctx=1024) as (b_url, _):
        one = Analyzer(task="depression", backend="openai", model="m", options={**options, "base_url": a_url})
        two = Analyzer(task="depression", backend="openai", model="m",
                       options={**options, "base_url": f"{a_url},{b_url}"})
        for analyzer in (one, two):
            analyzer.backend.preflight(["x"], response_format=analyzer.response_format)  # canaries outside the clock
        result: dict = {}

        def run():
            seconds, outputs = alternate({"1 replica": lambda: [p.output for p in one.analyze_many(posts)],
                                          "2 replicas": lambda: [p.output for p in two.analyze_many(posts)]}, ROUNDS)
            result.update({label: statistics.median(times) for label, times in seconds.items()})
            result["same_answers"] = outputs["1 replica"] == outputs["2 replicas"]

        benchmark.pedantic(run, rounds=1, iterations=1)
        counts = two.backend.run_stats()["replicas"]
    one_rate, two_rate = len(posts) / result["1 replica"], len(posts) / result["2 replicas"]
    benchmark.extra_info.update({"posts": len(posts), "rounds": ROUNDS, "max_new_tokens": MAX_NEW_TOKENS,
                                 "one_replica_posts_per_s": one_rate, "two_replicas_posts_per_s": two_rate,
                                 "speedup": two_rate / one_rate, "same_answers": result["same_answers"],
                                 "requests_per_replica": [c["requests"] for c in counts.values()]})
    assert all(c["requests"] > 0 and c["failures"] == 0 for c in counts.values())  # both shared the load
