"""The openai backend against a fake OpenAI server (HTTP behaviour) and a real llama-cpp-python server."""

from __future__ import annotations

import json
import logging
import random
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from conftest import free_port
from mentalglm.backends.openai_backend import OpenAIBackend, _retry_after
from mentalglm.core.backend import GenerationRequest
from mentalglm.core.errors import MentalGLMError, OptionsError

POST = "我最近总是失眠，什么都不想做，活着好累"
KEY = "sk-test-SECRET-4242"


# -- a fake OpenAI server -------------------------------------------------------------------
@dataclass
class Reply:
    status: int = 200
    body: object = None          # dict → JSON; str → sent as is
    headers: dict = field(default_factory=dict)
    delay: float = 0.0           # seconds before answering (cut short when the fixture ends)


class FakeOpenAI:
    """``POST /v1/completions`` answered by ``self.reply(body, n)``; every request is recorded."""

    def __init__(self):
        self.requests: list[tuple[dict, dict]] = []  # (headers, body)
        self.lock = threading.Lock()
        self.in_flight = self.max_in_flight = 0
        self.reply = self.echo
        self.done = threading.Event()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_POST(self):
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                body = json.loads(raw.decode("utf-8"))
                with fake.lock:
                    fake.requests.append(({k.lower(): v for k, v in self.headers.items()}, body))
                    n = len(fake.requests)
                    fake.in_flight += 1
                    fake.max_in_flight = max(fake.max_in_flight, fake.in_flight)
                try:
                    reply = fake.reply(body, n)
                    if reply.delay:
                        fake.done.wait(reply.delay)
                    data = reply.body if isinstance(reply.body, str) else json.dumps(reply.body, ensure_ascii=False)
                    data = data.encode("utf-8")
                    self.send_response(reply.status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    for key, value in reply.headers.items():
                        self.send_header(key, value)
                    self.end_headers()
                    self.wfile.write(data)
                except OSError:
                    pass  # the client gave up (timeout test)
                finally:
                    with fake.lock:
                        fake.in_flight -= 1

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.server.handle_error = lambda request, address: None
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    @staticmethod
    def echo(body, n):
        return Reply(body={"choices": [{"text": "echo:" + body["prompt"], "finish_reason": "stop"}],
                           "usage": {"prompt_tokens": len(body["prompt"]), "completion_tokens": 3, "total_tokens": 0}})

    @property
    def bodies(self) -> list[dict]:
        return [body for _, body in self.requests]


@pytest.fixture
def fake():
    server = FakeOpenAI()
    server.thread.start()
    yield server
    server.done.set()
    server.server.shutdown()
    server.server.server_close()
    server.thread.join(timeout=5)


def backend(url, **options):
    return OpenAIBackend("tiny-glm", {"base_url": url, "backoff": 0.01, **options})


def request(i=0, **kwargs):
    return GenerationRequest(id=str(i), prompt=f"[gMASK]<sop><|user|>\n{POST} #{i}<|assistant|>\n", **kwargs)


# -- requests and answers -------------------------------------------------------------------
def test_body_and_parsed_completion(fake):
    fake.reply = lambda body, n: Reply(body={"choices": [{"text": "标签：抑郁", "finish_reason": "length"}],
                                             "usage": {"prompt_tokens": 12, "completion_tokens": 5,
                                                       "total_tokens": 17}})
    b = backend(fake.url, max_new_tokens=32, seed=7, top_p=0.9, extra_body='{"top_k": 1}')
    req = request(1, stop=("<|user|>", "<|endoftext|>"), max_new_tokens=8)
    [completion] = b.generate([req])
    assert (completion.id, completion.text, completion.finish_reason) == ("1", "标签：抑郁", "length")
    assert completion.usage == {"prompt_tokens": 12, "completion_tokens": 5}
    headers, body = fake.requests[0]
    assert body == {"model": "tiny-glm", "prompt": req.prompt, "max_tokens": 8, "temperature": 0.0, "top_p": 0.9,
                    "seed": 7, "stop": ["<|user|>", "<|endoftext|>"], "repeat_penalty": 1.0, "top_k": 1}
    assert headers["content-type"] == "application/json"
    b.generate([request(2)])
    assert fake.bodies[1]["max_tokens"] == 32 and fake.bodies[1]["stop"] == []
    backend(fake.url, repeat_penalty="none").generate([request(3)])
    assert "repeat_penalty" not in fake.bodies[2]


def test_order_is_kept_with_concurrency(fake):
    rng = random.Random(0)
    delays = [rng.uniform(0.0, 0.08) for _ in range(16)]

    def reply(body, n):
        index = int(body["prompt"].rsplit("#", 1)[1].split("<")[0])
        return Reply(body=FakeOpenAI.echo(body, n).body, delay=delays[index])

    fake.reply = reply
    requests = [request(i) for i in range(16)]
    completions = backend(fake.url, concurrency=4).generate(requests)
    assert [c.id for c in completions] == [r.id for r in requests]
    assert [c.text for c in completions] == ["echo:" + r.prompt for r in requests]
    assert 1 < fake.max_in_flight <= 4


def test_429_is_retried_and_retry_after_honoured(fake):
    fake.reply = lambda body, n: (Reply(429, {"error": {"message": "slow down"}}, {"Retry-After": "0"}) if n == 1
                                  else FakeOpenAI.echo(body, n))
    start = time.monotonic()
    [completion] = OpenAIBackend("m", {"base_url": fake.url, "backoff": 20.0}).generate([request()])
    assert time.monotonic() - start < 5  # the backoff would have waited 10-20 s
    assert completion.text.startswith("echo:")
    assert len(fake.requests) == 2


@pytest.mark.parametrize("status", [500, 502, 503, 504])
def test_server_errors_give_up_after_max_retries(fake, status):
    fake.reply = lambda body, n: Reply(status, {"error": {"message": "boom\nsecond line"}})
    with pytest.raises(MentalGLMError) as info:
        backend(fake.url, max_retries=2).generate([request()])
    message = str(info.value)
    assert "\n" not in message
    assert f"HTTP {status}: boom second line" in message and "3 tries" in message
    assert len(fake.requests) == 3


def test_client_error_is_one_line_with_the_server_message_and_without_the_prompt(fake):
    fake.reply = lambda body, n: Reply(400, {"error": {"message": f"prompt is too long: {body['prompt']!r}",
                                                       "type": "invalid_request_error"}})
    with pytest.raises(MentalGLMError) as info:
        backend(fake.url).generate([request()])
    message = str(info.value)
    assert "\n" not in message
    assert "HTTP 400: prompt is too long" in message
    assert POST not in message and "失眠" not in message and "gMASK" not in message
    assert len(fake.requests) == 1  # not retried


def test_validation_error_detail_drops_the_input(fake):
    fake.reply = lambda body, n: Reply(422, {"detail": [{"loc": ["body", "max_tokens"], "msg": "must be >= 0",
                                                         "input": body["prompt"]}]})
    with pytest.raises(MentalGLMError, match=r"HTTP 422: body\.max_tokens: must be >= 0$") as info:
        backend(fake.url).generate([request()])
    assert POST not in str(info.value)


def test_plain_text_error_body(fake):
    fake.reply = lambda body, n: Reply(404, "Not Found")
    with pytest.raises(MentalGLMError, match=r"/v1/completions: HTTP 404: Not Found$"):
        backend(fake.url).generate([request()])


def test_timeout_is_retried_then_fails(fake):
    fake.reply = lambda body, n: Reply(body=FakeOpenAI.echo(body, n).body, delay=5.0)
    start = time.monotonic()
    with pytest.raises(MentalGLMError, match=r"no answer within 0\.2 s \(gave up after 2 tries\)"):
        backend(fake.url, timeout=0.2, max_retries=1).generate([request()])
    assert time.monotonic() - start < 3
    assert len(fake.requests) == 2


def test_connection_refused_is_retried_then_fails():
    url = f"http://127.0.0.1:{free_port()}/v1"
    with pytest.raises(MentalGLMError, match=r"cannot connect .*gave up after 3 tries"):
        backend(url, max_retries=2).generate([request()])


def test_a_failure_abandons_the_rest_of_the_batch(fake):
    def reply(body, n):
        if "#0<" in body["prompt"]:
            return Reply(400, {"error": {"message": "bad request"}})
        return Reply(503, {"error": {"message": "busy"}})

    fake.reply = reply
    start = time.monotonic()
    with pytest.raises(MentalGLMError, match="HTTP 400: bad request"):
        OpenAIBackend("m", {"base_url": fake.url, "backoff": 2.0, "max_retries": 5}).generate(
            [request(i) for i in range(4)])
    assert time.monotonic() - start < 5  # the 503s stopped retrying


def test_malformed_answers(fake):
    fake.reply = lambda body, n: Reply(body="<html>hello</html>")
    with pytest.raises(MentalGLMError, match="not JSON"):
        backend(fake.url).generate([request()])
    fake.reply = lambda body, n: Reply(body={"choices": []})
    with pytest.raises(MentalGLMError, match=r"no choices\[0\]\.text"):
        backend(fake.url).generate([request()])


def test_redirects_are_not_followed(fake):
    fake.reply = lambda body, n: Reply(307, "", {"Location": "http://127.0.0.1:1/elsewhere"})
    with pytest.raises(MentalGLMError, match="HTTP 307.*redirects are not followed"):
        backend(fake.url).generate([request()])
    assert len(fake.requests) == 1


def test_environment_proxy_is_ignored_unless_trusted(fake, monkeypatch):
    dead = f"http://127.0.0.1:{free_port()}"
    for name in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY"):
        monkeypatch.setenv(name, dead)
    for name in ("no_proxy", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
    assert backend(fake.url).generate([request()])[0].text.startswith("echo:")
    with pytest.raises(MentalGLMError, match="cannot connect"):
        backend(fake.url, trust_env_proxy=True, max_retries=0).generate([request()])
    assert len(fake.requests) == 1


# -- the API key ----------------------------------------------------------------------------
def test_api_key_comes_from_the_named_variable_and_is_never_shown(fake, monkeypatch, caplog):
    monkeypatch.setenv("MENTALGLM_TEST_KEY", KEY)
    b = backend(fake.url, api_key_env="MENTALGLM_TEST_KEY", max_retries=1)
    b.generate([request()])
    assert fake.requests[0][0]["authorization"] == f"Bearer {KEY}"
    fake.reply = lambda body, n: Reply(503 if n == 2 else 401, {"error": {"message": f"Incorrect API key: {KEY}"}})
    with caplog.at_level(logging.DEBUG), pytest.raises(MentalGLMError) as info:
        b.generate([request()])
    assert "HTTP 401: Incorrect API key: ***" in str(info.value)
    shown = " ".join([str(info.value), repr(info.value), repr(b), repr(b.options), json.dumps(b.describe()),
                      caplog.text])
    assert KEY not in shown
    assert "503" in caplog.text  # the retry was logged, without the key


def test_no_key_no_authorization_header(fake, monkeypatch):
    monkeypatch.delenv("MENTALGLM_TEST_KEY", raising=False)
    backend(fake.url, api_key_env="MENTALGLM_TEST_KEY").generate([request()])
    monkeypatch.setenv("MENTALGLM_TEST_KEY", "")
    backend(fake.url, api_key_env="MENTALGLM_TEST_KEY").generate([request()])
    assert all("authorization" not in headers for headers, _ in fake.requests)


# -- grammar --------------------------------------------------------------------------------
def test_grammar_field_carries_the_gbnf(fake, tasks):
    fmt = tasks["cognitive-distortion"].response_format()
    backend(fake.url, grammar_field="grammar").generate([request(0, response_format=fmt), request(1)])
    backend(fake.url).generate([request(2, response_format=fmt)])
    bodies = {body["prompt"]: body for body in fake.bodies}  # arrival order is not request order
    assert bodies[request(0).prompt]["grammar"] == fmt.gbnf()
    assert "grammar" not in bodies[request(1).prompt]
    assert "grammar" not in bodies[request(2).prompt]


# -- options ----------------------------------------------------------------------------------
@pytest.mark.parametrize("url", ["ftp://example.com/v1", "file:///etc/passwd", "127.0.0.1:8000/v1", "http://", "",
                                 "http://host:99999/v1"])
def test_base_url_must_be_http(url):
    with pytest.raises(OptionsError) as info:
        OpenAIBackend("m", {"base_url": url})
    assert "\n" not in str(info.value) and "http:// or https://" in str(info.value)


def test_credentials_in_base_url_are_refused_without_echoing_them():
    with pytest.raises(OptionsError) as info:
        OpenAIBackend("m", {"base_url": "https://user:hunter2@example.com/v1"})
    assert "hunter2" not in str(info.value)


@pytest.mark.parametrize("options, message", [
    ({"concurrency": "0"}, "concurrency"),
    ({"api_key": "x"}, "no option 'api_key'"),
    ({"extra_body": '{"prompt": "x"}'}, "may not set prompt"),
    ({"extra_body": "{oops"}, "not a JSON object"),
])
def test_bad_options(options, message):
    with pytest.raises(OptionsError, match=message):
        OpenAIBackend("m", options)


def test_needs_a_model_name_and_is_registered(pm):
    with pytest.raises(OptionsError, match="needs a model"):
        OpenAIBackend(None)
    cls = pm.backend_class("openai")
    assert cls is OpenAIBackend and cls.redacts_by_default and cls.capabilities == frozenset({"generate"})
    with pytest.raises(NotImplementedError):
        OpenAIBackend("m").score_labels("x", ["a"])


def test_retry_after_header():
    assert _retry_after("0") == 0 and _retry_after("2.5") == 2.5 and _retry_after(None) is None
    assert _retry_after("soon") is None
    assert _retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0  # a date in the past


def test_analyzer_redacts_before_sending(fake, pm):
    from mentalglm import Analyzer

    fake.reply = lambda body, n: Reply(body={"choices": [{"text": "标签：抑郁\n解释：长期失眠。",
                                                          "finish_reason": "stop"}]})
    text = "电话13812345678，@小明 我最近总是失眠"
    with Analyzer(task="depression", backend="openai", model="m", options={"base_url": fake.url}, plugins=pm) as a:
        prediction = a.analyze(text)
    assert prediction.labels == ["抑郁"]
    assert "13812345678" not in fake.bodies[0]["prompt"] and "小明" not in fake.bodies[0]["prompt"]
    assert "电话[PHONE]，[@USER] 我最近总是失眠" in fake.bodies[0]["prompt"]
    with Analyzer(task="depression", backend="openai", model="m", options={"base_url": fake.url}, plugins=pm,
                  redact=False) as a:
        a.analyze(text)
    assert text in fake.bodies[1]["prompt"]


# -- a real server: llama-cpp-python's OpenAI-compatible server on a tiny GLM GGUF ----------------
POSTS = ["我考砸了，大家一定都觉得我是个废物。", "好累啊啊啊啊啊啊啊啊，好累好累好累", "今天和朋友去爬山，风景很好。"]


@pytest.fixture(scope="module")
def in_process(llama_server):
    from mentalglm.backends.llamacpp_native import open_llama

    return open_llama(llama_server[1], n_ctx=512)


def _prompts(pm, task_name):
    task, style = pm.task(task_name), pm.prompt("glm4-chat")
    return task, style, [style.render(task.instruction, post) for post in POSTS]


def test_real_server_greedy_equals_in_process_greedy(llama_server, in_process, pm):
    base_url, _ = llama_server
    _, style, prompts = _prompts(pm, "depression")
    b = OpenAIBackend("tiny-glm", {"base_url": base_url, "max_new_tokens": 16, "concurrency": 2})
    completions = b.generate([GenerationRequest(str(i), p, stop=style.stop) for i, p in enumerate(prompts)])
    for prompt, completion in zip(prompts, completions):
        ids = in_process.tokenize(prompt.encode(), add_bos=False, special=True)
        assert ids[:2] == in_process.tokenize(b"[gMASK]<sop>", add_bos=False, special=True)
        reference = in_process.create_completion(ids, max_tokens=16, temperature=0, stop=list(style.stop))
        choice = reference["choices"][0]
        assert completion.text == choice["text"]
        assert completion.finish_reason == choice["finish_reason"]
        # the server tokenized the prompt string to the same ids: special tokens parsed, no BOS added
        assert completion.usage["prompt_tokens"] == len(ids)
        assert completion.usage["completion_tokens"] == reference["usage"]["completion_tokens"]


def test_real_server_repeat_penalty_default_is_not_greedy(llama_server, in_process, pm):
    """Why the backend sends repeat_penalty=1: without it llama-cpp-python's server penalises repeats (1.1)."""
    base_url, _ = llama_server
    _, style, prompts = _prompts(pm, "depression")
    prompt = prompts[1]
    ids = in_process.tokenize(prompt.encode(), add_bos=False, special=True)
    greedy = in_process.create_completion(ids, max_tokens=64, temperature=0)["choices"][0]["text"]
    request = [GenerationRequest("0", prompt)]
    ours = OpenAIBackend("m", {"base_url": base_url, "max_new_tokens": 64}).generate(request)[0].text
    server_default = OpenAIBackend("m", {"base_url": base_url, "max_new_tokens": 64,
                                         "repeat_penalty": "none"}).generate(request)[0].text
    assert ours == greedy
    assert server_default != greedy, ("llama-cpp-python's server no longer penalises repeats by default; "
                                      "the repeat_penalty option's default and description may be revisited")


def test_real_server_grammar_constrains_the_answer(llama_server, pm):
    base_url, _ = llama_server
    task, style, prompts = _prompts(pm, "cognitive-distortion")
    fmt = task.response_format()
    requests = [GenerationRequest(str(i), p, stop=style.stop, response_format=fmt) for i, p in enumerate(prompts)]
    constrained = OpenAIBackend("m", {"base_url": base_url, "max_new_tokens": 48, "grammar_field": "grammar"})
    for completion in constrained.generate(requests):
        assert fmt.allows(completion.text.encode()), completion.text
        if fmt.in_free_text(completion.text.encode()):
            assert task.parse(completion.text).valid
    free = OpenAIBackend("m", {"base_url": base_url, "max_new_tokens": 48}).generate(requests)
    assert not all(fmt.allows(c.text.encode()) for c in free)  # the tiny model alone does not answer in format
