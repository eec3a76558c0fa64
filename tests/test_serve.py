"""``mentalglm serve`` on loopback: OpenAI's own client for /v1/moderations, Prometheus' own parser for /metrics,
every mistake a 4xx naming the field, many clients decoded together, a full queue a 429, a gone client freed."""

from __future__ import annotations

import http.client
import json
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

pytest.importorskip("fastapi", reason="the service needs the [serve] extra")
pytest.importorskip("uvicorn", reason="the service needs the [serve] extra")

from mentalglm.core.errors import MentalGLMError  # noqa: E402
from mentalglm.serve.app import AuditLog  # noqa: E402
from mentalglm.serve.engine import Engine, ServeSettings  # noqa: E402
from mentalglm.serve.metrics import Metrics  # noqa: E402
from mentalglm.serve.moderation import CATEGORIES  # noqa: E402
from served import HIGH, LOW, build_floor, gate, serve  # noqa: E402


@pytest.fixture(scope="module")
def floor(tmp_path_factory):
    return build_floor(tmp_path_factory.mktemp("floor"))


# -- the routes ---------------------------------------------------------------------------------------
def test_analyze_answers_as_the_analyzer_does_with_a_decision(floor):
    from mentalglm import Analyzer, Post

    with serve(floor) as served:
        served.wait_ready()
        status, _, body = served.call("POST", "/v1/analyze", {"task": "suicide-risk",
                                                              "posts": [HIGH, {"id": "b", "text": LOW}]})
    assert status == 200
    model, calibration = floor
    with Analyzer("suicide-risk", backend="baseline", model=str(model), mode="score",
                  calibration=str(calibration)) as analyzer:
        expected = list(analyzer.analyze_many([Post("1", HIGH), Post("b", LOW)]))
    got = body["predictions"]
    assert [{k: v for k, v in p.items() if k != "decision"} for p in got] == [p.to_dict() for p in expected]
    for prediction in got:
        assert prediction["decision"] == ("review" if prediction["needs_review"] else
                                          "block" if prediction["labels"] == ["高自杀风险"] else "pass")
        assert all(e["grounded"] for e in prediction["evidence"])


def test_moderations_work_with_the_official_openai_client(floor):
    openai = pytest.importorskip("openai")
    with serve(floor) as served:
        served.wait_ready()
        client = openai.OpenAI(base_url=f"{served.url}/v1", api_key="unused", max_retries=0)
        response = client.moderations.create(input=[HIGH, LOW, HIGH], model="mentalglm-test")
        single = client.moderations.create(input=LOW)
        _, _, analysed = served.call("POST", "/v1/analyze", {"task": "suicide-risk", "posts": [HIGH, LOW, HIGH]})
    assert response.id.startswith("modr-") and response.model == "mentalglm-test" and len(response.results) == 3
    assert len(single.results) == 1
    for result, prediction in zip(response.results, analysed["predictions"]):
        raw = result.model_dump(by_alias=True)
        assert set(raw["categories"]) == set(raw["category_scores"]) == set(raw["category_applied_input_types"]) \
            == set(CATEGORIES)
        probability = prediction["probabilities"]["高自杀风险"]
        assert result.category_scores.self_harm == result.category_scores.self_harm_intent == probability
        assert result.flagged == result.categories.self_harm == (prediction["labels"] == ["高自杀风险"])
        assert result.categories.violence is False and result.category_scores.hate == 0.0
        assert result.category_applied_input_types.self_harm == ["text"]
        assert result.category_applied_input_types.sexual == []
        vendor = result.model_extra["mentalglm"]
        assert vendor["decision"] == prediction["decision"] and vendor["labels"] == prediction["labels"]
        assert "self-harm" not in vendor["not_assessed"] and "violence" in vendor["not_assessed"]
        assert len(vendor["calibration_sha256"]["suicide-risk"]) == 64 and len(vendor["model_sha256"]) == 64
    assert response.results[0].model_dump() == response.results[2].model_dump()  # input order kept


def test_health_is_503_while_loading_then_200(floor, monkeypatch):
    release = threading.Event()
    original = Engine._load

    def slow(self):
        release.wait(60)
        original(self)

    monkeypatch.setattr(Engine, "_load", slow)
    with serve(floor) as served:
        status, _, body = served.call("GET", "/health")
        assert (status, body["status"]) == (503, "loading")
        status, headers, body = served.call("POST", "/v1/analyze", {"task": "suicide-risk", "posts": [LOW]})
        assert status == 503 and headers["retry-after"] == "5"
        release.set()
        served.wait_ready()
        status, _, body = served.call("GET", "/health")
    assert (status, body["status"], body["tasks"]) == (200, "ok", ["suicide-risk"])


def test_tasks_lists_what_is_served(floor):
    with serve(floor) as served:
        served.wait_ready()
        _, _, body = served.call("GET", "/v1/tasks")
    [task] = body["tasks"]
    assert task["name"] == "suicide-risk" and task["mode"] == "score" and task["calibrated"] and task["moderation"]
    assert task["policy"]["review_band"] == [0.3, 0.6]


# -- mistakes are 4xx naming the field, never a 500 -----------------------------------------------------
@pytest.mark.parametrize("raw, status, field", [
    (b'{"task": "suicide-risk", "posts": [', 422, "body"),
    (b'{"task": "suicide-risk", "posts": 5}', 422, "posts"),
    (b'{"task": "suicide-risk", "posts": []}', 422, "posts"),
    (b'{"task": "suicide-risk", "posts": [{"id": "a"}]}', 422, "posts[0].text"),
    (b'{"task": "depression", "posts": ["x"]}', 422, "task"),
    (b'{"task": "suicide-risk", "posts": ["  "]}', 422, "posts[0]"),
    (b'{"task": "suicide-risk", "posts": [{"id": "a", "text": "x"}, {"id": "a", "text": "y"}]}', 422, "posts[1].id"),
    (b'{"task": "suicide-risk", "posts": ["x"], "colour": 1}', 422, "colour"),
    ('{"task": "suicide-risk", "posts": ["一二三四五六七八九十一"]}'.encode(), 422, "posts[0]"),
    (b'{"task": "suicide-risk", "posts": ["a", "b", "c", "d"]}', 422, "posts"),
    (b'[1, 2]', 422, "body"),
])
def test_bad_requests_name_the_field(floor, raw, status, field):
    with serve(floor, max_posts=3, max_chars=10) as served:
        served.wait_ready()
        got, _, body = served.call("POST", "/v1/analyze", raw=raw)
    assert got == status, body
    assert body["error"]["param"] == field and body["error"]["message"].startswith(f"field '{field}'")


def test_long_posts_are_cut_with_truncate(floor):
    with serve(floor, max_chars=10, truncate=True) as served:
        served.wait_ready()
        status, _, body = served.call("POST", "/v1/analyze", {"task": "suicide-risk", "posts": [HIGH + HIGH]})
    assert status == 200 and len(body["predictions"]) == 1


def test_bodies_over_the_cap_are_413_with_or_without_a_length(floor):
    big = json.dumps({"task": "suicide-risk", "posts": ["好" * 3000]}).encode()
    with serve(floor, max_body_bytes=2000) as served:
        served.wait_ready()
        status, _, body = served.call("POST", "/v1/analyze", raw=big)
        assert status == 413 and body["error"]["type"] == "request_too_large"
        connection = http.client.HTTPConnection("127.0.0.1", served.port, timeout=30)
        connection.putrequest("POST", "/v1/analyze")
        connection.putheader("Content-Type", "application/json")
        connection.putheader("Transfer-Encoding", "chunked")
        connection.endheaders()
        for start in range(0, len(big), 500):
            piece = big[start:start + 500]
            connection.send(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
        connection.send(b"0\r\n\r\n")
        response = connection.getresponse()
        assert response.status == 413
        connection.close()


# -- safety: keys, binding, logs, audit -------------------------------------------------------------------
def test_an_api_key_is_required_everywhere_but_health(floor):
    with serve(floor, api_key="s3cret") as served:
        served.wait_ready()
        assert served.call("GET", "/health")[0] == 200
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic s3cret"}):
            status, got, body = served.call("POST", "/v1/analyze", {"task": "suicide-risk", "posts": [LOW]}, headers)
            assert status == 401 and got["www-authenticate"] == "Bearer" and "s3cret" not in json.dumps(body)
            assert served.call("GET", "/metrics", headers=headers)[0] == 401
        ok = served.call("POST", "/v1/analyze", {"task": "suicide-risk", "posts": [LOW]},
                         {"Authorization": "Bearer s3cret"})
    assert ok[0] == 200


def test_binding_beyond_loopback_needs_a_key(monkeypatch):
    from mentalglm.cli.serve import api_key

    assert api_key("127.0.0.1", None, False) is None and api_key("::1", None, False) is None
    with pytest.raises(MentalGLMError, match="--host 0.0.0.0 would expose the service.*--api-key-env"):
        api_key("0.0.0.0", None, False)
    assert api_key("0.0.0.0", None, True) is None
    monkeypatch.setenv("SERVE_KEY", "k")
    assert api_key("0.0.0.0", "SERVE_KEY", False) == "k"
    monkeypatch.setenv("SERVE_KEY", "")
    with pytest.raises(MentalGLMError, match="SERVE_KEY: the environment variable is empty"):
        api_key("0.0.0.0", "SERVE_KEY", False)


def test_no_post_text_in_the_logs_and_the_audit_log_only_if_asked(floor, tmp_path, caplog):
    caplog.set_level(logging.INFO)
    audit = AuditLog(tmp_path / "audit.jsonl", with_text=False)
    with serve(floor, audit=audit) as served:
        served.wait_ready()
        served.call("POST", "/v1/analyze", {"task": "suicide-risk", "posts": [{"id": "p1", "text": HIGH}]})
        served.call("POST", "/v1/moderations", {"input": LOW})
    assert HIGH not in caplog.text and LOW not in caplog.text
    rows = [json.loads(line) for line in (tmp_path / "audit.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [(r["route"], r["id"]) for r in rows] == [("/v1/analyze", "p1"), ("/v1/moderations", "1")]
    assert all("text" not in r and len(r["model_sha256"]) == 64 for r in rows)
    with_text = AuditLog(tmp_path / "with-text.jsonl", with_text=True)
    with serve(floor, audit=with_text) as served:
        served.wait_ready()
        served.call("POST", "/v1/moderations", {"input": LOW})
    assert json.loads((tmp_path / "with-text.jsonl").read_text(encoding="utf-8"))["text"] == LOW


def test_settings_that_cannot_serve_are_refused_before_loading(floor):
    with pytest.raises(MentalGLMError, match="calibrated probabilities of suicide-risk.*--raw-scores.*--no-moderation"):
        serve(floor, calibrations={}, start=False)
    with pytest.raises(MentalGLMError, match="the answer constraint is off"):
        Engine(ServeSettings(tasks=["depression"], backend="llamacpp", model="m.gguf",
                             options={"constrained": False}), Metrics())
    with pytest.raises(MentalGLMError, match="task 'depression' is not served"):
        serve(floor, calibrations={"depression": "c.json"}, start=False)


def test_raw_scores_report_uncalibrated_probabilities(floor):
    with serve(floor, calibrations={}, raw_scores=True) as served:
        served.wait_ready()
        status, _, body = served.call("POST", "/v1/moderations", {"input": [HIGH]})
    [result] = body["results"]
    assert status == 200 and 0.0 < result["category_scores"]["self-harm"] < 1.0
    assert result["mentalglm"]["probabilities"] is None and result["mentalglm"]["decision"] in ("block", "pass")


# -- many clients -------------------------------------------------------------------------------------------
def test_sixteen_clients_are_decoded_in_one_backend_call(floor):
    # the batch goes as soon as 16 posts are in, and only then
    with serve(floor, max_batch=16, batch_wait=60.0, batch_quiet=60.0) as served:
        served.wait_ready()
        texts = [f"{HIGH}{i}" if i % 2 else f"{LOW}{i}" for i in range(16)]
        with ThreadPoolExecutor(16) as pool:
            answers = list(pool.map(lambda t: served.call("POST", "/v1/analyze",
                                                          {"task": "suicide-risk", "posts": [t]}), texts))
        metrics = served.metrics.render()
    assert all(status == 200 for status, _, _ in answers)
    assert 'mentalglm_batch_size_bucket{le="8"} 0' in metrics and 'mentalglm_batch_size_bucket{le="16"} 1' in metrics
    assert "mentalglm_batch_size_count 1" in metrics


def test_a_full_queue_is_429_and_a_gone_client_frees_its_place(floor):
    with serve(floor, queue_size=2, max_batch=1, batch_wait=0.0) as served:
        served.wait_ready()
        entered, release = gate(served.engine)
        with ThreadPoolExecutor(4) as pool:
            first = pool.submit(served.call, "POST", "/v1/analyze", {"task": "suicide-risk", "posts": [LOW]})
            assert entered.wait(30)  # the decoding thread holds the first post; the queue is empty
            # a client that gives up while queued: its place is freed when the server notices
            gone = socket_post(served.port, {"task": "suicide-risk", "posts": [HIGH, LOW]})
            wait_for(lambda: served.engine._queued_posts == 2)
            status, headers, body = served.call("POST", "/v1/analyze", {"task": "suicide-risk", "posts": [LOW]})
            assert (status, headers["retry-after"], body["error"]["type"]) == (429, "1", "rate_limit_exceeded")
            gone.close()
            wait_for(lambda: served.engine._queued_posts == 0)
            second = pool.submit(served.call, "POST", "/v1/analyze", {"task": "suicide-risk", "posts": [HIGH, LOW]})
            release.set()
            assert first.result(60)[0] == 200 and second.result(60)[0] == 200
        text = served.metrics.render()
    assert 'mentalglm_requests_total{route="/v1/analyze",status="429"} 1' in text
    assert 'mentalglm_posts_total{task="suicide-risk"} 3' in text  # the gone client's posts were never analysed


def socket_post(port: int, body: dict):
    """Send a request and keep the connection open without reading the answer (close it to go away)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    connection.request("POST", "/v1/analyze", json.dumps(body).encode(), {"Content-Type": "application/json"})
    return connection


def wait_for(condition, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.02)


def test_metrics_parse_with_prometheus_client(floor):
    parser = pytest.importorskip("prometheus_client.parser")
    with serve(floor) as served:
        served.wait_ready()
        served.call("POST", "/v1/analyze", {"task": "suicide-risk", "posts": [HIGH, LOW]})
        served.call("POST", "/v1/analyze", {"task": "nope", "posts": [LOW]})
        status, headers, text = served.call("GET", "/metrics")
    assert status == 200 and headers["content-type"].startswith("text/plain; version=0.0.4")
    families = {f.name: f for f in parser.text_string_to_metric_families(text)}
    requests = {(s.labels["route"], s.labels["status"]): s.value for s in families["mentalglm_requests"].samples}
    assert requests[("/v1/analyze", "200")] == 1 and requests[("/v1/analyze", "422")] == 1
    posts = {s.labels["task"]: s.value for s in families["mentalglm_posts"].samples}
    assert posts == {"suicide-risk": 2}
    latency = [s for s in families["mentalglm_request_seconds"].samples
               if s.name.endswith("_count") and s.labels["route"] == "/v1/analyze"]
    assert latency[0].value == 2
    assert families["mentalglm_queue_depth"].samples[0].value == 0


def test_cli_refuses_settings_it_could_not_honour_before_loading(tmp_path):
    from conftest import run_cli

    too_big = run_cli("serve", "--task", "suicide-risk", "--backend", "baseline", "--model", str(tmp_path),
                      "--max-posts", "64", "--queue-size", "16")
    assert too_big.returncode == 1 and "--max-posts 64 is more than --queue-size 16" in too_big.stderr
    unwritable = run_cli("serve", "--task", "suicide-risk", "--backend", "baseline", "--model", str(tmp_path),
                         "--audit-log", str(tmp_path / "no" / "such" / "audit.jsonl"))
    assert unwritable.returncode == 1 and "--audit-log" in unwritable.stderr and "cannot write it" in unwritable.stderr
