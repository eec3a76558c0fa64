"""In-process vs Ray Data (``--executor ray``) on this machine: posts/s side by side, and the overhead.

What is measured, on a local Ray cluster of this machine's 2 CPUs (``init_ray(num_cpus=2)``):

- ``local``: the local executor (``Analyzer.run``), llama.cpp with 1 thread;
- ``ray 1×1``: one Ray worker reserving 1 CPU (llama.cpp with 1 thread): the same compute, so the
  difference is what Ray costs;
- ``ray 2×1``: two Ray workers reserving 1 CPU each (1 thread each): both cores;
- ``replay``: the same job with the replay backend (no model), local and on Ray: what the
  framework itself costs per post — on Ray the driver, the object store and the block files —
  which bounds a cluster's throughput however many nodes it has.

Every Ray run is a whole job as a user starts it into a fresh output: actors start, load the
model, analyse, the driver writes the blocks and merges them. The cluster's own start is timed
once. Figures are medians of ``ROUNDS`` rotating rounds (``MENTALGLM_BENCH_ROUNDS``); at full
scale the 85M-parameter benchmark GLM at q8_0, 16 new tokens per post. One llama.cpp thread per
worker: on a shared 2-core machine two threads per process spin against each other. Nothing is
asserted: on 2 cores Ray cannot be faster, the point is to report its overhead.

    pytest benchmarks/test_ray.py --benchmark-only
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import time

import pytest

from bench_models import SCALE, alternate, shared_gguf

pytest.importorskip("ray.data", reason="the Ray benchmark needs the [ray] extra")
pytest.importorskip("llama_cpp", reason="the Ray benchmark needs the llamacpp extra")

FULL = SCALE == "full"
ROUNDS = int(os.environ.get("MENTALGLM_BENCH_ROUNDS") or (3 if FULL else 1))
BATCH = 16
N_POSTS = 64 if FULL else 2 * BATCH
N_REPLAY = 20000 if FULL else 200
OPTIONS = {"n_ctx": 512, "max_new_tokens": 16 if FULL else 4}


@pytest.fixture(scope="module")
def cluster():
    """A local 2-CPU Ray cluster and how long it took to start."""
    import ray

    from mentalglm.executors.ray_data import init_ray

    start = time.perf_counter()
    init_ray(num_cpus=2)
    yield time.perf_counter() - start
    ray.shutdown()


@pytest.fixture(scope="module")
def posts_and_outputs(tmp_path_factory):
    """``N_REPLAY`` synthetic posts (the sample's texts, numbered) and saved outputs for the replay backend."""
    from mentalglm.data.readers import read_posts

    root = tmp_path_factory.mktemp("ray-bench")
    sample = read_posts("sample:depression")
    posts, outputs = root / "posts.jsonl", root / "outputs.jsonl"
    with open(posts, "w", encoding="utf-8") as p, open(outputs, "w", encoding="utf-8") as o:
        for i in range(N_REPLAY):
            p.write(json.dumps({"id": f"b{i:06d}", "text": f"{sample[i % len(sample)].text[:80]}（{i}）"},
                               ensure_ascii=False) + "\n")
            o.write(json.dumps({"id": f"b{i:06d}", "output": "标签：抑郁\n解释：发帖者自述长期情绪低落。"},
                               ensure_ascii=False) + "\n")
    return root, posts, outputs


def _local(task_args: dict, posts, out):
    from mentalglm import Analyzer

    def run():
        shutil.rmtree(out.parent, ignore_errors=True)
        with Analyzer(task="depression", batch_size=BATCH, **task_args) as analyzer:
            return analyzer.run(posts, out, progress=False).analysed
    return run


def _ray(task_args: dict, posts, out, workers: int, cpus: float):
    from mentalglm.executors.ray_data import analyze_posts

    def run():
        shutil.rmtree(out.parent, ignore_errors=True)
        return analyze_posts(posts, output=out, task="depression", workers=workers, num_cpus=cpus, batch_size=BATCH,
                             progress=False, **task_args).analysed
    return run


def _report(seconds: dict, posts: int) -> dict:
    medians = {label: statistics.median(times) for label, times in seconds.items()}
    return {label: {"seconds": round(s, 3), "posts_per_s": round(posts / s, 2)} for label, s in medians.items()}


def test_local_vs_ray_posts_per_second(benchmark, cluster, posts_and_outputs, tmp_path_factory):
    from mentalglm.data.readers import read_posts

    root, posts_file, _ = posts_and_outputs
    posts = read_posts(str(posts_file))[:N_POSTS]
    model = str(shared_gguf(tmp_path_factory, "q8_0"))
    llama = {"backend": "llamacpp", "model": model}
    workloads = {
        "local": _local({**llama, "options": {**OPTIONS, "n_threads": 1}}, posts, root / "local" / "p.jsonl"),
        "ray 1×1": _ray({**llama, "options": OPTIONS}, posts, root / "ray11" / "p.jsonl", workers=1, cpus=1),
        "ray 2×1": _ray({**llama, "options": OPTIONS}, posts, root / "ray21" / "p.jsonl", workers=2, cpus=1),
    }
    result = {}
    benchmark.pedantic(lambda: result.update(alternate(workloads, ROUNDS)[0]), rounds=1, iterations=1)
    figures = _report(result, len(posts))
    benchmark.extra_info.update({"posts": len(posts), "cluster_start_s": round(cluster, 2), **figures,
                                 "ray_overhead_s": round(figures["ray 1×1"]["seconds"] - figures["local"]["seconds"],
                                                         2)})


def test_framework_ceiling_with_replay(benchmark, cluster, posts_and_outputs):
    from mentalglm.data.readers import PostSource

    root, posts_file, outputs = posts_and_outputs
    replay = {"backend": "replay", "model": str(outputs)}
    posts = PostSource(str(posts_file))
    workloads = {
        "local replay": _local(replay, posts, root / "local-replay" / "p.jsonl"),
        "ray replay 2×1": _ray(replay, posts, root / "ray-replay" / "p.jsonl", workers=2, cpus=1),
    }
    result = {}
    benchmark.pedantic(lambda: result.update(alternate(workloads, ROUNDS)[0]), rounds=1, iterations=1)
    benchmark.extra_info.update({"posts": N_REPLAY, **_report(result, N_REPLAY)})
