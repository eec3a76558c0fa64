"""The openai backend against fake OpenAI servers (HTTP, dialects, the canary) and a real llama-cpp-python server."""

from __future__ import annotations

import json
import logging
import random
import threading
import time
from dataclasses import dataclass, field, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from conftest import free_port, run_cli
from mentalglm.backends import server_dialects as dialects
from mentalglm.backends.openai_backend import OpenAIBackend
from mentalglm.backends.openai_http import retry_after
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


#: The GLM-4 stop tokens' ids in the real GLM-4 vocabulary, as a GLM-4 server's /tokenize gives them.
GLM4_IDS = {"<|endoftext|>": 151329, "<|user|>": 151336, "<|observation|>": 151338}
#: What each server shows about itself: the real vLLM 0.32 and llama-cpp-python 0.3.36 answers
#: (queried on loopback), and llama.cpp's llama-server as its source writes them.
SIGNS = {
    "vllm": {
        ("GET", "/version"): {"version": "0.32.0"},
        ("GET", "/v1/models"): {"object": "list", "data": [
            {"id": "tiny-glm", "object": "model", "created": 1, "owned_by": "vllm", "root": "/models/tiny",
             "parent": None, "max_model_len": 512, "permission": []},
            {"id": "mentalglm-lora", "object": "model", "created": 1, "owned_by": "vllm", "root": "/models/lora",
             "parent": "tiny-glm", "max_model_len": None, "permission": []}]},
        ("POST", "/tokenize"): lambda body: {"count": 1, "max_model_len": 512,
                                             "tokens": [GLM4_IDS.get(body["prompt"], 7)], "token_strs": None},
    },
    "llama-server": {
        ("GET", "/v1/models"): {"object": "list", "data": [{"id": "m.gguf", "object": "model", "created": 1,
                                                            "owned_by": "llamacpp", "meta": {}}]},
        ("GET", "/props"): {"build_info": "b6500-abc1234", "default_generation_settings": {}, "total_slots": 1},
    },
    "llama-cpp-python": {
        ("GET", "/v1/models"): {"object": "list", "data": [{"id": "m.gguf", "object": "model", "owned_by": "me",
                                                            "permissions": []}]},
        ("GET", "/openapi.json"): {"openapi": "3.1.0", "info": {"title": "🦙 llama.cpp Python API",
                                                                "version": "0.3.36"}},
    },
}


class FakeOpenAI:
    """``POST /v1/completions`` and ``/v1/chat/completions`` answered by ``self.reply(body, n)``; each is recorded.

    Other endpoints answer from ``self.routes`` (``(method, path)`` → a JSON value, a Reply, or a
    function of the request body); anything else is a 404, as on a server without that endpoint.
    ``act_as(name)`` gives the fake the signs of a real server (see SIGNS).
    """

    def __init__(self):
        self.requests: list[tuple[dict, dict]] = []  # (headers, body) of (chat) completion requests
        self.routes_taken: list[str] = []  # the path of each of them
        self.other: list[tuple[str, str, object]] = []  # (method, path, body) of everything else
        self.routes: dict = {}
        self.lock = threading.Lock()
        self.in_flight = self.max_in_flight = 0
        self.reply = self.echo
        self.done = threading.Event()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_GET(self):
                with fake.lock:
                    fake.other.append(("GET", self.path, None))
                self.answer(fake.route("GET", self.path, None))

            def do_POST(self):
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                body = json.loads(raw.decode("utf-8"))
                if self.path not in ("/v1/completions", "/v1/chat/completions"):
                    with fake.lock:
                        fake.other.append(("POST", self.path, body))
                    self.answer(fake.route("POST", self.path, body))
                    return
                with fake.lock:
                    fake.requests.append(({k.lower(): v for k, v in self.headers.items()}, body))
                    fake.routes_taken.append(self.path)
                    n = len(fake.requests)
                    fake.in_flight += 1
                    fake.max_in_flight = max(fake.max_in_flight, fake.in_flight)
                try:
                    reply = fake.reply(body, n)
                except BaseException:
                    fake.answering()
                    raise
                self.answer(reply, answering=fake.answering)

            def answer(self, reply, answering=None):
                try:
                    if reply.delay:
                        fake.done.wait(reply.delay)
                    if answering is not None:
                        # Counted out before the first byte leaves: once the client has its answer it
                        # may send the next request, which must not find this one still counted.
                        answering()
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

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.server.handle_error = lambda request, address: None
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def answering(self) -> None:
        """One completion request is answered: it no longer counts as in flight."""
        with self.lock:
            self.in_flight -= 1

    def route(self, method, path, body) -> Reply:
        answer = self.routes.get((method, path))
        if answer is None:
            return Reply(404, {"detail": "Not Found"})
        if callable(answer):
            answer = answer(body)
        return answer if isinstance(answer, Reply) else Reply(body=answer)

    def act_as(self, server: str) -> FakeOpenAI:
        self.routes.update(SIGNS[server])
        return self

    @staticmethod
    def echo(body, n):
        return Reply(body={"choices": [{"text": "echo:" + body["prompt"], "finish_reason": "stop"}],
                           "usage": {"prompt_tokens": len(body["prompt"]), "completion_tokens": 3, "total_tokens": 0}})

    @property
    def bodies(self) -> list[dict]:
        return [body for _, body in self.requests]


def answering(text, finish_reason="stop"):
    """A reply function: every completion is ``text``."""
    return lambda body, n: Reply(body={"choices": [{"text": text, "finish_reason": finish_reason}]})


def _serving():
    """A FakeOpenAI on loopback for one test, shut down afterwards."""
    server = FakeOpenAI()
    server.thread.start()
    yield server
    server.done.set()
    server.server.shutdown()
    server.server.server_close()
    server.thread.join(timeout=5)


fake = pytest.fixture(_serving, name="fake")


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
    second = threading.Event()

    def reply(body, n):
        # The first answer waits for a second request to arrive: overlap is shown, not left to timing.
        if n == 1:
            second.wait(30)
        else:
            second.set()
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


# -- dialects -------------------------------------------------------------------------------
def valid_answer(fmt) -> str:
    """A whole answer in ``fmt`` (what a server that enforces its grammar could write)."""
    if fmt.kind == "hierarchical":
        part, subs = fmt.parts[0]
        return fmt.render({"labels": [subs[0]], "summaries": {part: "摘要"}}, "理由。")
    return fmt.render([fmt.labels[0]], "理由。")


def enforcing(*formats):
    """A reply function of a server that enforces the GBNF it is sent (either field): a valid answer of it,
    shaped as the route asks (``message.content`` for a chat request)."""
    answers = {fmt.gbnf(): valid_answer(fmt) for fmt in (dialects.CANARY_FORMAT, *formats)}

    def reply(body, n):
        grammar = body.get("grammar") or (body.get("structured_outputs") or {}).get("grammar")
        text = answers.get(grammar, "12345")
        choice = {"message": {"role": "assistant", "content": text}} if "messages" in body else {"text": text}
        return Reply(body={"choices": [{**choice, "finish_reason": "stop"}]})

    return reply


def test_auto_detects_vllm_and_speaks_its_dialect(fake, tasks):
    fmt = tasks["cognitive-distortion"].response_format()
    fake.act_as("vllm").reply = enforcing(fmt)
    b = backend(fake.url, max_new_tokens=16)
    [completion] = b.generate([request(0, response_format=fmt, stop=("<|user|>",))])
    assert completion.text == valid_answer(fmt)
    body = fake.bodies[0]
    assert body["structured_outputs"] == {"grammar": fmt.gbnf()}
    assert body["stop_token_ids"] == [151329, 151336, 151338] and body["stop"] == ["<|user|>"]
    assert body["repetition_penalty"] == 1.0
    assert body["add_special_tokens"] is False  # the prompt already starts with [gMASK]<sop>
    assert not {"grammar", "repeat_penalty", "response_format"} & set(body)
    assert b.server_info == {"dialect": "vllm", "engine": "vLLM", "version": "0.32.0",
                             "constraint": "structured_outputs.grammar", "stop_token_ids": [151329, 151336, 151338]}
    tokenized = [body for method, path, body in fake.other if path == "/tokenize"]
    assert tokenized == [{"model": "tiny-glm", "prompt": token, "add_special_tokens": False} for token in GLM4_IDS]
    b.generate([request(1)])  # no answer format: no constraint; the server is identified once
    assert "structured_outputs" not in fake.bodies[1]
    assert sum(path == "/v1/models" for _, path, _ in fake.other) == 1


@pytest.mark.parametrize("server, engine, version", [("llama-server", "llama.cpp server", "b6500-abc1234"),
                                                     ("llama-cpp-python", "llama-cpp-python", "0.3.36")])
def test_llama_cpp_servers_are_detected_and_get_a_grammar(fake, tasks, server, engine, version):
    fmt = tasks["depression"].response_format()
    fake.act_as(server).reply = enforcing(fmt)
    b = backend(fake.url)
    b.generate([request(0, response_format=fmt)])
    body = fake.bodies[0]
    assert body["grammar"] == fmt.gbnf() and body["repeat_penalty"] == 1.0
    assert not {"structured_outputs", "stop_token_ids", "repetition_penalty"} & set(body)
    assert b.server_info == {"dialect": "llama.cpp", "engine": engine, "version": version, "constraint": "grammar",
                             "stop_token_ids": None}


def test_label_only_answers_are_a_choice(fake, tasks):
    depression = tasks["depression"].response_format()
    fake.act_as("vllm").reply = answering("标签：非抑郁")
    [completion] = backend(fake.url, answer="label").generate([request(0, response_format=depression)])
    assert completion.text == "标签：非抑郁" and tasks["depression"].parse(completion.text).labels == ("非抑郁",)
    assert fake.bodies[0]["structured_outputs"] == {"choice": ["标签：抑郁", "标签：非抑郁"]}
    fake.reply = answering("标签：抑郁\n解释：……")  # more than a label line: the choice was not enforced
    with pytest.raises(MentalGLMError, match="structured_outputs.choice: the answer for post 0 is not one of"):
        backend(fake.url, answer="label").generate([request(0, response_format=depression)])
    with pytest.raises(MentalGLMError, match="answer=label needs a single-label task; this one is multi-label"):
        backend(fake.url, answer="label").generate([request(0, response_format=tasks["cognitive-distortion"]
                                                            .response_format())])


def test_label_only_answers_on_llama_cpp_get_a_choice_grammar(fake, tasks):
    fmt = tasks["depression"].response_format()
    fake.act_as("llama-server").reply = answering("标签：抑郁")
    backend(fake.url, answer="label").generate([request(0, response_format=fmt)])
    assert fake.bodies[0]["grammar"] == 'root ::= "标签：抑郁" | "标签：非抑郁"\n'


def test_an_unknown_server_cannot_be_constrained(fake, tasks):
    fmt = tasks["depression"].response_format()
    b = backend(fake.url)
    for attempt in (lambda: b.preflight(["1"]), lambda: b.generate([request(0, response_format=fmt)])):
        with pytest.raises(MentalGLMError) as info:
            attempt()
        message = str(info.value)
        assert "\n" not in message and fake.url in message
        assert "of unknown make, spoken to as plain OpenAI (no known sign)" in message
        assert "answers cannot be constrained; set server=vllm or server=llama.cpp" in message
        assert "constrained=false" in message
    assert fake.requests == []  # refused before any post text was sent
    assert b.server_info == {"dialect": "openai", "engine": None, "version": None, "constraint": None,
                             "stop_token_ids": None}


def test_a_forced_dialect_needs_no_signs(fake, tasks):
    fmt = tasks["depression"].response_format()
    fake.reply = enforcing(fmt)
    b = backend(fake.url, server="vllm")
    b.generate([request(0, response_format=fmt)])
    assert fake.bodies[0]["structured_outputs"] == {"grammar": fmt.gbnf()}
    assert "stop_token_ids" not in fake.bodies[0]  # no /tokenize here
    assert b.server_info["dialect"] == "vllm" and b.server_info["engine"] is None


# -- fail closed: the canary and every answer -------------------------------------------------------
def test_canary_refuses_a_server_that_ignores_the_constraint(fake):
    fake.act_as("vllm").reply = answering("12345")
    b = backend(fake.url)
    with pytest.raises(MentalGLMError) as info:
        b.preflight(["1", "2"])
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"openai backend: {fake.url} (vLLM 0.32.0, vllm dialect) did not enforce the answer "
                              "constraint sent as structured_outputs.grammar: the canary answer is outside the answer "
                              "grammar; ")
    assert "constrained=false" in message
    [canary] = fake.bodies
    assert canary["prompt"] == dialects.CANARY_PROMPT
    assert canary["structured_outputs"] == {"grammar": dialects.CANARY_FORMAT.gbnf()}
    assert canary["max_tokens"] == dialects.CANARY_TOKENS


def test_canary_with_the_tasks_own_format(fake, tasks):
    fmt = tasks["cognitive-pathway"].response_format()
    fake.act_as("llama-server").reply = enforcing(fmt)
    backend(fake.url).preflight(["1"], response_format=fmt)
    assert fake.bodies[0]["grammar"] == fmt.gbnf()


@pytest.mark.parametrize("text, finish_reason, problem", [
    ("", "stop", "stopped before the explanation"),
    ("甲部：无\n乙部：无", "stop", "stopped before the explanation"),
    ("甲部：子一｜", "stop", "stopped before the explanation"),
    ("标签：抑郁\n解释：", "stop", "is outside the answer grammar"),
    ("甲部：子", "length", None),  # cut by the token budget: a prefix of a valid answer is all it can be
    ("甲部：子一｜摘要\n乙部：无\n解释：", "stop", None),
])
def test_canary_judges_what_could_come_from_the_grammar(fake, text, finish_reason, problem):
    fake.act_as("llama-cpp-python").reply = answering(text, finish_reason)
    if problem is None:
        backend(fake.url).preflight(["1"])
        return
    with pytest.raises(MentalGLMError, match=f"sent as grammar: the canary answer {problem}; "):
        backend(fake.url).preflight(["1"])


def test_a_llama_cpp_python_server_is_named_with_what_to_use_instead(fake, caplog):
    fake.act_as("llama-cpp-python").reply = answering("12345")
    b = backend(fake.url)
    with pytest.raises(MentalGLMError) as info:
        b.preflight(["1"])
    assert str(info.value).endswith(dialects.LONG_PIECES)
    assert caplog.text.count("drops token pieces longer than 32 bytes") == 1  # once, when it is identified


def test_canary_on_vllm_spoken_to_as_llama_cpp_says_which_dialect_to_use(fake):
    fake.act_as("vllm").reply = answering("12345")  # vLLM ignores the unknown field 'grammar' (HTTP 200)
    with pytest.raises(MentalGLMError) as info:
        backend(fake.url, server="llama.cpp").preflight(["1"])
    assert "(vLLM 0.32.0, llama.cpp dialect) did not enforce the answer constraint sent as grammar" in str(info.value)
    assert str(info.value).endswith("this server looks like vLLM 0.32.0, which takes constraints in "
                                    "structured_outputs: set server=vllm or server=auto")
    assert "grammar" in fake.bodies[0] and "structured_outputs" not in fake.bodies[0]


def test_no_posts_no_canary_and_unconstrained_runs_no_canary(fake):
    fake.act_as("vllm").reply = answering("12345")
    backend(fake.url).preflight([])
    backend(fake.url, constrained="false").preflight(["1"])
    assert fake.requests == []


def test_every_answer_is_checked_and_the_error_quotes_neither_post_nor_answer(fake, tasks, caplog):
    fmt = tasks["depression"].response_format()
    obeying = enforcing(fmt)

    def reply(body, n):  # obeys the canary and post 0, then echoes post 1: the constraint was dropped on the way
        return FakeOpenAI.echo(body, n) if "#1<" in body["prompt"] else obeying(body, n)

    fake.act_as("vllm").reply = reply
    b = backend(fake.url, concurrency=1)
    with caplog.at_level(logging.DEBUG):
        b.preflight(["0", "1"])
        with pytest.raises(MentalGLMError) as info:
            b.generate([request(0, response_format=fmt), request(1, response_format=fmt)])
    message = str(info.value)
    assert "the answer for post 1 is outside the answer grammar" in message
    assert POST not in message and "echo:" not in message and "失眠" not in message
    assert POST not in caplog.text and "失眠" not in caplog.text


def test_unconstrained_runs_send_no_constraint_and_check_nothing(fake, tasks):
    fmt = tasks["depression"].response_format()
    fake.act_as("vllm").reply = answering("12345")
    b = backend(fake.url, constrained=False)
    [completion] = b.generate([request(0, response_format=fmt)])
    assert completion.text == "12345"
    assert "structured_outputs" not in fake.bodies[0] and "grammar" not in fake.bodies[0]
    assert b.server_info["constraint"] is None


def test_grammar_field_is_deprecated_but_still_sent_and_checked(fake, tasks, caplog):
    fmt = tasks["cognitive-distortion"].response_format()
    fake.act_as("vllm").reply = answering("12345")
    b = backend(fake.url, grammar_field="grammar")
    fake.reply = enforcing(fmt)
    with caplog.at_level(logging.WARNING):
        b.generate([request(0, response_format=fmt), request(1)])
    assert "grammar_field is deprecated for vLLM 0.32.0: server=llama.cpp sends the grammar as 'grammar'" in caplog.text
    bodies = {body["prompt"]: body for body in fake.bodies}  # arrival order is not request order
    assert bodies[request(0).prompt]["grammar"] == fmt.gbnf()
    assert "structured_outputs" not in bodies[request(0).prompt]
    assert "grammar" not in bodies[request(1).prompt]
    fake.reply = answering("12345")
    with pytest.raises(MentalGLMError, match="sent as grammar: .*vLLM 0.32.0 takes constraints in structured_outputs, "
                                             "not grammar: drop grammar_field .deprecated. and set server=vllm or "
                                             "server=auto$"):
        b.preflight(["1"])


def test_grammar_field_still_reaches_other_engines_without_a_warning(fake, tasks, caplog):
    fmt = tasks["depression"].response_format()
    fake.reply = enforcing(fmt)  # no signs: an engine of unknown make that reads 'grammar'
    b = backend(fake.url, grammar_field="grammar")
    with caplog.at_level(logging.WARNING):
        b.preflight(["1"])
        b.generate([request(0, response_format=fmt)])
    assert fake.bodies[1]["grammar"] == fmt.gbnf() and "deprecated" not in caplog.text
    assert b.server_info["constraint"] == "grammar"


# -- adapters and stop token ids ---------------------------------------------------------------
def test_adapter_is_the_request_model_on_vllm(fake, tasks):
    fmt = tasks["depression"].response_format()
    fake.act_as("vllm").reply = enforcing(fmt)
    backend(fake.url, adapter="mentalglm-lora").generate([request(0, response_format=fmt)])
    assert fake.bodies[0]["model"] == "mentalglm-lora"
    with pytest.raises(MentalGLMError) as info:
        backend(fake.url, adapter="nope").preflight(["1"])
    assert str(info.value) == (f"openai backend: {fake.url} does not serve adapter 'nope' (it serves: tiny-glm, "
                               "mentalglm-lora); start it with vllm serve … --enable-lora --lora-modules nope=PATH")


def test_adapter_needs_vllm(fake):
    fake.act_as("llama-server")
    with pytest.raises(MentalGLMError, match=r"adapter=x needs a vLLM server .* llama.cpp server b6500-abc1234 in "
                                             r"the llama.cpp dialect"):
        backend(fake.url, adapter="x").generate([request()])


@pytest.mark.parametrize("value, sent", [("1,2", [1, 2]), ("[3]", [3]), ("none", None), ("auto", [151329, 151336,
                                                                                                    151338])])
def test_stop_token_ids_option(fake, value, sent):
    fake.act_as("vllm")
    backend(fake.url, stop_token_ids=value).generate([request()])
    assert fake.bodies[0].get("stop_token_ids") == sent


def test_stop_token_ids_go_to_vllm_only(fake, caplog):
    fake.act_as("llama-server")
    with caplog.at_level(logging.WARNING):
        b = backend(fake.url, stop_token_ids="1,2")
        b.generate([request()])
    assert "stop_token_ids" not in fake.bodies[0] and b.server_info["stop_token_ids"] is None
    assert "stop_token_ids goes to vLLM only" in caplog.text


def test_stop_token_ids_auto_without_glm4_tokens(fake, caplog):
    fake.act_as("vllm").routes[("POST", "/tokenize")] = {"count": 3, "max_model_len": 512, "tokens": [27, 91, 882]}
    with caplog.at_level(logging.WARNING):
        backend(fake.url).generate([request()])
    assert "stop_token_ids" not in fake.bodies[0]
    assert "gave no ids for the GLM-4 stop tokens" in caplog.text and "stop_token_ids=ID" in caplog.text


def test_a_refused_api_key_on_the_probe_names_the_variable(fake, monkeypatch):
    monkeypatch.setenv("MENTALGLM_TEST_KEY", KEY)
    fake.routes[("GET", "/v1/models")] = Reply(401, {"error": {"message": f"Invalid key {KEY}"}})
    with pytest.raises(MentalGLMError) as info:
        backend(fake.url, api_key_env="MENTALGLM_TEST_KEY").generate([request()])
    assert str(info.value) == (f"openai backend: {fake.url}/models: HTTP 401: Invalid key ***; "
                               "is the key in $MENTALGLM_TEST_KEY right?")


# -- the command line ---------------------------------------------------------------------------
def _posts_file(tmp_path):
    path = tmp_path / "posts.jsonl"
    path.write_text("".join(json.dumps({"id": f"p{i}", "text": f"{POST} {i}"}, ensure_ascii=False) + "\n"
                            for i in range(3)), encoding="utf-8")
    return path


def test_cli_stops_before_the_first_post_when_the_server_ignores_the_constraint(fake, tmp_path):
    fake.act_as("vllm").reply = answering("12345")
    out = tmp_path / "out.jsonl"
    result = run_cli("analyze", "--task", "depression", "--backend", "openai", "--model", "tiny-glm",
                     "-O", f"base_url={fake.url}", "--input", str(_posts_file(tmp_path)), "--output", str(out),
                     "--quiet")
    assert result.returncode == 1, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"mentalglm: error: openai backend: {fake.url} (vLLM 0.32.0, "
                                                   "vllm dialect) did not enforce the answer constraint")
    assert POST not in result.stderr and result.stdout == ""
    assert len(fake.requests) == 1  # the canary; no post was sent
    assert not out.exists() or out.read_text() == ""


def test_cli_constrained_false_runs_unconstrained(fake, tmp_path):
    fake.act_as("vllm").reply = answering("标签：抑郁\n解释：长期失眠。")
    out = tmp_path / "out.jsonl"
    result = run_cli("analyze", "--task", "depression", "--backend", "openai", "--model", "tiny-glm",
                     "-O", f"base_url={fake.url}", "-O", "constrained=false", "--input", str(_posts_file(tmp_path)),
                     "--output", str(out), "--quiet", "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["analysed"] == 3
    assert len(out.read_text(encoding="utf-8").splitlines()) == 3
    assert len(fake.requests) == 3 and not any("structured_outputs" in body for body in fake.bodies)
    record = json.loads((tmp_path / "out.jsonl.run.json").read_text(encoding="utf-8"))
    assert record["options"]["constrained"] is False and record["options"]["server"] == "auto"


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
    assert retry_after("0") == 0 and retry_after("2.5") == 2.5 and retry_after(None) is None
    assert retry_after("soon") is None
    assert retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0  # a date in the past


def test_analyzer_redacts_before_sending(fake, pm):
    from mentalglm import Analyzer

    fake.act_as("llama-server").reply = answering("标签：抑郁\n解释：长期失眠。")
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


def test_per_post_constraints_are_kept_bounded(fake, tasks):
    """Tasks with evidence make one answer format per post: the cache keeps the recent ones, not all."""
    from mentalglm.backends.openai_backend import CONSTRAINTS_KEPT

    with_evidence = replace(tasks["depression"].response_format(), evidence_prefix="依据")
    formats = [with_evidence.for_post(f"帖子{i}：整夜睡不着") for i in range(CONSTRAINTS_KEPT + 40)]
    fake.act_as("llama-server").reply = answering("", finish_reason="length")
    b = backend(fake.url, concurrency=4)
    b.generate([request(i, response_format=fmt) for i, fmt in enumerate(formats)])
    assert len({body["grammar"] for body in fake.bodies}) == len(formats)  # each post got its own grammar
    assert len(b._constraints) == CONSTRAINTS_KEPT


# -- --prompt server: the server applies its own chat template ---------------------------------------
@pytest.mark.parametrize("server, field", [("llama-server", "grammar"), ("vllm", "structured_outputs")])
def test_prompt_server_sends_the_turns_to_the_chat_route_with_the_constraint(fake, pm, server, field):
    from mentalglm import Analyzer

    fmt = pm.task("depression").response_format()
    fake.act_as(server).reply = enforcing(fmt)
    with Analyzer(task="depression", backend="openai", model="m", prompt="server", system="你是心理咨询师",
                  options={"base_url": fake.url}, plugins=pm, redact=False) as a:
        a.backend.preflight(["1"], response_format=a.response_format)
        prediction = a.analyze("我最近总是失眠")
        record_prompt = a.settings()["prompt"]
    assert prediction.labels and prediction.valid
    assert fake.routes_taken == ["/v1/chat/completions"] * 2  # the canary takes the route the posts take
    canary, post = fake.bodies
    assert canary["messages"] == [{"role": "user", "content": dialects.CANARY_QUESTION}]
    assert post["messages"] == [{"role": "system", "content": "你是心理咨询师"},
                                {"role": "user", "content": pm.task("depression").instruction + "\n我最近总是失眠"}]
    assert "prompt" not in post and field in post and field in canary
    assert record_prompt == "server"


def test_prompt_server_canary_refuses_a_chat_route_that_ignores_the_constraint(fake, pm):
    from mentalglm import Analyzer

    fake.act_as("llama-server").reply = lambda body, n: Reply(body={"choices": [
        {"message": {"role": "assistant", "content": "12345"}, "finish_reason": "stop"}]})
    with Analyzer(task="depression", backend="openai", model="m", prompt="server",
                  options={"base_url": fake.url}, plugins=pm) as a:
        with pytest.raises(MentalGLMError, match="did not enforce the answer constraint sent as grammar: the canary"):
            a.backend.preflight(["1"], response_format=a.response_format)
    assert fake.routes_taken == ["/v1/chat/completions"]


def test_prompt_server_chat_answer_without_content_is_one_line(fake, pm):
    fake.act_as("llama-server").reply = lambda body, n: Reply(body={"choices": [{"text": None}]})
    b = backend(fake.url, constrained=False)
    b.render_on_server()
    with pytest.raises(MentalGLMError) as info:
        b.generate([request(0, messages=({"role": "user", "content": "x"},))])
    assert str(info.value).startswith(f"openai backend: {fake.url}/chat/completions: the answer has no "
                                      "choices[0].message.content")


@pytest.mark.parametrize("backend_name", ["llamacpp", "torch", "replay"])
def test_prompt_server_is_refused_by_backends_that_read_the_model(pm, tiny_models, exported, tmp_path, backend_name):
    from mentalglm import Analyzer

    replay = tmp_path / "replay.jsonl"
    replay.write_text('{"id": "1", "output": "标签：抑郁"}\n', encoding="utf-8")
    model = {"llamacpp": exported("glm", "f32"), "torch": tiny_models["glm"], "replay": replay}[backend_name]
    with pytest.raises(MentalGLMError, match=f"--prompt server: backend '{backend_name}' sends no chat messages"):
        Analyzer(task="depression", backend=backend_name, model=str(model), prompt="server", plugins=pm)


# -- replicas ------------------------------------------------------------------------------------
fake2 = pytest.fixture(_serving, name="fake2")  # a second server: replicas


@pytest.mark.parametrize("given", ["http://b/v1, http://a/v1/", '["http://b/v1", "http://a/v1"]',
                                   ["http://b/v1", "http://a/v1"]])
def test_base_url_lists_are_a_set_of_replicas(given):
    assert OpenAIBackend("m", {"base_url": given}).options.base_url == ["http://a/v1", "http://b/v1"]
    assert OpenAIBackend("m", {"base_url": "http://a/v1/"}).options.base_url == "http://a/v1/"  # one: as it was


@pytest.mark.parametrize("given, message", [
    ("http://a/v1,http://a/v1/", "names a replica more than once: http://a/v1"),
    ("http://a/v1,ftp://b/v1", "http:// or https://.*got 'ftp://b/v1'"),
    ("[oops", "not a JSON list"),
])
def test_bad_replica_lists(given, message):
    with pytest.raises(OptionsError, match=message):
        OpenAIBackend("m", {"base_url": given})


def test_a_dead_replica_is_retried_on_the_live_one_and_counted(fake, caplog):
    dead = f"http://127.0.0.1:{free_port()}/v1"
    b = backend(f"{dead},{fake.url}", server="llama.cpp", constrained=False, concurrency=2, max_retries=2)
    with caplog.at_level(logging.WARNING):
        completions = b.generate([request(i) for i in range(6)])
    assert [c.text for c in completions] == ["echo:" + request(i).prompt for i in range(6)]
    assert len(fake.requests) == 6
    counts = b.run_stats()["replicas"]
    assert counts[dead]["failures"] >= 1 and counts[dead]["taken_out"] == 1 and not counts[dead]["in_service"]
    assert counts[fake.url] == {"requests": 6, "failures": 0, "taken_out": 0, "in_service": True}
    assert f"replica {dead} taken out for 30 s" in caplog.text and POST not in caplog.text
    assert backend(fake.url).run_stats() == {}  # one server: nothing to report


def test_a_5xx_moves_to_another_replica_and_a_4xx_does_not(fake, fake2):
    fake.reply = lambda body, n: Reply(503, {"error": {"message": "overloaded"}})
    b = backend(f"{fake.url},{fake2.url}", server="llama.cpp", constrained=False, concurrency=1)
    assert [c.text for c in b.generate([request(0), request(1)])] == ["echo:" + request(i).prompt for i in (0, 1)]
    assert len(fake.requests) == 1 and len(fake2.requests) == 2
    fake2.reply = lambda body, n: Reply(400, {"error": {"message": "bad request"}})
    with pytest.raises(MentalGLMError, match="HTTP 400: bad request"):
        b.generate([request(2)])
    assert len(fake.requests) == 1 and len(fake2.requests) == 3  # the fault is the request's: not sent elsewhere


def test_every_replica_is_identified_and_must_be_the_same_server(fake, fake2):
    fake.act_as("vllm")
    fake2.act_as("llama-cpp-python")
    with pytest.raises(MentalGLMError) as info:
        backend(f"{fake.url},{fake2.url}").server_info  # noqa: B018
    message = str(info.value)
    assert "\n" not in message and "the replicas of a run must be the same server and model" in message
    assert fake.url in message and fake2.url in message and "llama-cpp-python 0.3.36" in message


def test_the_canary_goes_to_every_replica_and_names_the_one_that_fails(fake, fake2, tasks):
    fmt = tasks["depression"].response_format()
    fake.act_as("llama-server").reply = enforcing(fmt)
    fake2.act_as("llama-server").reply = answering("12345")
    urls = sorted([fake.url, fake2.url])
    with pytest.raises(MentalGLMError) as info:
        backend(",".join(urls)).preflight(["1"], response_format=fmt)
    assert str(info.value).startswith(f"openai backend: {fake2.url} (llama.cpp server b6500-abc1234, llama.cpp "
                                      "dialect) did not enforce the answer constraint sent as grammar: the canary")
    assert len(fake.requests) == (1 if urls[0] == fake.url else 0) and len(fake2.requests) == 1
    fake2.reply = enforcing(fmt)
    backend(",".join(urls)).preflight(["1"], response_format=fmt)  # both prove it: the run may start


def test_replicas_are_a_setting_their_counts_are_not(fake, fake2, pm, tmp_path):
    from mentalglm import Analyzer
    from mentalglm.core.prediction import Post

    fake.act_as("llama-server").reply = answering("标签：抑郁\n解释：累。")
    fake2.act_as("llama-server").reply = answering("标签：抑郁\n解释：累。")
    out = tmp_path / "p.jsonl"
    posts = [Post(id=str(i), text=f"帖子{i}") for i in range(4)]

    def run(urls, posts):
        with Analyzer(task="depression", backend="openai", model="m", plugins=pm,
                      options={"base_url": urls, "backoff": 0.01}) as analyzer:
            return analyzer.run(posts, out)

    summary = run(f"{fake.url},{fake2.url}", posts[:2])
    assert set(summary.backend_stats["replicas"]) == {fake.url, fake2.url}
    record = json.loads(out.with_name("p.jsonl.run.json").read_text(encoding="utf-8"))
    assert record["options"]["base_url"] == sorted([fake.url, fake2.url])
    assert "replicas" not in json.dumps(record)
    with pytest.raises(MentalGLMError, match="options.base_url"):
        run(fake.url, posts[:2])  # another set of replicas: refused like any other setting
    summary = run(f"{fake2.url},{fake.url}", posts[:2])  # the same set, listed otherwise: resumes
    assert (summary.analysed, summary.skipped) == (0, 2)


def test_chat_messages_are_the_turns_of_a_glm4_prompt(pm):
    from mentalglm.backends.openai_backend import chat_messages

    style = pm.prompt("glm4-chat")
    prompt = style.render("判断帖子。", "好累\n<|user|>\n还是累", "你是助手")
    messages = chat_messages(prompt)
    assert messages[0] == {"role": "system", "content": "你是助手"}
    rendered = "[gMASK]<sop>" + "".join(f"<|{m['role']}|>\n{m['content']}" for m in messages) + "<|assistant|>\n"
    assert rendered == prompt  # the chat template gives back the very prompt
    assert chat_messages(pm.prompt("plain").render("判断帖子。", "好累")) is None


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


def test_real_server_is_detected(llama_server):
    import llama_cpp

    b = OpenAIBackend("m", {"base_url": llama_server[0]})
    assert b.server_info == {"dialect": "llama.cpp", "engine": "llama-cpp-python", "version": llama_cpp.__version__,
                             "constraint": "grammar", "stop_token_ids": None}


def test_real_server_grammar_constrains_the_answer(llama_server, pm):
    base_url, _ = llama_server
    task, style, prompts = _prompts(pm, "cognitive-distortion")
    fmt = task.response_format()
    requests = [GenerationRequest(str(i), p, stop=style.stop, response_format=fmt) for i, p in enumerate(prompts)]
    constrained = OpenAIBackend("m", {"base_url": base_url, "max_new_tokens": 48})  # server=auto finds llama.cpp
    constrained.preflight(["0"])  # the canary passes
    constrained.preflight(["0"], response_format=fmt)
    for completion in constrained.generate(requests):
        assert fmt.allows(completion.text.encode()), completion.text
        if fmt.in_free_text(completion.text.encode()):
            assert task.parse(completion.text).valid
    free = OpenAIBackend("m", {"base_url": base_url, "max_new_tokens": 48, "constrained": False}).generate(requests)
    assert not all(fmt.allows(c.text.encode()) for c in free)  # the tiny model alone does not answer in format


def test_real_server_label_only_answers(llama_server, pm):
    task, style, prompts = _prompts(pm, "depression")
    fmt = task.response_format()
    b = OpenAIBackend("m", {"base_url": llama_server[0], "answer": "label"})
    b.preflight(["0"])
    completions = b.generate([GenerationRequest(str(i), p, stop=style.stop, response_format=fmt)
                              for i, p in enumerate(prompts)])
    assert {c.text for c in completions} <= {"标签：抑郁", "标签：非抑郁"}


def test_real_server_spoken_to_as_vllm_is_refused(llama_server, caplog):
    """llama-cpp-python's server answers 200 and ignores structured_outputs: the canary catches it."""
    with caplog.at_level(logging.WARNING), pytest.raises(MentalGLMError) as info:
        OpenAIBackend("m", {"base_url": llama_server[0], "server": "vllm"}).preflight(["0"])
    import llama_cpp

    assert str(info.value).endswith(f"this server looks like llama-cpp-python {llama_cpp.__version__}, which takes "
                                    "constraints in grammar: set server=llama.cpp or server=auto")
    assert "/tokenize gave no ids for the GLM-4 stop tokens" in caplog.text  # it has no /tokenize


def test_real_server_cli_run(llama_server, tmp_path):
    out = tmp_path / "out.jsonl"
    result = run_cli("analyze", "--task", "suicide-risk", "--backend", "openai", "--model", "m",
                     "-O", f"base_url={llama_server[0]}", "-O", "max_new_tokens=24", "--input",
                     str(_posts_file(tmp_path)), "--output", str(out), "--quiet", "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"output": str(out), "posts": 3, "analysed": 3, "skipped": 0,
                                         "invalid": 0, "without_label_line": 0}
    for line in out.read_text(encoding="utf-8").splitlines():
        record = json.loads(line)
        assert record["output"].startswith("标签：") and record["labels"]  # constrained: a valid label every time
