"""HTTP for the ``openai`` backend: JSON requests with retries, sent only to the configured server.

Standard library only (:mod:`urllib.request`). No proxy from the environment unless asked, no
redirects followed (a POST body is never resent to an address nobody configured), and error
messages that hold neither the API key nor pieces of the prompt.
"""

from __future__ import annotations

import email.utils
import http.client
import json
import logging
import random
import socket
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from mentalglm.core.errors import MentalGLMError

log = logging.getLogger(__name__)

#: HTTP statuses worth another try (rate limit, server errors, gateway trouble).
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
#: Longest pause between tries, whether from the backoff or from a server's ``Retry-After``.
MAX_DELAY_S = 60.0
_MESSAGE_CHARS = 300
_FRAGMENT_CHARS = 8


class Cancelled(MentalGLMError):
    """Another request of the same batch failed for good, so this one was abandoned."""


class HTTPStatusError(MentalGLMError):
    """The server answered with an error status that is not worth retrying (``status`` says which)."""

    def __init__(self, message: str, status: int):
        super().__init__(message)
        self.status = status


class NotJSON(MentalGLMError):
    """The answer body is not JSON (an HTML page, a proxy's error text)."""


class Retryable(Exception):
    """A try that failed in a way worth retrying (elsewhere or later): 429/5xx, no connection, a timeout.

    Attributes:
        message: one line saying what went wrong (no secrets, no pieces of the prompt).
        retry_after: seconds the server asked to wait (``Retry-After``), or None.
    """

    def __init__(self, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.message, self.retry_after = message, retry_after


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """Redirects are not followed: a POST body must not be resent to an address nobody configured."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        return None


class JsonClient:
    """JSON over HTTP(S) with retries of 429/5xx, connection errors and timeouts.

    Args:
        api_key: sent as a Bearer token (empty: no Authorization header); never shown.
        timeout: seconds for the connection and for the answer.
        max_retries: further tries after a retryable failure.
        backoff: seconds before the first retry, doubling, with jitter (``Retry-After`` wins).
        trust_env_proxy: use ``HTTP(S)_PROXY`` from the environment.
    """

    def __init__(self, *, api_key: str = "", timeout: float = 60.0, max_retries: int = 5, backoff: float = 0.5,
                 trust_env_proxy: bool = False):
        self.timeout, self.max_retries, self.backoff = timeout, max_retries, backoff
        self._secrets = (api_key,) if api_key else ()
        self._headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if api_key:
            self._headers["Authorization"] = f"Bearer {api_key}"
        handlers: list = [_NoRedirect()]
        if not trust_env_proxy:
            handlers.append(urllib.request.ProxyHandler({}))
        self._opener = urllib.request.build_opener(*handlers)

    def request(self, url: str, payload: Any = None, *, prompt: str = "",
                cancel: threading.Event | None = None) -> Any:
        """``GET url`` (``payload`` None) or ``POST`` the JSON ``payload``; the parsed JSON answer.

        Args:
            prompt: text that must not reappear in an error message (the server may quote it).
            cancel: set by another request of the batch that failed: stop before the next try.

        Raises:
            HTTPStatusError: a status not worth retrying (one line: URL, status, the server's message).
            NotJSON: the answer is not JSON.
            Cancelled: ``cancel`` was set while waiting to retry.
            MentalGLMError: still failing after ``max_retries`` retries.
        """
        data = _encode(payload)
        tries = self.max_retries + 1
        for attempt in range(tries):
            try:
                return self._once(url, data, prompt)
            except Retryable as problem:
                if attempt + 1 == tries:
                    raise MentalGLMError(f"openai backend: {url}: {problem.message} "
                                         f"(gave up after {tries} tries)") from None
                delay = self.delay(attempt, problem.retry_after)
                log.warning("openai backend: %s: %s; retry %d of %d in %.1f s", url, problem.message,
                            attempt + 1, self.max_retries, delay)
                if cancel is None:
                    time.sleep(delay)
                elif cancel.wait(delay):
                    raise Cancelled("openai backend: cancelled") from None
        raise AssertionError("unreachable")

    def try_once(self, url: str, payload: Any = None, *, prompt: str = "") -> Any:
        """One try of :meth:`request`, for callers that retry elsewhere (replicas).

        Raises:
            Retryable: a failure worth another try (429/5xx, no connection, a timeout).
            HTTPStatusError: a status not worth retrying. NotJSON: the answer is not JSON.
        """
        return self._once(url, _encode(payload), prompt)

    def delay(self, attempt: int, retry_after: float | None) -> float:
        """Seconds to wait before retry ``attempt + 1``: ``Retry-After`` if given, else the jittered backoff."""
        if retry_after is not None:
            return min(max(retry_after, 0.0), MAX_DELAY_S)
        return min(self.backoff * 2 ** attempt * random.uniform(0.5, 1.0), MAX_DELAY_S)

    def _once(self, url: str, data: bytes | None, prompt: str) -> Any:
        req = urllib.request.Request(url, data=data, headers=self._headers, method="GET" if data is None else "POST")
        try:
            with self._opener.open(req, timeout=self.timeout) as response:
                raw = response.read()
        except urllib.error.HTTPError as exc:
            status = exc.code
            try:
                raw_error = exc.read()
            except (OSError, http.client.HTTPException):
                raw_error = b""
            finally:
                exc.close()
            message = self.scrub(server_message(raw_error) or (exc.reason or ""), prompt)
            what = f"HTTP {status}" + (f": {message}" if message else "")
            if status in RETRY_STATUSES:
                raise Retryable(what, retry_after(exc.headers.get("Retry-After") if exc.headers else None)) from None
            if 300 <= status < 400:
                location = exc.headers.get("Location", "") if exc.headers else ""
                what += f" (redirects are not followed; point base_url at {public_url(location)})" if location else ""
            raise HTTPStatusError(f"openai backend: {url}: {what}", status) from None
        except (TimeoutError, socket.timeout):
            raise Retryable(f"no answer within {self.timeout:g} s") from None
        except urllib.error.URLError as exc:
            reason = exc.reason
            if isinstance(reason, (TimeoutError, socket.timeout)):
                raise Retryable(f"no answer within {self.timeout:g} s") from None
            raise Retryable(f"cannot connect ({self.scrub(one_line(str(reason)), prompt)})") from None
        except (ConnectionError, http.client.HTTPException, OSError) as exc:
            raise Retryable(f"connection failed ({type(exc).__name__})") from None
        try:
            return json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise NotJSON(f"openai backend: {url}: the answer is not JSON") from None

    def scrub(self, message: str, prompt: str) -> str:
        """The server's message without secrets or pieces of the prompt, one line, bounded."""
        for secret in self._secrets:
            message = message.replace(secret, "***")
        message = message[:4 * _MESSAGE_CHARS]  # an HTML error page needs no more
        message = drop_fragments(message, prompt)
        message = one_line(message)
        return message if len(message) <= _MESSAGE_CHARS else message[:_MESSAGE_CHARS - 1] + "…"


def _encode(payload: Any) -> bytes | None:
    return None if payload is None else json.dumps(payload, ensure_ascii=False).encode("utf-8")


def public_url(url: str) -> str:
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


def one_line(text: str) -> str:
    return " ".join(str(text).split())


def server_message(raw: bytes) -> str:
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


def drop_fragments(message: str, prompt: str) -> str:
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


def retry_after(value: str | None) -> float | None:
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
