"""``mentalglm serve`` under load, against in-process ``analyze`` on the same model and posts.

For each model — ``small`` (the smoke-scale GLM, the size of the quickstart's demo model) and ``bigger``
(the ~85M-parameter benchmark GLM), both q8_0, llamacpp ``parallel=8``, depression task, 16 new
tokens, llama.cpp's threads pinned to the physical cores on both sides — the real command
``mentalglm serve`` runs in a subprocess on loopback and:

1. 16 concurrent clients send ``REQUESTS`` one-post requests (2,000 at full scale) over kept-alive
   connections: errors, lost answers and invalid answers are counted; p50 and p95 latency; posts/s.
2. In process, the same posts through ``Analyzer.analyze_many`` with the service's batch: posts/s.
   Target (BENCHMARKS.md): the service ≥ 0.8× in process.
3. A storm of 64 clients that send a request and hang up at once: the service stays healthy, the
   queue drains to 0, and the next request is answered.
4. ``kill -9`` and a restart: ``/health`` is polled from the first moment the port accepts; the
   statuses seen (503 while loading, then 200) are recorded.

    pytest benchmarks/test_serve.py --benchmark-only --benchmark-json benchmarks/results/serve.json
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from bench_models import SCALE, SHAPES, bench_threads, depression_posts

pytest.importorskip("fastapi", reason="the service needs the [serve] extra")
pytest.importorskip("llama_cpp", reason="the service benchmark serves a GGUF through llamacpp")

FULL = SCALE == "full"
REQUESTS = 2000 if FULL else 48
CLIENTS = 16
STORM = 64 if FULL else 8
OPTIONS = {"parallel": 8, "n_ctx": 512, "max_new_tokens": 16}


def _options() -> dict:
    return {**OPTIONS, "n_threads": bench_threads()}  # pinned: the clients themselves raise the load average


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _gguf(root, shape: dict):
    from mentalglm.converters.gguf_export import export_gguf
    from mentalglm.demo.tiny import build_tiny_glm

    model = build_tiny_glm(root / "model", arch="glm", seed=0, **shape)
    return export_gguf(model, root / "model-q8_0.gguf", outtype="q8_0").path


class Service:
    """``mentalglm serve`` in a subprocess."""

    def __init__(self, gguf, log_path):
        self.gguf, self.log_path, self.port = gguf, log_path, _free_port()
        self.process = None

    def start(self) -> list[int]:
        """Start it and poll /health until 200; the statuses seen, in order (collapsed)."""
        command = [sys.executable, "-m", "mentalglm", "serve", "--task", "depression", "--backend", "llamacpp",
                   "--model", str(self.gguf), "--port", str(self.port), "--no-moderation", "--queue-size", "4096"]
        for key, value in _options().items():
            command += ["-O", f"{key}={value}"]
        log = open(self.log_path, "ab")
        self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                                        env={**os.environ, "MENTALGLM_LOAD_PLUGINS": ""})
        seen: list[int] = []
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            assert self.process.poll() is None, f"the service exited; see {self.log_path}"
            try:
                status, _ = self.call("GET", "/health", timeout=5)
            except OSError:
                time.sleep(0.005)
                continue
            if not seen or seen[-1] != status:
                seen.append(status)
            if status == 200:
                return seen
            time.sleep(0.005)
        raise AssertionError("the service did not become healthy")

    def call(self, method, path, body=None, timeout=120, connection=None):
        own = connection is None
        connection = connection or http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            data = json.dumps(body, ensure_ascii=False).encode() if body is not None else None
            connection.request(method, path, data, {"Content-Type": "application/json"} if data else {})
            response = connection.getresponse()
            payload = response.read()
            return response.status, (json.loads(payload) if payload.startswith(b"{") else payload.decode())
        finally:
            if own:
                connection.close()

    def kill(self):
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=30)

    def stop(self):
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()


def _load(service: Service, texts: list[str]) -> dict:
    """CLIENTS threads, each with one kept-alive connection, share the requests."""
    latencies, statuses, outputs = [], [], {}
    lock = threading.Lock()
    jobs = iter(range(len(texts)))

    def client():
        connection = http.client.HTTPConnection("127.0.0.1", service.port, timeout=300)
        while True:
            with lock:
                index = next(jobs, None)
            if index is None:
                break
            started = time.perf_counter()
            status, body = service.call("POST", "/v1/analyze", {"task": "depression", "posts": [
                {"id": f"r{index}", "text": texts[index]}]}, connection=connection)
            elapsed = time.perf_counter() - started
            with lock:
                latencies.append(elapsed)
                statuses.append(status)
                if status == 200:
                    for prediction in body["predictions"]:
                        outputs[prediction["id"]] = prediction
        connection.close()

    started = time.perf_counter()
    with ThreadPoolExecutor(CLIENTS) as pool:
        for future in [pool.submit(client) for _ in range(CLIENTS)]:
            future.result()
    seconds = time.perf_counter() - started
    ordered = sorted(latencies)
    return {"requests": len(texts), "seconds": round(seconds, 3), "posts_per_second": len(texts) / seconds,
            "errors": sum(s != 200 for s in statuses), "lost": len(texts) - len(outputs),
            "invalid": sum(not p["valid"] for p in outputs.values()),
            "latency_p50": ordered[len(ordered) // 2], "latency_p95": ordered[int(len(ordered) * 0.95) - 1]}


def _in_process(gguf, texts: list[str]) -> dict:
    from mentalglm import Analyzer, Post

    with Analyzer("depression", backend="llamacpp", model=str(gguf), options=_options()) as analyzer:
        batch = analyzer.backend.preferred_batch_size
        list(analyzer.analyze_many([Post("warm", texts[0])]))
        started = time.perf_counter()
        predictions = list(analyzer.analyze_many([Post(f"r{i}", t) for i, t in enumerate(texts)]))
        seconds = time.perf_counter() - started
    return {"posts": len(texts), "seconds": round(seconds, 3), "posts_per_second": len(texts) / seconds,
            "invalid": sum(not p.valid for p in predictions), "batch": batch}


def _storm(service: Service, texts: list[str]) -> dict:
    """Clients that send and hang up at once; then the service must be healthy, drained and answering."""
    for i in range(STORM):
        connection = http.client.HTTPConnection("127.0.0.1", service.port, timeout=30)
        connection.request("POST", "/v1/analyze", json.dumps({"task": "depression", "posts": [texts[i % len(texts)]]}),
                           {"Content-Type": "application/json"})
        connection.close()
    deadline, depth = time.monotonic() + 120, None
    while time.monotonic() < deadline:
        _, metrics = service.call("GET", "/metrics")
        depth = next(float(line.split()[1]) for line in metrics.splitlines()
                     if line.startswith("mentalglm_queue_depth "))
        if depth == 0:
            break
        time.sleep(0.1)
    health, _ = service.call("GET", "/health")
    status, body = service.call("POST", "/v1/analyze", {"task": "depression", "posts": [texts[0]]})
    return {"clients": STORM, "queue_depth_after": depth, "health_after": health,
            "next_request": status, "next_valid": bool(status == 200 and body["predictions"][0]["valid"])}


@pytest.mark.parametrize("size", ["small", "bigger"])
def test_service_against_in_process(benchmark, tmp_path, size):
    shape = SHAPES["smoke"] if size == "small" or not FULL else SHAPES["full"]
    gguf = _gguf(tmp_path, shape)
    base = [p.text for p in depression_posts(56)]
    texts = [f"{base[i % len(base)]}（{i}）" for i in range(REQUESTS)]  # distinct posts, as traffic is
    service = Service(gguf, tmp_path / "serve.log")
    measured: dict = {}

    def run():
        measured["startup_health"] = service.start()
        service.call("POST", "/v1/analyze", {"task": "depression", "posts": [texts[0]]})  # warm
        measured["service"] = _load(service, texts)
        measured["storm"] = _storm(service, texts)
        service.kill()
        measured["restart_health"] = service.start()
        service.stop()
        measured["in_process"] = _in_process(gguf, texts)

    try:
        benchmark.pedantic(run, rounds=1, iterations=1)
    finally:
        service.stop()
    document = {"model": size, "parameters_shape": shape, "options": _options(), "clients": CLIENTS, **measured,
                "service_vs_in_process": measured["service"]["posts_per_second"]
                / measured["in_process"]["posts_per_second"]}
    benchmark.extra_info.update(document)
    print(json.dumps(document, ensure_ascii=False, indent=1), file=sys.stderr)
    assert measured["service"]["errors"] == measured["service"]["lost"] == 0
    assert measured["service"]["invalid"] == 0
    assert measured["storm"]["health_after"] == 200 and measured["storm"]["next_valid"]
    assert measured["restart_health"][-1] == 200
