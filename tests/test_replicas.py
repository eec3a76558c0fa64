"""Replicas of the openai backend: least-busy choice and cool-down on a fake clock, fail-over with a fake client,
two real llama_cpp.server processes, one killed between batches, and a replica killed or gone silent with a
request in flight (``holding_proxy.py`` in front of a real server)."""

from __future__ import annotations

import json
import signal
import threading

import pytest

from conftest import llama_server_process
from mentalglm.backends.openai_http import HTTPStatusError, Retryable
from mentalglm.backends.replicas import ReplicaPool, describe_counts
from mentalglm.core.errors import MentalGLMError
from mentalglm.core.hookspecs import hookimpl

A, B, C = "http://a/v1", "http://b/v1", "http://c/v1"


class Clock:
    """A clock the test moves by hand."""

    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


@pytest.fixture
def clock():
    return Clock()


def pool(clock, *urls, cooldown=30.0):
    return ReplicaPool(urls or (A, B), cooldown=cooldown, clock=clock)


# -- choosing a replica ------------------------------------------------------------------------
def test_least_busy_then_fewest_sent_then_the_order_given(clock):
    p = pool(clock, A, B, C)
    first, second, third = p.acquire(), p.acquire(), p.acquire()
    assert [r.url for r in (first, second, third)] == [A, B, C]
    assert p.acquire().url == A  # all one in flight: A has the fewest sent of the first in order
    p.release(second, healthy=True)
    assert p.acquire().url == B  # the least busy, though it has been sent as many as C
    p.release(first, healthy=True)
    p.release(third, healthy=True)
    assert p.acquire().url == C  # the only one with nothing in flight


def test_avoid_prefers_other_replicas_but_not_at_any_price(clock):
    p = pool(clock)
    assert p.acquire(avoid=[A]).url == B
    assert p.acquire(avoid=[A, B]).url == A  # nothing else: the least busy after all


# -- cool-down ----------------------------------------------------------------------------------
def test_a_failed_replica_is_out_for_the_cooldown_then_probed_once(clock):
    p = pool(clock)
    a = p.acquire()
    p.release(a, healthy=False)
    assert p.counts()[A] == {"requests": 1, "failures": 1, "taken_out": 1, "in_service": False}
    assert [p.acquire().url for _ in range(3)] == [B, B, B]  # busier, but the only one in service
    clock.now += 29.9
    assert p.acquire().url == B
    clock.now += 0.1  # the cool-down is over: one request probes A
    probe = p.acquire()
    assert probe.url == A and probe.probing
    assert p.acquire().url == B  # not a second probe while the first is in flight
    p.release(probe, healthy=False)  # still down: out again
    assert p.counts()[A]["taken_out"] == 2 and not p.in_service(avoid=[B])
    clock.now += 30
    probe = p.acquire()
    assert probe.url == A
    p.release(probe, healthy=True)  # back
    assert p.counts()[A] == {"requests": 3, "failures": 2, "taken_out": 2, "in_service": True}
    assert p.in_service(avoid=[B])


def test_concurrent_failures_take_a_replica_out_once(clock):
    p = pool(clock)
    tries = [p.acquire(avoid=[B]) for _ in range(3)]
    for replica in tries:
        p.release(replica, healthy=False)
    assert p.counts()[A] == {"requests": 3, "failures": 3, "taken_out": 1, "in_service": False}


def test_retry_after_longer_than_the_cooldown_wins(clock):
    p = pool(clock, cooldown=5)
    p.release(p.acquire(), healthy=False, retry_after=60)
    clock.now += 30
    assert p.acquire().url == B and not p.in_service(avoid=[B])
    clock.now += 30
    assert p.in_service(avoid=[B])


def test_when_all_are_out_the_one_back_soonest_is_tried(clock):
    p = pool(clock)
    p.release(p.acquire(), healthy=False)  # A out until 130
    clock.now += 10
    p.release(p.acquire(), healthy=False)  # B out until 140
    assert not p.in_service()
    assert p.acquire().url == A


def test_one_replica_is_always_tried(clock):
    p = pool(clock, A)
    p.release(p.acquire(), healthy=False)
    assert p.acquire().url == A


# -- sending with fail-over -----------------------------------------------------------------------
class FakeClient:
    """``try_once`` answers per URL: an exception to raise or a value to return; records every try."""

    def __init__(self, **answers):
        self.answers = {f"http://{name}/v1/completions": value for name, value in answers.items()}
        self.tries, self.delays = [], []

    def try_once(self, url, payload=None, *, prompt=""):
        self.tries.append(url)
        answer = self.answers[url]
        if isinstance(answer, BaseException):
            raise answer
        return answer

    def delay(self, attempt, retry_after):
        self.delays.append(attempt)
        return 0.0


def test_a_failing_replica_is_retried_on_another_at_once(clock):
    p = pool(clock)
    client = FakeClient(a=Retryable("cannot connect (refused)"), b={"ok": 1})
    assert p.send(client, "/completions", {}, tries=3) == (B, {"ok": 1})
    assert client.tries == [f"{A}/completions", f"{B}/completions"] and client.delays == []  # no waiting
    assert p.send(client, "/completions", {}, tries=3) == (B, {"ok": 1})  # A is out now: straight to B
    assert len(client.tries) == 3
    assert p.counts() == {A: {"requests": 1, "failures": 1, "taken_out": 1, "in_service": False},
                          B: {"requests": 2, "failures": 0, "taken_out": 0, "in_service": True}}


def test_all_failing_gives_up_after_the_tries_naming_the_last(clock):
    p = pool(clock)
    client = FakeClient(a=Retryable("HTTP 503: busy"), b=Retryable("no answer within 1 s"))
    with pytest.raises(MentalGLMError) as info:
        p.send(client, "/completions", {}, tries=4)
    assert len(client.tries) == 4 and client.delays == [1, 2]  # waited only once both were out
    assert str(info.value).endswith("(gave up after 4 tries on 2 replicas)")


def test_the_requests_own_fault_is_not_retried(clock):
    p = pool(clock)
    client = FakeClient(a=HTTPStatusError("openai backend: http://a/v1/completions: HTTP 400: bad", 400), b={})
    with pytest.raises(HTTPStatusError):
        p.send(client, "/completions", {}, tries=5)
    assert client.tries == [f"{A}/completions"]
    assert p.counts()[A] == {"requests": 1, "failures": 0, "taken_out": 0, "in_service": True}


def test_describe_counts():
    assert describe_counts({A: {"requests": 3, "failures": 1, "taken_out": 1, "in_service": False}}) == (
        "http://a/v1: 3 requests, 1 failed, taken out 1× (out now)")


# -- two real llama.cpp servers, one killed mid-run ----------------------------------------------
POSTS = ["我考砸了，大家一定都觉得我是个废物。", "好累啊啊啊啊啊啊啊啊，好累好累好累", "今天和朋友去爬山，风景很好。",
         "晚上总是睡不着，脑子里停不下来。", "工作顺利，周末去看了电影。", "不想见任何人，也不想说话。"]


class KillAfter:
    """Kills a server (SIGKILL) once ``n`` predictions are on disk: the run is mid-way, the next batch not sent."""

    def __init__(self, process, n):
        self.process, self.n, self.seen = process, n, 0

    @hookimpl
    def on_prediction(self, prediction, task):
        self.seen += 1
        if self.seen == self.n:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=10)


def test_two_servers_one_killed_mid_run_every_id_once_and_the_answers_of_one_server(exported, pm, tmp_path):
    from mentalglm import Analyzer
    from mentalglm.core.prediction import Post

    model = exported("glm", "f32")
    posts = [Post(id=f"p{i:02d}", text=f"{POSTS[i % len(POSTS)]}（{i}）") for i in range(16)]
    options = {"max_new_tokens": 16, "concurrency": 4, "replica_cooldown": 600}
    with llama_server_process(model, tmp_path, n_threads=1) as (a_url, _), \
            llama_server_process(model, tmp_path, n_threads=1) as (b_url, b_process):
        with Analyzer(task="depression", backend="openai", model="m", options={**options, "base_url": a_url},
                      batch_size=4, plugins=pm) as single:
            single.run(posts, tmp_path / "single.jsonl")
        pm.register(KillAfter(b_process, 6), name="killer")
        with Analyzer(task="depression", backend="openai", model="m", batch_size=4, plugins=pm,
                      options={**options, "base_url": f"{a_url},{b_url}"}) as replicated:
            summary = replicated.run(posts, tmp_path / "two.jsonl")
    assert b_process.returncode == -signal.SIGKILL
    one = [json.loads(line) for line in (tmp_path / "single.jsonl").read_text(encoding="utf-8").splitlines()]
    two = [json.loads(line) for line in (tmp_path / "two.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [p["id"] for p in two] == [p.id for p in posts]  # every id exactly once, in order
    assert [p["output"] for p in two] == [p["output"] for p in one]  # greedy: the answers of one server
    assert all(p["valid"] for p in two)
    counts = summary.backend_stats["replicas"]
    assert counts[b_url]["requests"] >= 2 and counts[b_url]["failures"] >= 1  # it shared the load, then failed
    assert counts[b_url]["taken_out"] == 1 and not counts[b_url]["in_service"]
    answered_by_b = counts[b_url]["requests"] - counts[b_url]["failures"]
    assert counts[a_url] == {"requests": 16 - answered_by_b, "failures": 0, "taken_out": 0, "in_service": True}


# -- a replica that dies or goes silent with a request in flight -------------------------------------------------
@pytest.mark.parametrize("failure", ["killed", "silent"])
def test_a_request_in_flight_when_its_replica_dies_or_goes_silent_is_answered_once_elsewhere(
        failure, exported, tmp_path):
    """The 4th completion through replica P (after its canary and two answers) reaches the real server, and then
    P is SIGKILLed (the client's connection dies mid-answer) or never answers (the client's timeout fires):
    that post is answered once, by the other replica, with the answer a single server gives."""
    import subprocess
    import sys
    from pathlib import Path
    from urllib.parse import urlsplit

    from mentalglm import Analyzer
    from mentalglm.core.prediction import Post

    posts = [Post(id=f"p{i:02d}", text=f"{POSTS[i % len(POSTS)]}（{i}）") for i in range(12)]
    options = {"max_new_tokens": 16, "concurrency": 2, "replica_cooldown": 600, "backoff": 0}
    # Only the silent replica needs the client's timeout to fire; it applies to the healthy one too, so it is
    # 10 s there (a 16-token answer of this model takes well under a second) and the default elsewhere.
    held = {**options, "timeout": 10} if failure == "silent" else options
    proxy_script = Path(__file__).with_name("holding_proxy.py")
    with llama_server_process(exported("glm", "f32"), tmp_path, n_threads=1) as (a_url, _):
        with Analyzer(task="depression", backend="openai", model="m", options={**options, "base_url": a_url},
                      batch_size=4) as single:
            single.run(posts, tmp_path / "single.jsonl")
        proxy = subprocess.Popen([sys.executable, str(proxy_script), str(urlsplit(a_url).port), "4"],
                                 stdout=subprocess.PIPE, text=True)
        try:
            p_url = f"http://127.0.0.1:{proxy.stdout.readline().split()[1]}/v1"
            if failure == "killed":
                def kill_while_holding():
                    if proxy.stdout.readline().strip() == "HOLDING":
                        proxy.kill()
                killer = threading.Thread(target=kill_while_holding, daemon=True)
                killer.start()
            with Analyzer(task="depression", backend="openai", model="m", batch_size=4,
                          options={**held, "base_url": f"{p_url},{a_url}"}) as replicated:
                summary = replicated.run(posts, tmp_path / "two.jsonl")
        finally:
            proxy.kill()
            proxy.wait(timeout=10)
            proxy.stdout.close()
    one = [json.loads(line) for line in (tmp_path / "single.jsonl").read_text(encoding="utf-8").splitlines()]
    two = [json.loads(line) for line in (tmp_path / "two.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [p["id"] for p in two] == [p.id for p in posts]  # every id exactly once, in order
    assert [p["output"] for p in two] == [p["output"] for p in one] and all(p["valid"] for p in two)
    counts = summary.backend_stats["replicas"]
    assert counts[p_url]["failures"] >= 1 and counts[p_url]["taken_out"] == 1 and not counts[p_url]["in_service"]
    answered_by_p = counts[p_url]["requests"] - counts[p_url]["failures"]
    assert answered_by_p == 2  # the two before the held one; then P was out for the cool-down
    assert counts[a_url] == {"requests": len(posts) - answered_by_p, "failures": 0, "taken_out": 0,
                             "in_service": True}
