"""Shared fixtures. Installed third-party plugins are kept out of the test run."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Sequence

# Before anything builds a plugin manager: no installed third-party plugins in tests.
os.environ["MENTALGLM_LOAD_PLUGINS"] = ""
os.environ.pop("MENTALGLM_STRICT_PLUGINS", None)

import pytest  # noqa: E402

from mentalglm.core.backend import Backend, Completion, GenerationRequest  # noqa: E402
from mentalglm.core.plugin_manager import PluginManager, reset_plugin_manager  # noqa: E402


def run_cli(*args, env_extra=None, cwd=None, timeout=120):
    """Run ``python -m mentalglm`` in a subprocess (the real entry point, real stdout/stderr)."""
    env = {**os.environ, "MENTALGLM_LOAD_PLUGINS": "", **(env_extra or {})}
    return subprocess.run([sys.executable, "-m", "mentalglm", *args], capture_output=True, text=True,
                          env=env, cwd=cwd, timeout=timeout)


def free_port() -> int:
    """A TCP port on the loopback interface that is free right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until_serving(process, base_url: str, log_path, name: str, *, timeout: float, poll: float,
                       probe: str = "/models") -> None:
    """Wait until a server started in a fixture answers ``GET {base_url}{probe}`` with 200; fail with its
    log's tail if it exits or does not answer within ``timeout`` seconds (loopback only, no proxy)."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            pytest.fail(f"{name} exited with {process.returncode}:\n{log_path.read_text()[-3000:]}")
        try:
            with opener.open(f"{base_url}{probe}", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            pytest.fail(f"{name} did not answer within {timeout:.0f} s:\n{log_path.read_text()[-3000:]}")
        time.sleep(poll)


class RecordingBackend(Backend):
    """An in-process fake backend (simonw/llm's ``MockModel`` idea): enqueue answers, inspect requests.

    ``answers`` are returned in order (then ``default``); ``scores`` maps a label to the score
    :meth:`score_labels` gives it. Every request and scoring call is kept for assertions.
    """

    name = "recording"
    description = "test double"
    capabilities = frozenset({"generate", "score_labels"})
    requires_model = False

    def __init__(self, answers: Sequence[str] = (), *, default: str = "标签：非抑郁\n解释：无。",
                 scores: dict | None = None, context_length: int | None = None, options=None):
        super().__init__(None, options)
        self.answers, self.default = list(answers), default
        self.label_scores = dict(scores or {})
        self._context_length = context_length
        self.requests: list[GenerationRequest] = []
        self.scored: list[tuple[str, list[str]]] = []
        self.calls: list[tuple[str, int]] = []  # (method, posts in the call), in call order
        self.preflighted: list[list[str]] = []
        self.closed = False

    def enqueue(self, *answers: str) -> None:
        """Answers for the next requests, in order."""
        self.answers.extend(answers)

    def preflight(self, post_ids, response_format=None):
        self.preflighted.append(list(post_ids))
        self.preflight_format = response_format

    def generate(self, requests):
        self.calls.append(("generate", len(requests)))
        self.requests.extend(requests)
        return [Completion(r.id, self.answers.pop(0) if self.answers else self.default,
                           {"prompt_tokens": len(r.prompt), "completion_tokens": 1}) for r in requests]

    def score_labels_batch(self, prompts, candidates):
        self.calls.append(("score_labels_batch", len(prompts)))
        return super().score_labels_batch(prompts, candidates)

    def score_labels(self, prompt, candidates):
        self.scored.append((prompt, list(candidates)))
        return [self.label_scores.get(c, -10.0) for c in candidates]

    def token_count(self, text):
        return len(text)  # one "token" per character keeps truncation arithmetic readable

    @property
    def context_length(self):
        return self._context_length

    def close(self):
        self.closed = True


@pytest.fixture
def recording():
    """A fresh :class:`RecordingBackend`."""
    return RecordingBackend()


@pytest.fixture
def pm():
    """A fresh plugin manager with only the built-in plugins."""
    reset_plugin_manager()
    manager = PluginManager()
    yield manager
    reset_plugin_manager()


ABCD_TASK_FILE = Path(__file__).resolve().parents[1] / "examples" / "tasks" / "cognitive-pathway-abcd.yaml"


@pytest.fixture(scope="session")
def tasks():
    """The built-in tasks by name, plus ``cognitive-pathway-abcd``: the example extraction task file."""
    from mentalglm.core.taskfile import load_task_file

    return {**PluginManager().tasks(), "cognitive-pathway-abcd": load_task_file(ABCD_TASK_FILE)}


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory):
    """Tiny GLM models (``glm``, ``glm4``, ``chatglm`` layout), built once per session."""
    pytest.importorskip("torch", reason="the model tests need the torch extra")
    from models import build_models

    return build_models(tmp_path_factory.mktemp("tiny-models"))


@pytest.fixture(scope="session")
def exported(tiny_models, tmp_path_factory):
    """``exported(model, outtype)`` → path of that tiny model's GGUF, exported once per session."""
    pytest.importorskip("llama_cpp", reason="the GGUF tests need the llamacpp extra")
    from mentalglm.converters.gguf_export import export_gguf

    folder = tmp_path_factory.mktemp("gguf")
    cache: dict = {}

    def get(model: str, outtype: str):
        key = (model, outtype)
        if key not in cache:
            cache[key] = export_gguf(tiny_models[model], folder / f"{model}-{outtype}.gguf", outtype=outtype).path
        return cache[key]

    return get


@pytest.fixture
def one_torch_thread():
    """torch on one thread for a test: tiny models gain nothing from intra-op threads, and on a
    busy 2-core machine spinning threads slow them about 10×."""
    torch = pytest.importorskip("torch")
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def stop_process(process) -> None:
    """Terminate a server a fixture started (kill it if it does not stop within 10 s) and reap it."""
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)


@contextlib.contextmanager
def llama_server_process(model_path, log_dir, *, n_threads: int = 2, n_ctx: int = 512, timeout: float = 60):
    """``(base_url, process)`` of a ``python -m llama_cpp.server`` on loopback serving ``model_path``, stopped
    afterwards (also when the test killed it); its log goes to ``log_dir``. The one launcher of real llama.cpp
    servers: the ``llama_server`` fixture, the replica tests and the replica benchmark all start them here."""
    for module in ("uvicorn", "fastapi", "sse_starlette", "pydantic_settings", "starlette_context"):
        pytest.importorskip(module, reason="the real-server tests need llama-cpp-python[server]")
    port = free_port()
    log_path = Path(log_dir) / f"llama-server-{port}.log"
    env = {k: v for k, v in os.environ.items() if k.upper() not in ("API_KEY", "CONFIG_FILE", "MODEL", "HOST", "PORT")}
    with open(log_path, "wb") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", "llama_cpp.server", "--model", str(model_path), "--host", "127.0.0.1",
             "--port", str(port), "--n_ctx", str(n_ctx), "--n_threads", str(n_threads)],
            stdout=log_file, stderr=subprocess.STDOUT, env=env)
    base_url = f"http://127.0.0.1:{port}/v1"
    try:
        wait_until_serving(process, base_url, log_path, "llama_cpp.server", timeout=timeout, poll=0.2)
        yield base_url, process
    finally:
        stop_process(process)


@contextlib.contextmanager
def llama_cpp_server_process(binary, model_path, log_dir, *, parallel: int = 1, n_ctx: int = 1024,
                             n_threads: int = 2, timeout: float = 120):
    """``(base_url, process)`` of llama.cpp's own ``llama-server`` (the C++ one) on loopback serving ``model_path``
    with ``parallel`` slots of ``n_ctx`` tokens each, stopped afterwards; its log goes to ``log_dir``. The one
    launcher of it: the real-model tests and the real-vocabulary benchmark start it here.

    ``--no-repack``: llama.cpp's AMX kernels die with SIGILL on virtual CPUs that advertise AMX (the in-process
    backend keeps repacked buffers off likewise). ``-fa off``: the llamacpp backend's default; the server's own,
    ``auto``, turns flash attention on, which sums attention in another order — the two engines would then
    not run the same arithmetic, in the tests that compare their answers or in the benchmark that times them.
    """
    port = free_port()
    log_path = Path(log_dir) / f"llama-server-{port}.log"
    with open(log_path, "wb") as log_file:
        process = subprocess.Popen(
            [str(binary), "-m", str(model_path), "--host", "127.0.0.1", "--port", str(port), "-np", str(parallel),
             "-c", str(n_ctx * parallel), "-t", str(n_threads), "--no-repack", "-fa", "off",
             "--no-webui"],
            stdout=log_file, stderr=subprocess.STDOUT)
    base_url = f"http://127.0.0.1:{port}"
    try:
        wait_until_serving(process, base_url, log_path, "llama-server", timeout=timeout, poll=0.25, probe="/health")
        yield base_url, process
    finally:
        stop_process(process)


@pytest.fixture(scope="module")
def llama_server(exported, tmp_path_factory):
    """``(base_url, gguf_path)`` of a running ``python -m llama_cpp.server``, stopped afterwards."""
    path = exported("glm", "f32")
    with llama_server_process(path, tmp_path_factory.mktemp("llama-server")) as (base_url, _):
        yield base_url, path


#: Each integration stage's engine variable and its tests' folder: with the variable set, a skip there is a failure.
STAGES = (("MENTALGLM_REAL_MODELS", "real_models"), ("MENTALGLM_BROWSER", "browser"),
          ("MENTALGLM_VLLM_PYTHON", "vllm"), ("MENTALGLM_RAY", "ray_cluster"),
          ("MENTALGLM_LABEL_STUDIO", "labelstudio"))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """In an integration stage (its variable in :data:`STAGES` set), a skipped test of that stage fails instead:
    the stage that set the engine up must not pass on nothing."""
    outcome = yield
    report = outcome.get_result()
    for variable, folder in STAGES:
        if os.environ.get(variable) and report.skipped and folder in str(item.fspath):
            report.outcome = "failed"
            report.longrepr = f"skipped although {variable} is set: {report.longrepr}"
