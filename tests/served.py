"""A service on a real uvicorn server on loopback, for the API tests and the browser test."""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request

import uvicorn

from conftest import free_port
from mentalglm.serve.app import create_app
from mentalglm.serve.engine import Engine, ServeSettings
from mentalglm.serve.metrics import Metrics

HIGH = "我真的不想活了，每天都好痛苦，活着没有意义"
LOW = "今天和朋友去爬山，风景很好，心情不错"


def build_floor(folder):
    """The baseline for suicide-risk and a Platt calibration with a review band, fitted on other posts."""
    from mentalglm import Analyzer
    from mentalglm.core.plugin_manager import PluginManager
    from mentalglm.data.readers import read_posts
    from mentalglm.evaluation.calibration import calibrate
    from mentalglm.evaluation.evaluate import evaluate
    from mentalglm.training.baseline import train_baseline

    pm = PluginManager()
    task = pm.task("suicide-risk")
    posts = read_posts("sample:suicide-risk", task)
    train_baseline(task, [p for i, p in enumerate(posts) if i % 2], folder / "model", data=["sample"])
    with Analyzer(task, backend="baseline", model=str(folder / "model"), mode="score", plugins=pm) as analyzer:
        evaluate(analyzer, [p for i, p in enumerate(posts) if not i % 2], folder / "dev", data="dev", progress=False,
                 bootstrap=0)
    calibration = calibrate(folder / "dev", task, method="platt", target_recall=("高自杀风险", 0.9),
                            review_band=(0.3, 0.6))
    calibration.save(folder / "calibration.json")
    return folder / "model", folder / "calibration.json"


class Served:
    """An app on a real uvicorn server on loopback, in a thread of the test process."""

    def __init__(self, app, engine):
        self.engine, self.port = engine, free_port()
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning",
                                                    lifespan="off"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.url = f"http://127.0.0.1:{self.port}"

    def __enter__(self):
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            assert time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.02)
        return self

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(timeout=30)
        self.engine.stop()

    def wait_ready(self):
        deadline = time.monotonic() + 60
        while self.engine.state == "loading":
            assert time.monotonic() < deadline, "the model did not load"
            time.sleep(0.02)
        assert self.engine.state == "ready", self.engine.error

    def call(self, method: str, path: str, body=None, headers=None, raw: bytes | None = None):
        """(status, headers, parsed JSON or text) of one request, without any proxy."""
        data = raw if raw is not None else (json.dumps(body, ensure_ascii=False).encode() if body is not None else None)
        request = urllib.request.Request(self.url + path, data=data, method=method,
                                         headers={"Content-Type": "application/json", **(headers or {})})
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        try:
            with opener.open(request, timeout=60) as response:
                status, got, text = response.status, response.headers, response.read().decode()
        except urllib.error.HTTPError as error:
            status, got, text = error.code, error.headers, error.read().decode()
        got = {key.lower(): value for key, value in got.items()}
        try:
            return status, got, json.loads(text)
        except ValueError:
            return status, got, text


def serve(floor, *, tasks=("suicide-risk",), start=True, **kwargs):
    model, calibration = floor
    app_options = {k: kwargs.pop(k) for k in ("api_key", "max_posts", "max_chars", "truncate", "max_body_bytes",
                                              "audit") if k in kwargs}
    settings = ServeSettings(tasks=list(tasks), backend="baseline", model=str(model),
                             calibrations=kwargs.pop("calibrations", {"suicide-risk": str(calibration)}), **kwargs)
    metrics = Metrics()
    engine = Engine(settings, metrics)
    served = Served(create_app(engine, metrics, **app_options), engine)
    served.metrics = metrics
    if start:
        engine.start()
    return served


def gate(engine):
    """Hold the decoding thread inside its next backend call until released; ``entered`` says it is there."""
    entered, release = threading.Event(), threading.Event()
    for analyzer in engine.analyzers.values():
        original = analyzer.analyze_many

        def held(posts, original=original):
            entered.set()
            release.wait(60)
            return original(posts)

        analyzer.analyze_many = held
    return entered, release
