"""The HTTP routes: ``/v1/analyze``, ``/v1/moderations``, ``/v1/tasks``, ``/health``, ``/metrics`` and the review page.

Every mistake in a request is a 4xx whose body names the field (``{"error": {"message",
"type", "param"}, "detail": [...]}``, the error shape OpenAI's clients read); post text never
reaches the logs. With an API key every route but ``/health`` needs ``Authorization: Bearer KEY``
(compared in constant time).
"""

from __future__ import annotations

import asyncio
import hmac
import json
import threading
import time
from datetime import datetime, timezone
from importlib import resources
from pathlib import Path
from typing import Annotated, Literal, Union

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from mentalglm.core.prediction import Post
from mentalglm.serve import moderation as mod
from mentalglm.serve.engine import Engine, NotReady, QueueFull

ROUTES = ("/", "/health", "/metrics", "/v1/tasks", "/v1/analyze", "/v1/moderations", "/openapi.json",
          "/static/app.js", "/static/style.css")


class PostIn(BaseModel):
    """A post with the client's own id."""

    model_config = ConfigDict(extra="forbid")
    id: Annotated[str, StringConstraints(min_length=1, max_length=200)]
    text: str


class AnalyzeRequest(BaseModel):
    """``POST /v1/analyze``: posts (text, or ``{id, text}``) for one served task."""

    model_config = ConfigDict(extra="forbid")
    task: str
    posts: list[Union[str, PostIn]] = Field(min_length=1)
    explain: bool = True


class ModerationRequest(BaseModel):
    """``POST /v1/moderations`` as OpenAI's API takes it."""

    model_config = ConfigDict(extra="ignore")
    input: Union[str, list[str]]
    model: str | None = None


class ApiError(Exception):
    """A request the service refuses: HTTP status, message, the field at fault."""

    def __init__(self, status: int, message: str, param: str | None = None, kind: str = "invalid_request_error",
                 headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.kind, self.headers = status, message, param, kind, headers


def _error(status: int, message: str, param: str | None = None, kind: str = "invalid_request_error",
           detail: list | None = None, headers: dict | None = None) -> JSONResponse:
    body = {"error": {"message": message, "type": kind, "param": param, "code": None}}
    if detail is not None:
        body["detail"] = detail
    return JSONResponse(body, status_code=status, headers=headers)


#: The names pydantic puts in an error's location for the alternatives of a union.
_UNION_TAGS = frozenset({"str", "PostIn", "list[str]"})


def _field(loc) -> str:
    parts = [p for p in loc if p != "body"]
    text = ""
    for part in parts:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "body"


class Guard:
    """ASGI middleware, outermost: the API key, a declared body size over the cap, and each request's metrics.

    Plain ASGI rather than Starlette's ``BaseHTTPMiddleware``, which hides a client's disconnect from
    the route (the route polls for it to free the place of a client that went away).
    """

    def __init__(self, app, *, api_key: str | None, max_body_bytes: int, metrics):
        self.app, self.api_key, self.max_body_bytes, self.metrics = app, api_key, max_body_bytes, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started, path = time.perf_counter(), scope["path"]
        status = [500]

        async def sending(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            refusal = self._refusal(path, {k.decode("latin-1").lower(): v.decode("latin-1")
                                           for k, v in scope.get("headers", [])})
            if refusal is not None:
                await refusal(scope, receive, sending)
            else:
                await self.app(scope, receive, sending)
        finally:
            self.metrics.request(path if path in ROUTES else "other", status[0], time.perf_counter() - started)

    def _refusal(self, path: str, headers: dict):
        if self.api_key is not None and path != "/health":
            scheme, _, token = headers.get("authorization", "").partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), self.api_key.encode()):
                return _error(401, "missing or wrong API key (Authorization: Bearer KEY)", kind="authentication_error",
                              headers={"WWW-Authenticate": "Bearer"})
        length = headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_body_bytes):
            return _error(413, f"the request body is larger than {self.max_body_bytes} bytes", kind="request_too_large")
        return None


class BodyLimit:
    """ASGI middleware: a request body longer than ``limit`` bytes is answered 413 before any route reads it."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] != "POST":
            return await self.app(scope, receive, send)
        messages, size = [], 0
        while True:
            message = await receive()
            messages.append(message)
            if message["type"] != "http.request":
                break
            size += len(message.get("body", b""))
            if size > self.limit:
                response = _error(413, f"the request body is larger than {self.limit} bytes", kind="request_too_large")
                return await response(scope, receive, send)
            if not message.get("more_body"):
                break
        replay = iter(messages)

        async def replayed():
            return next(replay, None) or await receive()

        return await self.app(scope, replayed, send)


class AuditLog:
    """JSONL of every answer: time, route, task, id, labels, decision, digests; the post text only if asked."""

    def __init__(self, path: str | Path, with_text: bool):
        self.path, self.with_text = Path(path), with_text
        self._lock = threading.Lock()

    def write(self, route: str, task: str, post: Post, prediction, decision: str | None, digests: dict) -> None:
        """Append one line (flushed before the answer is sent)."""
        row = {"time": datetime.now(timezone.utc).isoformat(timespec="milliseconds"), "route": route, "task": task,
               "id": post.id, "labels": prediction.labels, "valid": prediction.valid, "decision": decision,
               "model_sha256": digests.get("model_sha256"),
               "calibration_sha256": (digests.get("calibration_sha256") or {}).get(task)}
        if self.with_text:
            row["text"] = post.text
        line = json.dumps(row, ensure_ascii=False) + "\n"
        with self._lock, self.path.open("a", encoding="utf-8") as handle:
            handle.write(line)


def create_app(engine: Engine, metrics, *, api_key: str | None = None, max_posts: int = 64,
               max_chars: int = 4000, truncate: bool = False, max_body_bytes: int = 1 << 20,
               audit: AuditLog | None = None, model_name: str = "mentalglm") -> FastAPI:
    """The service's ASGI application over a started :class:`~mentalglm.serve.engine.Engine`."""
    app = FastAPI(title="mentalglm", version="1", docs_url=None, redoc_url=None,  # the docs pages load a CDN
                  description="Explainable mental-health analysis of Chinese posts. Not a clinical tool: route "
                              "high risk to trained people.")

    app.add_middleware(BodyLimit, limit=max_body_bytes)  # a body sent without Content-Length (chunked)
    app.add_middleware(Guard, api_key=api_key, max_body_bytes=max_body_bytes, metrics=metrics)  # outermost

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError):
        errors = [{**e, "loc": tuple(p for p in e.get("loc", ()) if p not in _UNION_TAGS)} for e in exc.errors()]
        # Of a union's alternatives, the error that went deepest says most (posts[0].text: missing).
        first = max(errors, key=lambda e: len(e["loc"])) if errors else {"loc": ("body",), "msg": "invalid request"}
        detail = [{"loc": list(e.get("loc", ())), "msg": e.get("msg"), "type": e.get("type")} for e in errors]
        if first.get("type") == "json_invalid":  # its loc is ("body", character offset)
            where = [p for p in first.get("loc", ()) if isinstance(p, int)]
            at = f" at character {where[0]}" if where else ""
            return _error(422, f"field 'body': invalid JSON{at}: {first.get('ctx', {}).get('error', first.get('msg'))}",
                          "body", detail=detail)
        field = _field(first.get("loc", ()))
        return _error(422, f"field '{field}': {first.get('msg')}", field, detail=detail)

    @app.exception_handler(ApiError)
    async def refused(request: Request, exc: ApiError):
        return _error(exc.status, exc.message, exc.param, exc.kind, headers=exc.headers)

    # -- health, metrics, tasks --------------------------------------------------------------------
    @app.get("/health")
    async def health():
        """200 when the model is loaded; 503 while it loads or if it failed."""
        if engine.state == "ready":
            return {"status": "ok", "backend": engine.settings.backend, "model": engine.settings.model,
                    "tasks": list(engine.tasks)}
        return JSONResponse({"status": engine.state, "error": engine.error}, status_code=503)

    @app.get("/metrics")
    async def prometheus():
        """Prometheus text: requests by route and status, latency, posts, invalid answers, queue, batch sizes."""
        return PlainTextResponse(metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    @app.get("/v1/tasks")
    async def served_tasks():
        """The served tasks: kind, labels, mode, calibration, and whether they back /v1/moderations."""
        return {"tasks": [{"name": name, "kind": task.kind, "labels": list(getattr(task, "label_names", ())),
                           "mode": engine.mode(name), "calibrated": name in engine.settings.calibrations,
                           "policy": engine.policy(name), "moderation": engine.moderation and name == mod.RISK_TASK}
                          for name, task in engine.tasks.items()]}

    # -- analysis ------------------------------------------------------------------------------------
    def _posts(raw: list, param: str) -> list[Post]:
        if len(raw) > max_posts:
            raise ApiError(422, f"field '{param}': at most {max_posts} posts per request, got {len(raw)}", param)
        posts, seen = [], set()
        for i, item in enumerate(raw):
            post_id, text = (str(i + 1), item) if isinstance(item, str) else (item.id, item.text)
            where = f"{param}[{i}]" if isinstance(item, str) else f"{param}[{i}].text"
            if not text.strip():
                raise ApiError(422, f"field '{where}': the post is empty", where)
            if len(text) > max_chars:
                if not truncate:
                    raise ApiError(422, f"field '{where}': {len(text)} characters, more than the {max_chars} allowed "
                                        "(the service truncates only when started with --truncate)", where)
                text = text[:max_chars]
            if post_id in seen:
                raise ApiError(422, f"field '{param}[{i}].id': '{post_id}' is given twice", f"{param}[{i}].id")
            seen.add(post_id)
            posts.append(Post(id=post_id, text=text))
        return posts

    async def _predict(request: Request, task: str, posts: list[Post], explain: bool) -> list:
        try:
            job = engine.submit(task, posts, explain)
        except NotReady as exc:
            raise ApiError(503, f"the model is not ready: {exc}", kind="service_unavailable",
                           headers={"Retry-After": "5"}) from None
        except QueueFull:
            raise ApiError(429, "the queue is full; retry shortly", kind="rate_limit_exceeded",
                           headers={"Retry-After": "1"}) from None
        while True:
            done, _ = await asyncio.wait({job.future}, timeout=0.1)
            if done:
                break
            if await request.is_disconnected():
                engine.cancel(job)
                raise ApiError(499, "the client closed the request", kind="client_closed_request")
        try:
            return job.future.result()
        except Exception as exc:  # noqa: BLE001 -- a backend failure, in one line, without the post
            raise ApiError(500, f"the backend failed: {' '.join(str(exc).split())}", kind="server_error") from None

    @app.post("/v1/analyze")
    async def analyze(body: AnalyzeRequest, request: Request):
        """Predictions as the command line writes them, each with its review decision (calibrated tasks)."""
        if body.task not in engine.tasks:
            raise ApiError(422, f"field 'task': '{body.task}' is not served (served: {', '.join(engine.tasks)})",
                           "task")
        posts = _posts(body.posts, "posts")
        predictions = await _predict(request, body.task, posts, body.explain)
        out = []
        for post, prediction in zip(posts, predictions):
            decision = mod.decision(prediction)
            if audit is not None:
                audit.write("/v1/analyze", body.task, post, prediction, decision, engine.digests)
            out.append({**prediction.to_dict(), "decision": decision})
        return {"task": body.task, "model": engine.settings.model, "predictions": out}

    @app.post("/v1/moderations")
    async def moderations(body: ModerationRequest, request: Request):
        """OpenAI's moderation shape: self-harm and self-harm/intent from the suicide-risk task."""
        if not engine.moderation:
            raise ApiError(404, f"/v1/moderations needs the {mod.RISK_TASK} task (start with --task {mod.RISK_TASK})",
                           kind="not_found")
        texts = [body.input] if isinstance(body.input, str) else body.input
        if not texts:
            raise ApiError(422, "field 'input': give at least one text", "input")
        posts = _posts(texts, "input")
        predictions = await _predict(request, mod.RISK_TASK, posts, True)
        results = []
        for post, prediction in zip(posts, predictions):
            probabilities = prediction.probabilities
            if probabilities is None:  # --raw-scores: the label probabilities of score mode
                from mentalglm.analysis.calibration import label_probabilities

                probabilities = label_probabilities(prediction.scores or {}) if prediction.scores else {}
            probability = float(probabilities.get(mod.RISK_LABEL, 0.0))
            flagged = mod.RISK_LABEL in prediction.labels
            if audit is not None:
                audit.write("/v1/moderations", mod.RISK_TASK, post, prediction, mod.decision(prediction),
                            engine.digests)
            results.append(mod.moderation_result(prediction, probability, flagged, engine.digests))
        return mod.moderation_response(body.model or model_name, results)

    # -- the review page -----------------------------------------------------------------------------
    static = resources.files("mentalglm.serve") / "static"

    @app.get("/", response_class=HTMLResponse)
    async def page():
        """The reviewer's page (no CDN: everything is served from the package)."""
        return HTMLResponse((static / "index.html").read_text(encoding="utf-8"),
                            headers={"Content-Security-Policy": "default-src 'self'; img-src 'self' data:; "
                                                                "style-src 'self'; script-src 'self'"})

    @app.get("/static/{name}")
    async def asset(name: Literal["app.js", "style.css"]):
        """The page's script and style sheet."""
        media = "text/javascript" if name.endswith(".js") else "text/css"
        return Response((static / name).read_text(encoding="utf-8"), media_type=f"{media}; charset=utf-8")

    return app
