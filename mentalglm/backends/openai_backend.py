"""The ``openai`` backend: completions from any OpenAI-compatible server, standard library only.

Works with vLLM, llama.cpp's ``llama-server`` and llama-cpp-python's ``python -m
llama_cpp.server``: ``POST {base_url}/completions`` with the fully rendered prompt. HTTP goes
through :mod:`urllib.request` and a :class:`~concurrent.futures.ThreadPoolExecutor`, so the
backend adds no dependency.
"""

from __future__ import annotations

import email.utils
import http.client
import json
import logging
import os
import random
import socket
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from typing import Any, Sequence

from pydantic import Field, field_validator

from mentalglm.core.backend import Backend, BackendOptions, Completion, GenerationRequest
from mentalglm.core.errors import MentalGLMError, OptionsError

log = logging.getLogger(__name__)

#: HTTP statuses worth another try (rate limit, server errors, gateway trouble).
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
#: Longest pause between tries, whether from the backoff or from a server's ``Retry-After``.
MAX_DELAY_S = 60.0
#: Request fields the backend sets itself (``extra_body`` may not replace them).
OWN_FIELDS = frozenset({"model", "prompt", "max_tokens", "temperature", "top_p", "seed", "stop", "stream"})
_MESSAGE_CHARS = 300
_FRAGMENT_CHARS = 8


class OpenAIOptions(BackendOptions):
    """Options of the openai backend."""

    base_url: str = Field("http://127.0.0.1:8000/v1",
                          description="the server's OpenAI API root (http or https); requests go to "
                                      "{base_url}/completions")
    api_key_env: str = Field("OPENAI_API_KEY",
                             description="name of the environment variable holding the API key, sent as a Bearer "
                                         "token (unset or empty: no Authorization header)")
    concurrency: int = Field(4, ge=1, description="requests in flight at once")
    max_retries: int = Field(5, ge=0, description="further tries after a 429/500/502/503/504, a connection error "
                                                  "or a timeout")
    backoff: float = Field(0.5, ge=0, description="seconds before the first retry, doubling each time, with jitter "
                                                  "(a Retry-After header from the server takes precedence)")
    timeout: float = Field(60.0, gt=0, description="seconds to wait for the connection and for the server's answer")
    temperature: float = Field(0.0, ge=0, description="sampling temperature (0: greedy)")
    top_p: float = Field(1.0, gt=0, le=1, description="nucleus sampling mass")
    grammar_field: str | None = Field(None, description="request field that receives the task's GBNF grammar when a "
                                                        "request has a response format ('grammar' for llama.cpp "
                                                        "servers)")
    repeat_penalty: float | None = Field(1.0, ge=0, description="sent as 'repeat_penalty' (llama.cpp servers; "
                                                                "llama-cpp-python's server applies 1.1 when it is "
                                                                "missing, so temperature 0 would not be greedy); "
                                                                "none: leave the field out")
    extra_body: dict[str, Any] = Field(default_factory=dict,
                                       description="JSON object of further request fields (e.g. {\"top_k\": 1})")
    trust_env_proxy: bool = Field(False, description="use HTTP(S)_PROXY from the environment (off: connect to "
                                                     "base_url directly, so post text goes nowhere else)")

    @field_validator("grammar_field", "repeat_penalty", mode="before")
    @classmethod
    def _none_words(cls, value):
        """The command line spells None as ``none`` (``-O repeat_penalty=none``)."""
        if isinstance(value, str) and value.strip().lower() in ("", "none", "null"):
            return None
        return value

    @field_validator("extra_body", mode="before")
    @classmethod
    def _json_object(cls, value):
        if isinstance(value, str):
            try:
                value = json.loads(value) if value.strip() else {}
            except json.JSONDecodeError as exc:
                raise ValueError(f"not a JSON object ({exc.msg})") from None
        if isinstance(value, dict):
            clash = sorted(OWN_FIELDS & set(value))
            if clash:
                raise ValueError(f"may not set {', '.join(clash)} (the backend sets them)")
        return value


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """Redirects are not followed: a POST body must not be resent to an address nobody configured."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        return None


class _Cancelled(MentalGLMError):
    """Another request of the same batch failed for good, so this one was abandoned."""


class _Retry(Exception):
    """A try that failed in a way worth retrying."""

    def __init__(self, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.message, self.retry_after = message, retry_after


class OpenAIBackend(Backend):
    """Completions from an OpenAI-compatible server (vLLM, llama.cpp server, llama-cpp-python server).

    ``model`` is the server-side model name (vLLM's ``--served-model-name``; llama.cpp servers
    serve one model and accept any name). Each request is ``POST {base_url}/completions`` with
    ``model``, ``prompt`` (the fully rendered prompt, e.g. starting with ``[gMASK]<sop>``),
    ``max_tokens``, ``temperature``, ``top_p``, ``seed``, ``stop``, ``repeat_penalty`` (unless
    set to none), the task's GBNF under ``grammar_field`` when that is set, and ``extra_body``.
    Up to ``concurrency`` requests are in flight; completions come back in request order.

    **Privacy.** Post text goes only to the configured ``base_url``: no proxy from the
    environment (unless ``trust_env_proxy``), no redirects followed, no credentials in the URL.
    Because that server may be another machine, the Analyzer **redacts posts by default** for this backend
    (``redacts_by_default``: URLs, e-mail addresses, ID-card and phone numbers, @mentions; see
    :mod:`mentalglm.core.redaction`); turn it off with ``--no-redact`` / ``redact=False``. The
    API key is read from the environment variable named by ``api_key_env``; it is never an
    option, never logged and never part of an error message. Errors never quote the prompt.

    **Tokenization.** The server tokenizes the prompt string. llama.cpp servers parse special
    tokens in it and add a BOS token only when the GGUF says ``add_bos_token = true`` (GGUFs
    from ``mentalglm export`` say false, so the prompt's own ``[gMASK]<sop>`` is not doubled);
    with llama-cpp-python's server and ``repeat_penalty=1`` (the default here), temperature 0
    gives exactly the tokens of in-process greedy decoding on the same ids. For vLLM, serve
    the model with its HF tokenizer, which also parses the special tokens in the text.

    **Label scoring** (``score_labels``, ``--mode score``) is not supported: it would need the
    log-probabilities of the prompt's own tokens (``echo`` with ``logprobs``). llama.cpp's
    ``llama-server`` does not return those, llama-cpp-python's server does only when started
    with ``logits_all`` and reports them from one tokenization of prompt + candidate (not the
    separate tokenizations every other backend scores) with character offsets that ignore
    special tokens, and vLLM's differ again — not reliable enough to compare backends.

    Raises:
        OptionsError: no model name, a bad option, or a ``base_url`` that is not http(s).
        MentalGLMError: from :meth:`generate`: a non-retryable HTTP error (the status and the
            server's message), or still failing after ``max_retries`` retries.
    """

    name = "openai"
    description = "Any OpenAI-compatible completions server (vLLM, llama.cpp server): scales past one machine"
    Options = OpenAIOptions
    capabilities = frozenset({"generate"})
    requires_model = True
    redacts_by_default = True

    def __init__(self, model: str | None = None, options=None):
        super().__init__(model, options)
        opts = self.options
        try:
            parts = urllib.parse.urlsplit(opts.base_url.strip())
            scheme, host, user = parts.scheme.lower(), parts.hostname, parts.username
            parts.port  # noqa: B018 -- raises ValueError on a bad port
        except ValueError:
            scheme, host, user = "", None, None
        if scheme not in ("http", "https") or not host:
            raise OptionsError(f"backend 'openai' option 'base_url' must be an http:// or https:// URL with a host, "
                               f"got '{_public_url(opts.base_url)}'")
        if user is not None:
            raise OptionsError("backend 'openai' option 'base_url' must not hold a user name or password; "
                               f"put the API key in the environment variable {opts.api_key_env}")
        self.base_url = opts.base_url.strip().rstrip("/")
        self.url = f"{self.base_url}/completions"
        key = os.environ.get(opts.api_key_env, "")
        self._secrets = (key,) if key else ()
        self._headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if key:
            self._headers["Authorization"] = f"Bearer {key}"
        handlers: list = [_NoRedirect()]
        if not opts.trust_env_proxy:
            handlers.append(urllib.request.ProxyHandler({}))
        self._opener = urllib.request.build_opener(*handlers)

    def __repr__(self) -> str:
        return f"OpenAIBackend(model={self.model!r}, base_url={self.base_url!r})"

    # -- requests ---------------------------------------------------------------------------
    def body(self, request: GenerationRequest) -> dict:
        """The JSON body sent for ``request``."""
        opts = self.options
        body: dict[str, Any] = dict(opts.extra_body)
        body.update({
            "model": self.model,
            "prompt": request.prompt,
            "max_tokens": request.max_new_tokens if request.max_new_tokens is not None else opts.max_new_tokens,
            "temperature": opts.temperature,
            "top_p": opts.top_p,
            "seed": opts.seed,
            "stop": list(request.stop),
        })
        if opts.repeat_penalty is not None:
            body["repeat_penalty"] = opts.repeat_penalty
        if opts.grammar_field and request.response_format is not None:
            body[opts.grammar_field] = request.response_format.gbnf()
        return body

    def generate(self, requests: Sequence[GenerationRequest]) -> list[Completion]:
        """One completion per request, in request order (up to ``concurrency`` in flight).

        Raises:
            MentalGLMError: the first request that failed for good; the others are abandoned.
        """
        requests = list(requests)
        if not requests:
            return []
        cancel = threading.Event()
        workers = min(self.options.concurrency, len(requests))
        if workers == 1:
            return [self._complete(r, cancel) for r in requests]
        pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="mentalglm-openai")
        try:
            futures = [pool.submit(self._complete, r, cancel) for r in requests]
            wait(futures, return_when=FIRST_EXCEPTION)
            failed = [f.exception() for f in futures if f.done() and not f.cancelled() and f.exception()]
            if failed:
                cancel.set()  # the others stop before their next try
                raise next((e for e in failed if not isinstance(e, _Cancelled)), failed[0])
            return [f.result() for f in futures]
        finally:
            cancel.set()
            pool.shutdown(wait=True, cancel_futures=True)

    def _complete(self, request: GenerationRequest, cancel: threading.Event) -> Completion:
        if cancel.is_set():
            raise _Cancelled("openai backend: cancelled")
        data = json.dumps(self.body(request), ensure_ascii=False).encode("utf-8")
        opts = self.options
        tries = opts.max_retries + 1
        for attempt in range(tries):
            try:
                payload = self._post(data, request.prompt)
                return self._completion(request, payload)
            except _Retry as problem:
                if attempt + 1 == tries:
                    raise MentalGLMError(f"openai backend: {self.url}: {problem.message} "
                                         f"(gave up after {tries} tries)") from None
                delay = self._delay(attempt, problem.retry_after)
                log.warning("openai backend: %s: %s; retry %d of %d in %.1f s", self.url, problem.message,
                            attempt + 1, opts.max_retries, delay)
                if cancel.wait(delay):
                    raise _Cancelled("openai backend: cancelled") from None
        raise AssertionError("unreachable")

    def _delay(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return min(max(retry_after, 0.0), MAX_DELAY_S)
        return min(self.options.backoff * 2 ** attempt * random.uniform(0.5, 1.0), MAX_DELAY_S)

    def _post(self, data: bytes, prompt: str) -> Any:
        """One try: the parsed JSON answer, or _Retry / MentalGLMError."""
        req = urllib.request.Request(self.url, data=data, headers=self._headers, method="POST")
        try:
            with self._opener.open(req, timeout=self.options.timeout) as response:
                raw = response.read()
        except urllib.error.HTTPError as exc:
            status = exc.code
            try:
                raw_error = exc.read()
            except (OSError, http.client.HTTPException):
                raw_error = b""
            finally:
                exc.close()
            message = self._scrub(_server_message(raw_error) or (exc.reason or ""), prompt)
            what = f"HTTP {status}" + (f": {message}" if message else "")
            if status in RETRY_STATUSES:
                raise _Retry(what, _retry_after(exc.headers.get("Retry-After") if exc.headers else None)) from None
            if 300 <= status < 400:
                location = exc.headers.get("Location", "") if exc.headers else ""
                what += f" (redirects are not followed; point base_url at {_public_url(location)})" if location else ""
            raise MentalGLMError(f"openai backend: {self.url}: {what}") from None
        except (TimeoutError, socket.timeout):
            raise _Retry(f"no answer within {self.options.timeout:g} s") from None
        except urllib.error.URLError as exc:
            reason = exc.reason
            if isinstance(reason, (TimeoutError, socket.timeout)):
                raise _Retry(f"no answer within {self.options.timeout:g} s") from None
            raise _Retry(f"cannot connect ({self._scrub(_one_line(str(reason)), prompt)})") from None
        except (ConnectionError, http.client.HTTPException, OSError) as exc:
            raise _Retry(f"connection failed ({type(exc).__name__})") from None
        try:
            return json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise MentalGLMError(f"openai backend: {self.url}: the answer is not JSON "
                                 "(is base_url the API root, e.g. http://host:8000/v1?)") from None

    def _completion(self, request: GenerationRequest, payload: Any) -> Completion:
        try:
            choice = payload["choices"][0]
            text = choice["text"]
            if not isinstance(text, str):
                raise TypeError
        except (KeyError, IndexError, TypeError):
            raise MentalGLMError(f"openai backend: {self.url}: the answer has no choices[0].text "
                                 "(is this an OpenAI-compatible completions endpoint?)") from None
        usage = payload.get("usage") if isinstance(payload, dict) else None
        usage = {k: v for k, v in (usage or {}).items()
                 if k in ("prompt_tokens", "completion_tokens") and isinstance(v, int)}
        return Completion(request.id, text, usage=usage, finish_reason=choice.get("finish_reason") or "stop")

    def _scrub(self, message: str, prompt: str) -> str:
        """The server's message without secrets or pieces of the prompt, one line, bounded."""
        for secret in self._secrets:
            message = message.replace(secret, "***")
        message = message[:4 * _MESSAGE_CHARS]  # an HTML error page needs no more
        message = _drop_fragments(message, prompt)
        message = _one_line(message)
        return message if len(message) <= _MESSAGE_CHARS else message[:_MESSAGE_CHARS - 1] + "…"


def _public_url(url: str) -> str:
    """``url`` without user name and password."""
    try:
        parts = urllib.parse.urlsplit(url)
        if parts.username is None and parts.password is None:
            return url
        host = parts.hostname or ""
        if ":" in host:
            host = f"[{host}]"
        netloc = host + (f":{parts.port}" if parts.port else "")
        return urllib.parse.urlunsplit(parts._replace(netloc=netloc))
    except ValueError:
        return "<invalid URL>"


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _server_message(raw: bytes) -> str:
    """The error message in an error body: OpenAI/vLLM, llama.cpp, FastAPI (``detail``) or plain text."""
    text = raw.decode("utf-8", errors="replace").strip()
    try:
        obj = json.loads(text)
    except json.JSONDecodeError:
        return text
    if isinstance(obj, dict):
        error = obj.get("error", obj)
        if isinstance(error, dict) and "message" in error:
            return str(error["message"])
        if isinstance(error, str):
            return error
        detail = obj.get("detail")
        if isinstance(detail, str):
            return detail
        if isinstance(detail, list):  # FastAPI validation errors; their "input" may hold the prompt
            return "; ".join(f"{'.'.join(str(p) for p in d.get('loc', ()))}: {d.get('msg', '')}"
                             for d in detail if isinstance(d, dict))
        if "message" in obj:
            return str(obj["message"])
    return text


def _drop_fragments(message: str, prompt: str) -> str:
    """Replace every run of at least 8 characters that also occurs in ``prompt`` by ``…``."""
    if not prompt or len(message) < _FRAGMENT_CHARS:
        return message
    out, i = [], 0
    while i < len(message):
        j = i + _FRAGMENT_CHARS
        if j <= len(message) and message[i:j] in prompt:
            while j < len(message) and message[i:j + 1] in prompt:
                j += 1
            out.append("…")
            i = j
        else:
            out.append(message[i])
            i += 1
    return "".join(out)


def _retry_after(value: str | None) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds or an HTTP date), or None."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(float(value), 0.0)
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when is None:
        return None
    return max(when.timestamp() - time.time(), 0.0)
