"""``mentalglm serve``: one loaded model, several tasks, over HTTP on loopback unless given an API key."""

from __future__ import annotations

import ipaddress
import logging
import os

from mentalglm.cli.common import at_least, parse_options, plugins
from mentalglm.core.errors import MentalGLMError

log = logging.getLogger(__name__)


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def api_key(host: str, key_env: str | None, insecure: bool) -> str | None:
    """The API key the service demands, or None; binding beyond loopback without one is refused.

    Raises:
        MentalGLMError: a non-loopback host without ``--api-key-env`` (and without ``--insecure``),
            or a named variable that is empty.
    """
    if key_env:
        key = os.environ.get(key_env, "")
        if not key:
            raise MentalGLMError(f"serve: --api-key-env {key_env}: the environment variable is empty or unset")
        return key
    if not _loopback(host) and not insecure:
        raise MentalGLMError(f"serve: --host {host} would expose the service beyond this machine: give "
                             "--api-key-env NAME (clients send Authorization: Bearer KEY), or --insecure")
    return None


def _calibrations(values: list[str] | None) -> dict[str, str]:
    out = {}
    for value in values or []:
        task, sep, path = value.partition("=")
        if not sep or not task or not path:
            raise MentalGLMError(f"--calibration expects TASK=FILE, got '{value}'")
        out[task] = path
    return out


def cmd_serve(args) -> int:
    """Start the service; it answers 503 on /health until the model has loaded."""
    try:
        import uvicorn
    except ModuleNotFoundError:
        raise MentalGLMError("serve needs the [serve] extra: pip install 'mentalglm[serve]'") from None
    from mentalglm.serve.app import AuditLog, create_app
    from mentalglm.serve.engine import Engine, ServeSettings
    from mentalglm.serve.metrics import Metrics

    key = api_key(args.host, args.api_key_env, args.insecure)
    if args.max_posts > args.queue_size:
        raise MentalGLMError(f"serve: --max-posts {args.max_posts} is more than --queue-size {args.queue_size}: "
                             "a request that size could never be queued")
    if args.audit_log:  # a path that cannot be written fails now, not at the first answer
        try:
            with open(args.audit_log, "a", encoding="utf-8"):
                pass
        except OSError as exc:
            raise MentalGLMError(f"serve: --audit-log {args.audit_log}: cannot write it ({exc.strerror or exc})") \
                from None
    settings = ServeSettings(tasks=args.task, backend=args.backend, model=args.model, prompt=args.prompt,
                             system=args.system, options=parse_options(args.option),
                             calibrations=_calibrations(args.calibration), raw_scores=args.raw_scores,
                             moderation=not args.no_moderation, max_batch=args.max_batch,
                             batch_wait=args.batch_wait_ms / 1000, queue_size=args.queue_size)
    metrics = Metrics()
    engine = Engine(settings, metrics, plugins=plugins())
    audit = AuditLog(args.audit_log, args.audit_text) if args.audit_log else None
    app = create_app(engine, metrics, api_key=key, max_posts=args.max_posts, max_chars=args.max_chars,
                     truncate=args.truncate, max_body_bytes=args.max_body_bytes, audit=audit)
    engine.start()
    print(f"mentalglm serve: http://{args.host}:{args.port}/ ({'API key required' if key else 'no API key'}; "
          "/health answers 503 until the model is loaded)", flush=True)
    try:
        uvicorn.run(app, host=args.host, port=args.port, log_level="info" if args.verbose else "warning",
                    access_log=bool(args.verbose))  # access lines hold paths only, never bodies
    finally:
        engine.stop()
    return 0


def add_parser(sub) -> None:
    """Add ``serve``."""
    p = sub.add_parser("serve", help="the analysis as an HTTP service: /v1/analyze, /v1/moderations (OpenAI's "
                                     "shape), /health, /metrics and a review page")
    p.add_argument("--task", action="append", required=True, metavar="TASK",
                   help="a task to serve (repeatable; names or task files)")
    p.add_argument("--backend", default="llamacpp", help="backend name (default llamacpp)")
    p.add_argument("--model", help="what the backend loads")
    p.add_argument("--prompt", default="glm4-chat", help="prompt style (as for analyze)")
    p.add_argument("--system", help="system message for chat prompt styles")
    p.add_argument("-O", "--option", action="append", metavar="KEY=VALUE", help="backend option (repeatable)")
    p.add_argument("--calibration", action="append", metavar="TASK=FILE",
                   help="a calibration of a task (mentalglm calibrate): its predictions get calibrated probabilities, "
                        "needs_review and a decision (score mode)")
    p.add_argument("--raw-scores", action="store_true",
                   help="let /v1/moderations report uncalibrated label probabilities when suicide-risk has no "
                        "--calibration")
    p.add_argument("--no-moderation", action="store_true", help="do not serve /v1/moderations")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1; any other needs "
                                                       "--api-key-env or --insecure)")
    p.add_argument("--port", type=int, default=8080, help="port (default 8080)")
    p.add_argument("--api-key-env", metavar="NAME", help="environment variable holding the API key clients must send")
    p.add_argument("--insecure", action="store_true", help="allow a non-loopback --host without an API key")
    p.add_argument("--max-batch", type=at_least(1), metavar="N",
                   help="most posts per backend call (default: the backend's preferred batch)")
    p.add_argument("--batch-wait-ms", type=at_least(0), default=20, metavar="MS",
                   help="how long to wait for more clients' posts after the first (default 20)")
    p.add_argument("--queue-size", type=at_least(1), default=256, metavar="N",
                   help="most posts waiting; more are answered 429 with Retry-After (default 256)")
    p.add_argument("--max-posts", type=at_least(1), default=64, metavar="N", help="posts per request (default 64)")
    p.add_argument("--max-chars", type=at_least(1), default=4000, metavar="N",
                   help="characters per post; longer is a 422 unless --truncate (default 4000)")
    p.add_argument("--truncate", action="store_true", help="cut longer posts to --max-chars instead of refusing them")
    p.add_argument("--max-body-bytes", type=at_least(1), default=1 << 20, metavar="N",
                   help="request body size cap; larger is a 413 (default 1 MiB)")
    p.add_argument("--audit-log", metavar="FILE", help="append one JSON line per answer: time, task, id, labels, "
                                                       "decision, model and calibration digests")
    p.add_argument("--audit-text", action="store_true", help="also write the post text into the audit log")
    p.set_defaults(func=cmd_serve)
