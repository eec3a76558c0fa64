"""llama.cpp parallel sequences: posts/s and tokens/s at parallel 1, 2, 4, 8, 16, side by side.

What is measured, per GGUF out type (``MENTALGLM_BENCH_OUTTYPES``, default ``q8_0``; e.g.
``q8_0,q4_k_m,f32``):

- ``generate``: the depression task's constrained answers, ``max_new_tokens`` 32, every post in
  one ``generate()`` call (Analyzer batch = all posts), so slots are refilled as posts end.
- ``score``: label scoring, two ways: through the Analyzer (``mode="score"``, no explanation:
  it asks for one post at a time) and through ``score_labels_batch`` (all posts in one call:
  what an Analyzer that hands the backend a batch of posts would get).

Variants, loaded side by side in this process and run in rotating order (``ROUNDS`` rounds, so
drift on a shared machine hits every variant alike; figures are medians of rounds): ``sequential``
(``parallel=1``: the one-post-at-a-time path as before), ``batched×1`` (the batched decoder with one
slot: its overhead against the sequential path), and ``parallel=N``. The share of answers equal to
the sequential path's is reported per variant. Peak RSS growth: each variant once more in a fresh subprocess
(``VmHWM`` reset after the imports, as in test_backends.py).

Model (full scale): a GLM of ~204M parameters (hidden 1024, 16 layers, 2 KV heads, 8k vocabulary,
random weights: speed does not depend on what they say), 209 MiB at q8_0 — the size class of the
issue's prototype. Targets, checked at full scale only and reported, never asserted in tests:
``parallel=8`` ≥ 1.4× the sequential posts/s for q8_0 generation, ``batched×1`` ≤ 2 % slower.

    pytest benchmarks/test_llamacpp_parallel.py --benchmark-only --benchmark-json=parallel.json
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import textwrap

import pytest

from bench_models import SCALE, alternate, bench_threads, depression_posts

pytest.importorskip("llama_cpp", reason="the parallel benchmarks need the llamacpp extra")

FULL = SCALE == "full"
ROUNDS = int(os.environ.get("MENTALGLM_BENCH_ROUNDS") or (3 if FULL else 1))
N_POSTS = 32 if FULL else 6
PARALLEL = (1, 2, 4, 8, 16) if FULL else (1, 2, 8)
OUTTYPES = tuple(os.environ.get("MENTALGLM_BENCH_OUTTYPES", "q8_0").split(","))
MAX_NEW_TOKENS = 32
N_CTX = 1024
MIB = 2**20
#: build_tiny_glm arguments: ≥ 200 MB at q8_0 (full), the tiny smoke shape otherwise.
SHAPE = (dict(hidden_size=1024, num_layers=16, num_heads=16, num_kv_heads=2, intermediate_size=3072,
              tokenizer_vocab_size=8192, dtype="float16") if FULL else
         dict(hidden_size=128, num_layers=2, num_heads=4, num_kv_heads=2, intermediate_size=256))


def _threads() -> int:
    return bench_threads()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from mentalglm.demo.tiny import build_tiny_glm

    return build_tiny_glm(tmp_path_factory.mktemp("parallel") / f"glm-{SCALE}", arch="glm", seed=0, **SHAPE)


@pytest.fixture(scope="module")
def gguf(model_dir):
    from mentalglm.converters.gguf_export import export_gguf

    cache: dict = {}

    def get(outtype: str):
        if outtype not in cache:
            cache[outtype] = export_gguf(model_dir, model_dir.parent / f"bench-{outtype}.gguf", outtype=outtype).path
        return cache[outtype]

    return get


@pytest.fixture(scope="module")
def posts():
    return depression_posts(N_POSTS)


def variant_options(label: str, threads: int) -> dict:
    """Backend options of a variant label (``sequential``, ``batched×1``, ``parallel=N``)."""
    parallel = 1 if label in ("sequential", "batched×1") else int(label.split("=")[1])
    return {"n_ctx": N_CTX, "max_new_tokens": MAX_NEW_TOKENS, "n_threads": threads, "parallel": parallel}


def open_variant(path, label: str, threads: int):
    """The backend of a variant; ``batched×1`` is a parallel=1 backend given the batched decoder with one slot."""
    from mentalglm.backends.llamacpp_backend import LlamaCppBackend
    from mentalglm.backends.llamacpp_batch import ParallelDecoder
    from mentalglm.backends.llamacpp_native import BatchContext

    backend = LlamaCppBackend(str(path), variant_options(label, threads))
    if label == "batched×1":  # private hook, for this measurement only: parallel=1 means the sequential path
        backend._decoder = ParallelDecoder(BatchContext(backend.llm, n_seq=1, n_ctx_seq=N_CTX, n_batch=512,
                                                        n_threads=threads))
    return backend


def labels() -> list[str]:
    return ["sequential", "batched×1", *(f"parallel={n}" for n in PARALLEL if n > 1)]


_CHILD = textwrap.dedent("""
    import json, sys
    sys.path.insert(0, sys.argv[1])
    import llama_cpp, numpy
    from mentalglm import Analyzer
    from mentalglm.core.prediction import Post
    from mentalglm.backends.llamacpp_native import load_llama_cpp
    from test_llamacpp_parallel import open_variant

    def status(key):
        with open("/proc/self/status") as handle:
            return next(int(line.split()[1]) * 1024 for line in handle if line.startswith(key + ":"))

    spec = json.load(sys.stdin)
    load_llama_cpp()
    posts = [Post(id=i, text=t) for i, t in spec["posts"]]
    try:  # peak back to the current RSS, so what the imports briefly held cannot hide growth
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
    except OSError:
        pass
    baseline = status("VmHWM")
    backend = open_variant(spec["model"], spec["label"], spec["threads"])
    analyzer = Analyzer(task="depression", backend=backend, batch_size=len(posts), mode=spec["mode"], explain=False)
    loaded = status("VmHWM")
    list(analyzer.analyze_many(posts))
    print(json.dumps({"baseline": baseline, "after_load": loaded, "peak": status("VmHWM")}))
    backend.close()
""")


def peak_rss(path, label: str, mode: str, posts, threads: int) -> dict:
    """RSS growth (MiB) of one variant loaded and run in a fresh subprocess."""
    spec = {"model": str(path), "label": label, "mode": mode, "threads": threads,
            "posts": [[p.id, p.text] for p in posts]}
    out = subprocess.run([sys.executable, "-c", _CHILD, os.path.dirname(__file__)], check=True, capture_output=True,
                         text=True, input=json.dumps(spec, ensure_ascii=False), env={**os.environ, "PYTHONPATH": ""})
    child = json.loads(out.stdout.strip().splitlines()[-1])
    return {"peak_rss_growth_mib": (child["peak"] - child["baseline"]) / MIB,
            "load_rss_growth_mib": (child["after_load"] - child["baseline"]) / MIB}


def _workloads(backends, posts, mode):
    """label → zero-argument callable running every post once in ``mode``."""
    from mentalglm import Analyzer

    def run(label):
        backend = backends[label]
        if mode == "score-batch":
            analyzer = Analyzer(task="depression", backend=backend)
            prompts = [analyzer.render(p) + analyzer.response_format.label_head for p in posts]
            return lambda: (backend.score_labels_batch(prompts, list(analyzer.task.label_names)), 0)
        analyzer = Analyzer(task="depression", backend=backend, batch_size=len(posts),
                            mode="score" if mode == "score" else "generate", explain=False)

        def go():
            predictions = list(analyzer.analyze_many(posts))
            return [(p.output, p.scores) for p in predictions], sum(p.usage.get("completion_tokens", 0)
                                                                     for p in predictions)
        return go

    return {label: run(label) for label in backends}


def _figures(seconds, results, posts) -> dict:
    base = statistics.median(seconds["sequential"])
    figures = {}
    for label, times in seconds.items():
        median = statistics.median(times)
        tokens = results[label][1]
        figures[label] = {"seconds_median": median, "round_seconds": times, "posts_per_s": len(posts) / median,
                          "tokens_per_s": tokens / median, "completion_tokens": tokens,
                          "posts_per_s_vs_sequential": base / median}
    return figures


@pytest.mark.parametrize("mode", ["generate", "score", "score-batch"])
@pytest.mark.parametrize("outtype", OUTTYPES)
def test_parallel_sequences(benchmark, gguf, posts, outtype, mode):
    import numpy as np

    from mentalglm.bench import machine_info

    threads = _threads()
    path = gguf(outtype)
    backends = {label: open_variant(path, label, threads) for label in labels()}
    try:
        seconds, results = {}, {}
        benchmark.pedantic(lambda: _store(alternate(_workloads(backends, posts, mode), ROUNDS), seconds, results),
                           rounds=1, iterations=1)
    finally:
        for backend in backends.values():
            backend.close()
    figures = _figures(seconds, results, posts)
    if mode != "score-batch":
        for label in figures:
            figures[label].update(peak_rss(path, label, "generate" if mode == "generate" else "score", posts, threads))
    machine = machine_info()
    benchmark.extra_info.update({
        "outtype": outtype, "mode": mode, "scale": SCALE, "posts": len(posts), "rounds": ROUNDS, "threads": threads,
        "max_new_tokens": MAX_NEW_TOKENS, "n_ctx": N_CTX, "file_mib": os.path.getsize(path) / MIB,
        "cpu": machine["cpu"], "cores": machine["cores"], "versions": machine["versions"],
        "load_average": os.getloadavg(), "variants": figures,
        "overhead_batched_x1": figures["batched×1"]["seconds_median"] / figures["sequential"]["seconds_median"] - 1})
    reference = results["sequential"][0]
    for label, (answers, _) in results.items():
        # How many answers equal the sequential path's. Only f32 weights promise equality (the
        # tests check it with an f32 cache): quantized matmuls of a batch take other kernels than
        # those of one token, and on random weights near-tied logits flip with the last bit.
        if mode == "score-batch":
            figures[label]["max_score_difference"] = float(np.abs(np.array(answers) - np.array(reference)).max())
        else:
            same = sum(a == b for (a, _), (b, _) in zip(answers, reference))
            figures[label]["same_answers_as_sequential"] = same / len(posts)
    print(json.dumps(benchmark.extra_info, ensure_ascii=False, indent=1), file=sys.stderr)


def _store(measured, seconds: dict, results: dict) -> None:
    seconds.update(measured[0])
    results.update(measured[1])
