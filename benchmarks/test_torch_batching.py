"""torch backend: batch size 1 against 8 against 32 on the same 32 posts, unconstrained and constrained.

What is measured: one loaded :class:`TorchBackend` (float32 on CPU, ``torch.set_num_threads`` =
:func:`bench_models.bench_threads`) and three Analyzers on it with ``batch_size`` 1, 8 and 32, generating
answers (``max_new_tokens`` 32) for the same 32 ``sample:depression`` posts. After one untimed
warm-up post each, the three run in alternating rounds whose order rotates every round
(:func:`bench_models.alternate`), so drift on a noisy machine hits every batch size alike.
Per batch size: posts/s (median round), generated tokens/s (all rounds), valid-output rate;
plus the speed-ups ``batch 8 / batch 1`` and ``batch 32 / batch 1`` in posts/s, and whether
every batch size produced the same outputs. Two parametrizations: ``unconstrained`` (plain
greedy decoding) and ``constrained`` (the task's answer format enforced by the logits
processor, which runs per row in Python and so also weighs on larger batches).

A batch decodes until its longest answer is done, so speed-ups depend on how evenly long the
answers are; tokens/s counts only the tokens that are kept. No speed targets — the only
assertion is sanity: every constrained output valid.

    pytest benchmarks/test_torch_batching.py --benchmark-only --benchmark-json=torch-batching.json
"""

from __future__ import annotations

import statistics

import pytest

from bench_models import SCALE, alternate, depression_posts, model_parameters, shared_bench_model

pytest.importorskip("torch", reason="the torch benchmarks need the torch extra")

ROUNDS = 3 if SCALE == "full" else 2
N_POSTS = 32
SIZES = (1, 8, 32)
MAX_NEW_TOKENS = 32


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return shared_bench_model(tmp_path_factory)


@pytest.fixture(scope="module")
def posts():
    return depression_posts(N_POSTS)




@pytest.mark.parametrize("constrained", [False, True], ids=["unconstrained", "constrained"])
def test_torch_batch_sizes(benchmark, constrained, model, posts, torch_threads):
    from mentalglm import Analyzer
    from mentalglm.backends.torch_backend import TorchBackend
    from mentalglm.bench import machine_info

    options = {"device": "cpu", "dtype": "float32", "max_new_tokens": MAX_NEW_TOKENS, "constrained": constrained}
    with TorchBackend(str(model), options) as backend:
        analyzers = {size: Analyzer(task="depression", backend=backend, batch_size=size) for size in SIZES}
        for analyzer in analyzers.values():
            list(analyzer.analyze_many(posts[:1]))  # warm-up, untimed
        workloads = {size: (lambda analyzer=analyzer: list(analyzer.analyze_many(posts)))
                     for size, analyzer in analyzers.items()}
        result = {}
        benchmark.pedantic(lambda: result.update(zip(("seconds", "predictions"), alternate(workloads, ROUNDS))),
                           rounds=1, iterations=1)

    machine = machine_info()
    seconds, predictions = result["seconds"], result["predictions"]
    posts_per_s = {size: len(posts) / statistics.median(seconds[size]) for size in SIZES}
    info = {"constrained": constrained, "scale": SCALE, "model_parameters": model_parameters(model),
            "posts": len(posts), "rounds": ROUNDS, "threads": torch_threads, "max_new_tokens": MAX_NEW_TOKENS,
            "dtype": "float32", "device": "cpu", "cpu": machine["cpu"], "cores": machine["cores"],
            "speedup_8_vs_1": posts_per_s[8] / posts_per_s[1], "speedup_32_vs_1": posts_per_s[32] / posts_per_s[1],
            "same_outputs_all_sizes": len({tuple(p.output for p in predictions[s]) for s in SIZES}) == 1}
    for size in SIZES:
        # Every round gives the same greedy outputs, so the last round's token count stands for each.
        tokens = sum(p.usage.get("completion_tokens", 0) for p in predictions[size])
        info[f"batch_{size}"] = {"posts_per_s": posts_per_s[size], "tokens_per_s": tokens * ROUNDS / sum(seconds[size]),
                                 "completion_tokens_per_round": tokens, "round_seconds": seconds[size],
                                 "valid_rate": sum(p.valid for p in predictions[size]) / len(predictions[size])}
    benchmark.extra_info.update(info)

    for size in SIZES:
        assert len(predictions[size]) == len(posts), size
        if constrained:
            assert all(p.valid for p in predictions[size]), (size, info[f"batch_{size}"])
