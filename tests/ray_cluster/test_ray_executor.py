"""``--executor ray`` on a real local Ray cluster (2 CPUs) with a real llama.cpp backend: 2,000 posts, a worker
SIGKILLed mid-run, a driver SIGKILLed mid-run, reruns — every id exactly once, answers equal to the local executor's.

Ray is an optional extra and a cluster takes seconds to start, so these run only when ray is
installed and ``MENTALGLM_RAY=1`` (``.ci/ray.sh``): ``MENTALGLM_RAY=1 pytest -m ray tests/ray_cluster``.
Decoding is made independent of how posts are grouped (one post at a time, no prefix reuse, f32
weights, one thread), so the Ray run must reproduce the in-process run exactly.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from models import kill_when

pytestmark = [
    pytest.mark.ray,
    pytest.mark.skipif(importlib.util.find_spec("ray") is None or os.environ.get("MENTALGLM_RAY") != "1",
                       reason="set MENTALGLM_RAY=1 with the [ray] extra installed to run the Ray cluster tests"),
]

N_POSTS = 2000
BATCH = 16
OPTIONS = {"n_ctx": 512, "max_new_tokens": 8, "parallel": 1, "prefix_cache": False, "n_threads": 1}
WORKER_TITLE = b"ray::MapWorker(MapBatches(PostAnalyzer))"


@pytest.fixture(scope="module")
def cluster():
    """The GCS address of a local Ray cluster with 2 CPUs, shut down after the module."""
    import ray

    from mentalglm.executors.ray_data import init_ray

    init_ray(num_cpus=2)
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


@pytest.fixture(scope="module")
def posts_file(tmp_path_factory) -> Path:
    """2,000 synthetic posts (the shipped sample's texts, numbered), as a JSONL file with ids."""
    from mentalglm.data.readers import read_posts

    texts = [p.text[:60] for p in read_posts("sample:depression")]
    path = tmp_path_factory.mktemp("ray-posts") / "posts.jsonl"
    with open(path, "w", encoding="utf-8") as handle:
        for i in range(N_POSTS):
            handle.write(json.dumps({"id": f"r{i:05d}", "text": f"{texts[i % len(texts)]}（{i}）"},
                                    ensure_ascii=False) + "\n")
    return path


@pytest.fixture(scope="module")
def model(exported) -> str:
    return str(exported("glm", "f32"))


@pytest.fixture(scope="module")
def reference(model, posts_file, tmp_path_factory) -> list[dict]:
    """The local executor's predictions of the same posts, in this process."""
    from mentalglm import Analyzer
    from mentalglm.data.readers import PostSource

    out = tmp_path_factory.mktemp("ray-local") / "predictions.jsonl"
    with Analyzer(task="depression", backend="llamacpp", model=model, options=OPTIONS, batch_size=BATCH) as analyzer:
        summary = analyzer.run(PostSource(posts_file), out, progress=False)
    assert summary.analysed == N_POSTS
    return _records(out)


def _records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def _stat(pid: int) -> list[str]:
    """The fields of ``/proc/PID/stat`` after the command name, from the state on."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()  # the name may hold spaces and ")"


def _parent(pid: int) -> int:
    return int(_stat(pid)[1])


def _descends_from(pid: int, ancestor: int) -> bool:
    while pid > 1:
        if pid == ancestor:
            return True
        try:
            pid = _parent(pid)
        except (OSError, ValueError, IndexError):
            return False
    return False


def worker_pids() -> list[int]:
    """Process ids of this cluster's PostAnalyzer actors (Ray titles its worker processes by actor class)."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            title = Path(f"/proc/{entry}/cmdline").read_bytes()
        except OSError:
            continue
        if title.startswith(WORKER_TITLE) and _descends_from(int(entry), os.getpid()):
            pids.append(int(entry))
    return pids


def _kill_workers_until_a_batch_is_retried(parts: Path, killed: list, stop: threading.Event, before: set,
                                           tries: int = 3) -> None:
    """SIGKILL a worker once three blocks are on disk (a worker is then mid-batch, or holds queued batches);
    should Ray's task events show no newly retried batch a few seconds later (the kill fell between two batches),
    kill again — at most ``tries`` times — so the test does not rest on when a kill lands."""
    while not stop.is_set() and len(killed) < tries:
        if parts.is_dir() and len(list(parts.glob("part-*.jsonl"))) >= 3:
            workers = worker_pids()
            pids = [pid for pid in workers if _runnable(pid)] or workers
            if pids:
                os.kill(pids[0], signal.SIGKILL)
                killed.append(pids[0])
                if retried_batches(timeout=5.0, stop=stop, known=before):
                    return
        time.sleep(0.02)


def _runnable(pid: int) -> bool:
    """Whether the process is runnable (state R): computing, most likely decoding, rather than waiting for work."""
    try:
        return _stat(pid)[0] == "R"
    except (OSError, IndexError):
        return False


def retried_batches(timeout: float = 30.0, stop: threading.Event | None = None,
                    known: frozenset | set = frozenset()) -> list[str]:
    """Ray's own record of batch calls on a PostAnalyzer actor that ran again after a failure: the task ids of
    the GCS task events with ``attempt_number`` ≥ 1, less the ``known`` ones. Ray reports task events every second
    or so, hence the wait (up to ``timeout``, or until ``stop`` is set) for one not known before.

    ``ray._private.state`` is internal (the public state API needs the dashboard, which ``init_ray`` keeps
    off); the ``[ray]`` extra pins the Ray version it is read with.
    """
    from ray._private import state

    deadline = time.monotonic() + timeout
    while True:
        retried = sorted({event.task_id.hex() for event in state.state._get_all_task_events()
                          if event.attempt_number >= 1 and event.HasField("task_info")
                          and "PostAnalyzer" in event.task_info.name and "__init__" not in event.task_info.name}
                         - known)
        if retried or time.monotonic() > deadline or (stop is not None and stop.is_set()):
            return retried
        time.sleep(0.5)


def _assert_exactly_once_and_equal(path: Path, reference: list[dict]) -> None:
    records = _records(path)
    ids = [r["id"] for r in records]
    assert len(ids) == N_POSTS and len(set(ids)) == N_POSTS
    assert ids == [r["id"] for r in reference]  # merged in input order
    assert records == reference  # the same answers, usage and flags as the in-process run


def test_a_worker_killed_mid_run_is_replaced_and_every_id_written_once(cluster, model, posts_file, reference, tmp_path):
    import ray

    from mentalglm.core.errors import MentalGLMError
    from mentalglm.executors.ray_data import analyze_dataset

    rows = [json.loads(line) for line in posts_file.read_text(encoding="utf-8").splitlines()]
    ds = ray.data.from_items(rows, override_num_blocks=N_POSTS // BATCH)
    out = tmp_path / "run"
    settings = dict(task="depression", backend="llamacpp", model=model, options=OPTIONS, workers=2, batch_size=BATCH,
                    data=str(posts_file))
    killed: list[int] = []
    stop = threading.Event()
    before = set(retried_batches(timeout=0))  # earlier tests' retries, if any; also connects to the GCS here
    watcher = threading.Thread(target=_kill_workers_until_a_batch_is_retried,
                               args=(out / "parts", killed, stop, before), daemon=True)
    watcher.start()
    try:
        first = analyze_dataset(ds, output=out, **settings)
    finally:
        stop.set()
        watcher.join(timeout=60)
    assert killed, "no worker was killed: the run ended before three blocks were written"
    # Ray Data restarts a dead actor and retries its batch (Ray's task events show the second attempt); the
    # batch's block reaches the driver once: no line was written twice, so the merge had nothing to drop.
    assert not watcher.is_alive(), "the watcher did not stop"
    assert retried_batches(known=before), f"Ray recorded no retried batch after {len(killed)} kills"
    assert (first.analysed, first.errors, first.duplicates) == (N_POSTS, 0, 0)
    _assert_exactly_once_and_equal(out / "predictions.jsonl", reference)
    assert not (out / "parts").exists() and not (out / "errors.jsonl").exists()

    rerun = analyze_dataset(ds, output=out, **settings)
    assert (rerun.skipped, rerun.analysed) == (N_POSTS, 0)
    _assert_exactly_once_and_equal(out / "predictions.jsonl", reference)

    with pytest.raises(MentalGLMError, match=r"options\.max_new_tokens \(was 8, now 9\)"):
        analyze_dataset(ds, output=out, **{**settings, "options": {**OPTIONS, "max_new_tokens": 9}})


def test_a_driver_killed_mid_run_resumes_from_its_blocks(cluster, model, posts_file, reference, tmp_path):
    out = tmp_path / "predictions.jsonl"
    parts = out.with_name(out.name + ".parts")
    args = [sys.executable, "-m", "mentalglm", "analyze", "--task", "depression", "--backend", "llamacpp",
            "--model", model, "--input", str(posts_file), "--output", str(out), "--executor", "ray",
            "--ray-address", cluster, "--workers", "2", "--batch-size", str(BATCH), "--quiet"]
    for key, value in OPTIONS.items():
        args += ["-O", f"{key}={str(value).lower()}"]
    env = {**os.environ, "MENTALGLM_LOAD_PLUGINS": ""}
    driver = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    kill_when(driver, lambda: parts.is_dir() and len(list(parts.glob("part-*.jsonl"))) >= 3, timeout=300)
    assert not out.exists()  # killed before the merge: only blocks on disk

    rerun = subprocess.run(args + ["--json"], env=env, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    summary = json.loads(rerun.stdout)
    assert summary["skipped"] >= 3 * BATCH and summary["skipped"] + summary["analysed"] == N_POSTS
    assert summary["errors"] == 0
    _assert_exactly_once_and_equal(out, reference)
    texts = [json.loads(line)["text"] for line in posts_file.read_text(encoding="utf-8").splitlines()]
    assert not any(text in rerun.stderr for text in texts)  # no post text on stderr at default verbosity
