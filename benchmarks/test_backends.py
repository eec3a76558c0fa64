"""torch against llama.cpp (f32, q8_0, q4_k_m) on the same model and the same posts: speed and peak memory.

What is measured, one benchmark per mode:

- ``generate``: constrained answers (the task's format; ``max_new_tokens`` 32).
- ``score``: label scoring, ``Analyzer(..., mode="score", explain=False)`` — one log-likelihood
  per label, no generated tokens (so tokens/s is 0 there and posts/s is the figure).

Speed: the four variants (``torch``, ``llamacpp:f32``, ``llamacpp:q8_0``, ``llamacpp:q4_k_m``)
are loaded side by side in this process and analyse the same ``sample:depression`` posts through
:func:`mentalglm.bench.run_bench`: one untimed warm-up post each, then ``ROUNDS`` rounds whose
order rotates every round, so drift on a noisy machine hits every variant alike. Per variant:
posts/s (median round), generated tokens/s (all rounds), p50/p95 latency of a batch, valid-output
rate, and the ratios of posts/s and tokens/s to torch.

Peak memory: each variant also runs in a fresh subprocess that imports torch, transformers and
llama_cpp first (the same baseline for every variant), then loads the variant and analyses the
posts once in the mode measured; "growth" is its peak RSS minus the RSS after those imports
(test_converter.py's method). One process per variant, so no variant's allocations hide or
inflate another's. The peak is ``VmHWM`` of ``/proc/self/status``, reset to the current RSS after
the imports (``/proc/self/clear_refs``), not ``ru_maxrss``: a child's ``ru_maxrss`` starts at its
parent's RSS at fork time — here the pytest process holding every variant — which would hide
the growth entirely.

Setup: the model is :func:`bench_models.build_bench_model` (~85M parameters at full scale, random
weights), exported to GGUF at each out type. torch runs float32 on CPU; ``torch.set_num_threads``
and llama.cpp's ``n_threads`` are both :func:`bench_models.bench_threads`. llama.cpp: ``n_ctx`` 2048 (the model's
context), default f16 KV cache, prefix reuse on. Analyzer batch size 8 (torch generates a batch
in one left-padded call; llama.cpp decodes posts one after another). Everything lands in
``extra_info``; no speed targets — the only assertions are sanity: every output valid.

    pytest benchmarks/test_backends.py --benchmark-only --benchmark-json=backends.json
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
import textwrap
from unittest import mock

import pytest

from bench_models import SCALE, bench_threads, depression_posts, model_parameters, shared_bench_model, shared_gguf

pytest.importorskip("torch", reason="the backend benchmarks need the torch extra")
pytest.importorskip("llama_cpp", reason="the backend benchmarks need the llamacpp extra")

ROUNDS = 5 if SCALE == "full" else 2
N_POSTS = 24 if SCALE == "full" else 4
THREADS = bench_threads()
MAX_NEW_TOKENS = 32
N_CTX = 2048
BATCH_SIZE = 8
OUTTYPES = ("f32", "q8_0", "q4_k_m")
MIB = 2**20

_CHILD = textwrap.dedent("""
    import json, os, sys
    # Everything either backend imports comes before the baseline, so it is the same constant for all.
    import numpy, torch, transformers, llama_cpp
    from transformers import AutoModelForCausalLM, AutoTokenizer, GlmForCausalLM
    from mentalglm import Analyzer
    from mentalglm.backends import llamacpp_backend, torch_backend
    from mentalglm.core.prediction import Post
    from mentalglm.backends.llamacpp_native import load_llama_cpp

    def status(key):
        with open("/proc/self/status") as handle:
            return next(int(line.split()[1]) * 1024 for line in handle if line.startswith(key + ":"))

    spec = json.load(sys.stdin)
    load_llama_cpp()
    torch.set_num_threads(spec["threads"])
    posts = [Post(id=i, text=t, instruction=n) for i, t, n in spec["posts"]]
    try:  # peak back to the current RSS, so what the imports briefly held cannot hide growth
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        reset = True
    except OSError:
        reset = False
    baseline, baseline_rss = status("VmHWM"), status("VmRSS")
    analyzer = Analyzer(task="depression", backend=spec["backend"], model=spec["model"], options=spec["options"],
                        mode=spec["mode"], explain=False, batch_size=spec["batch_size"])
    loaded = status("VmHWM")
    predictions = list(analyzer.analyze_many(posts))
    final = status("VmHWM")
    analyzer.close()
    print(json.dumps({"baseline": baseline, "baseline_rss": baseline_rss, "after_load": loaded, "peak": final,
                      "peak_reset": reset, "valid": sum(p.valid for p in predictions), "posts": len(predictions)}))
""")


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return shared_bench_model(tmp_path_factory)


@pytest.fixture(scope="module")
def variants(model, tmp_path_factory):
    """torch on the model directory, llama.cpp on its GGUF exports; same decoding settings everywhere."""
    from mentalglm.bench import Variant

    common = {"max_new_tokens": MAX_NEW_TOKENS, "constrained": True}
    found = [Variant("torch", "torch", str(model), {**common, "device": "cpu", "dtype": "float32"})]
    for outtype in OUTTYPES:
        found.append(Variant(f"llamacpp:{outtype}", "llamacpp", str(shared_gguf(tmp_path_factory, outtype)),
                             {**common, "n_threads": THREADS, "n_ctx": N_CTX}))
    return found


@pytest.fixture(scope="module")
def posts():
    return depression_posts(N_POSTS)




def _run(variants, posts, mode):
    """:func:`mentalglm.bench.run_bench` in ``mode``; label scoring without the explanation.

    run_bench has no ``explain`` switch: it builds its Analyzers from
    ``mentalglm.analysis.analyzer.Analyzer``, which is swapped here for one with ``explain=False``.
    """
    from mentalglm.analysis import analyzer
    from mentalglm.bench import run_bench

    if mode != "score":
        return run_bench(variants, "depression", posts, rounds=ROUNDS, mode=mode, batch_size=BATCH_SIZE)
    with mock.patch.object(analyzer, "Analyzer", functools.partial(analyzer.Analyzer, explain=False)):
        return run_bench(variants, "depression", posts, rounds=ROUNDS, mode=mode, batch_size=BATCH_SIZE)


def _peak_rss(variant, posts, mode) -> dict:
    """One variant loaded and run in a fresh subprocess: its RSS figures."""
    spec = {"backend": variant.backend, "model": variant.model, "options": variant.options, "mode": mode,
            "threads": THREADS, "batch_size": BATCH_SIZE, "posts": [[p.id, p.text, p.instruction] for p in posts]}
    out = subprocess.run([sys.executable, "-c", _CHILD], input=json.dumps(spec, ensure_ascii=False), check=True,
                         capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _ratio(value, base):
    return value / base if base else None


@pytest.mark.parametrize("mode", ["generate", "score"])
def test_torch_vs_llamacpp(benchmark, mode, model, variants, posts, torch_threads):
    from mentalglm.bench import machine_info

    results = []
    benchmark.pedantic(lambda: results.extend(_run(variants, posts, mode)), rounds=1, iterations=1)
    memory = {variant.label: _peak_rss(variant, posts, mode) for variant in variants}

    torch_result = results[0]
    torch_growth = memory["torch"]["peak"] - memory["torch"]["baseline"]
    machine = machine_info()
    info = {"mode": mode, **({"explain": False} if mode == "score" else {}), "scale": SCALE,
            "model_parameters": model_parameters(model), "posts": len(posts), "rounds": ROUNDS,
            "threads": torch_threads, "batch_size": BATCH_SIZE, "max_new_tokens": MAX_NEW_TOKENS,
            "constrained": True, "n_ctx": N_CTX, "cpu": machine["cpu"], "cores": machine["cores"],
            "versions": machine["versions"], "variants": {}}
    for variant, result in zip(variants, results):
        child = memory[variant.label]
        growth = child["peak"] - child["baseline"]
        info["variants"][variant.label] = {
            "posts_per_s": result.posts_per_second, "tokens_per_s": result.tokens_per_second,
            "posts_per_s_vs_torch": _ratio(result.posts_per_second, torch_result.posts_per_second),
            "tokens_per_s_vs_torch": _ratio(result.tokens_per_second, torch_result.tokens_per_second),
            "completion_tokens_per_round": result.completion_tokens / ROUNDS,
            "p50_latency_s": result.percentile(50), "p95_latency_s": result.percentile(95),
            "round_seconds": result.seconds, "load_seconds": result.load_seconds,
            "valid_rate": result.valid_rate,
            "model_file_mib": (sum(p.stat().st_size for p in model.glob("*.safetensors")) if variant.backend == "torch"
                               else os.path.getsize(variant.model)) / MIB,
            "peak_rss_growth_mib": growth / MIB,
            "load_rss_growth_mib": (child["after_load"] - child["baseline"]) / MIB,
            "peak_rss_growth_vs_torch": _ratio(growth, torch_growth),
            "subprocess_peak_rss_mib": child["peak"] / MIB,
            "subprocess_baseline_rss_mib": child["baseline_rss"] / MIB,
            "peak_reset_after_imports": child["peak_reset"],
        }
    benchmark.extra_info.update(info)

    for variant, result in zip(variants, results):
        assert result.valid_rate == 1.0, (variant.label, info["variants"][variant.label])
        child = memory[variant.label]
        assert child["valid"] == child["posts"] == len(posts), (variant.label, child)
        if mode == "generate":
            assert result.completion_tokens > 0, variant.label
        else:
            assert result.completion_tokens == 0, variant.label  # explain=False: nothing generated
