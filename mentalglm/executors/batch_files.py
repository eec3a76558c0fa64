"""OpenAI Batch API files: the requests of a run written out for ``vllm run-batch`` or the OpenAI Batch API,
and their results read back as predictions.

**Export.** One line per post: ``{"custom_id": POST_ID, "method": "POST", "url": …, "body": …}``.
The body is exactly what the ``openai`` backend would send (:meth:`OpenAIBackend.body
<mentalglm.backends.openai_backend.OpenAIBackend.body>`, written for the dialect of the
``server`` option without asking any server): the prompt rendered and PII-redacted as a run
would (redaction is on by default: the file leaves the machine), the task's answer constraint
in that dialect's field (vLLM ``structured_outputs``, llama.cpp ``grammar``; the plain OpenAI
dialect has none, so a constrained export there is refused), vLLM's ``stop_token_ids``. A
GLM-4 chat prompt goes to ``/v1/chat/completions`` as its turns (``messages``; vLLM's batch
runner takes nothing else, and GLM-4's chat template renders them back to the same text), and so
do the turns of ``--prompt server`` (the server's template renders them); any other prompt goes
to ``/v1/completions``. The settings go to ``REQUESTS.run.json`` beside the file,
as a run record does.

**Import.** Each result line (``custom_id``, ``response.status_code``, ``response.body``,
``error``) whose answer came back becomes a prediction in the format ``analyze`` writes
(:meth:`Analyzer.predict_from_output <mentalglm.analysis.analyzer.Analyzer.predict_from_output>`),
appended to the output with its run record beside it. Ids already there are skipped, so a
rerun appends nothing and the results of several batches can go into one file. Nothing is
dropped silently: error rows (``error`` set, or a status other than 200), answers outside the
constraint (the runner did not enforce it), custom_ids unknown to the requests file or seen
twice are counted, reported with their line and custom_id, and written to ``OUTPUT.errors.jsonl``.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Iterable

from mentalglm.analysis import run_record
from mentalglm.analysis.analyzer import Analyzer
from mentalglm.backends import server_dialects as dialects
from mentalglm.backends.openai_backend import OpenAIBackend, chat_messages, completion_text
from mentalglm.backends.openai_http import one_line
from mentalglm.core.errors import DataError, MentalGLMError
from mentalglm.core.files import digest, file_sha256, read_json, write_json
from mentalglm.core.prediction import Post, posts_digest
from mentalglm.data.readers import JsonlAppender, iter_json_objects, read_done_ids

log = logging.getLogger(__name__)

CHAT_URL, COMPLETIONS_URL = "/v1/chat/completions", "/v1/completions"
#: Kinds of result rows that are not imported.
PROBLEM_KINDS = ("error", "malformed", "unconstrained", "unknown", "duplicate")
_MESSAGE_CHARS = 200


def export_requests(analyzer: Analyzer, posts: Iterable[Post], output: str | os.PathLike, *,
                    data: str | None = None) -> dict:
    """Write one Batch API request per post to ``output`` and the settings to ``OUTPUT.run.json``.

    Args:
        analyzer: an Analyzer whose backend is an :class:`OpenAIBackend` with ``server`` set to a
            dialect (its task, prompt style, system message and redaction make the prompts).
        posts: the posts; a re-iterable stream (:class:`~mentalglm.data.readers.PostSource`) keeps
            memory flat (read once for the digest, once to write).
        output: the requests file (replaced as a whole, never half-written).
        data: the file the posts came from (recorded with its SHA-256).

    Returns:
        ``{"output", "record", "requests", "endpoint", "redactions"}``.

    Raises:
        OptionsError: ``server=auto``. MentalGLMError: a constrained export in the plain OpenAI
            dialect; DataError: a duplicate post id (file and line).
    """
    backend = analyzer.backend
    if not isinstance(backend, OpenAIBackend):
        raise MentalGLMError("batch files are written by the openai backend")
    info = backend.offline()
    if info.dialect == "openai" and backend.options.constrained:
        raise MentalGLMError("batch export --server openai: plain OpenAI completions take no grammar, so answers "
                             "cannot be constrained; add -O constrained=false to write unconstrained requests (their "
                             "answers are then parsed as they come)")
    chat = analyzer.prompt.name == "server" or chat_messages(analyzer.render(Post(id="probe", text="帖子"))) is not None
    url = CHAT_URL if chat else COMPLETIONS_URL
    if iter(posts) is posts:  # a one-shot iterator cannot be read twice
        posts = list(posts)
    posts_sha256, _ = posts.digest() if hasattr(posts, "digest") else (posts_digest(posts), None)
    output = Path(output)
    partial = output.with_name(output.name + ".part")
    count, redactions = 0, 0
    partial.unlink(missing_ok=True)
    try:
        with JsonlAppender(partial) as sink:
            for post in posts:
                request, flags = analyzer.request(post)
                redactions += sum((flags.get("redactions") or {}).values())
                sink.write({"custom_id": post.id, "method": "POST", "url": url,
                            "body": backend.body(request, chat=chat)})
                count += 1
        os.replace(partial, output)
    finally:
        partial.unlink(missing_ok=True)
    record = run_record.sidecar_path(output)
    write_json(record, {**analyzer.settings(), **run_record.data_settings(data, posts_sha256),
                        "batch": {"endpoint": url, "requests": count, "requests_sha256": file_sha256(output)}})
    return {"output": str(output), "record": str(record), "requests": count, "endpoint": url,
            "redactions": redactions}


def _export_record(requests: Path, task) -> tuple[dict, set[str]]:
    """The export's settings and the custom_ids of ``requests``, checked against the task and the file itself."""
    record_path = run_record.sidecar_path(requests)
    if not record_path.is_file():
        raise MentalGLMError(f"{requests}: no {record_path.name} beside it; write the requests with "
                             "mentalglm batch export")
    record = read_json(record_path, "batch export record")
    batch = record.get("batch") if isinstance(record, dict) else None
    if not isinstance(batch, dict):
        raise DataError(record_path, None, "batch", "missing: not the record of mentalglm batch export")
    if batch.get("requests_sha256") != file_sha256(requests):
        raise MentalGLMError(f"{requests} changed after {record_path.name} was written; export the requests again")
    if record.get("task") != task.name or record.get("task_sha256") != digest(task.describe()):
        raise MentalGLMError(f"{requests} was exported for task '{record.get('task')}' as it was then; "
                             f"import it with that task (given: '{task.name}')")
    known = set()
    for _, obj in iter_json_objects(requests):
        known.add(str(obj.get("custom_id")))
    return record, known


def _error_text(obj: dict) -> str | None:
    """Why a result row failed, one line, or None when it did not (``error`` unset and status 200)."""
    error = obj.get("error")
    if error is not None:
        if isinstance(error, dict):
            inner = error.get("error") if isinstance(error.get("error"), dict) else error
            error = inner.get("message") or inner.get("code") or error
        return one_line(str(error))[:_MESSAGE_CHARS] or "error"
    response = obj.get("response")
    status = response.get("status_code") if isinstance(response, dict) else None
    if status != 200:
        return f"HTTP {status}" if status is not None else "no response"
    return None


def import_results(task, results: str | os.PathLike, output: str | os.PathLike, *,
                   requests: str | os.PathLike | None = None, strict_format: bool = False,
                   unchecked: bool = False, plugins=None) -> dict:
    """Append the predictions of a Batch API results file to ``output`` (idempotent, resumable).

    Args:
        task: the task the requests were written for.
        results: the results JSONL (``vllm run-batch -o``, the OpenAI Batch API's output file).
        output: the predictions JSONL (``analyze --output`` format), with ``OUTPUT.run.json``.
        requests: the exported requests file: custom_ids are checked against it, answers against
            the constraint it sent, and its settings go into the run record. Without it neither
            check can be made, so the import is refused unless ``unchecked``.
        strict_format: only answers with a label line count as valid.
        unchecked: import without ``requests``: every prediction is marked ``"unchecked": true``
            (and the run record says so), and re-scoring them with ``replay`` counts them in
            ``metrics.json`` (``backend_stats.unchecked_outputs``).
        plugins: the plugin manager (``on_prediction`` fires for each new prediction).

    Returns:
        The summary: ``rows``, ``imported``, ``already`` (done before), ``invalid``, ``problems``
        (count), ``by_kind``, ``first_problems`` (up to 20: line, custom_id, kind, message),
        ``missing`` (requested ids with no prediction yet; None without ``requests``),
        ``errors_file``.

    Raises:
        MentalGLMError: no ``requests`` and not ``unchecked``, the output holds predictions made with
            other settings, or the requests file does not match its record or the task.
    """
    results, output = Path(results), Path(output)
    if requests is None and not unchecked:
        raise MentalGLMError("batch import: without --requests the custom_ids cannot be checked against what was "
                             "sent, nor the answers against the constraint; give --requests REQUESTS.jsonl, or "
                             "--unchecked to import them marked unchecked")
    if requests is not None and unchecked:
        raise MentalGLMError("batch import: --unchecked is for imports without --requests; with it every row is "
                             "checked")
    record, known = _export_record(Path(requests), task) if requests is not None else (None, None)
    if record is None:
        log.warning("batch import --unchecked: custom_ids are not checked against what was sent, nor the answers "
                    "against the constraint; the predictions are marked unchecked")
    constraint = None
    options = (record or {}).get("options") or {}
    if record is not None and options.get("constrained"):
        constraint = dialects.constraint(record["server"]["dialect"], task.response_format(),
                                         label_only=options.get("answer") == "label",
                                         grammar_field=options.get("grammar_field"))
    # The Analyzer only parses here (predict_from_output); this backend is never connected.
    holder = OpenAIBackend((record or {}).get("model") or "batch", {"server": "openai", "constrained": False})
    analyzer = Analyzer(task, backend=holder, strict_format=strict_format, plugins=plugins)
    done = read_done_ids(output)
    settings = {"source": "batch import", "task": task.name, "task_sha256": digest(task.describe()),
                "strict_format": strict_format, "export": record, **({"unchecked": True} if unchecked else {})}
    run_record.claim(run_record.sidecar_path(output), settings, output=output, has_predictions=bool(done),
                     retry_hint="use another -o or delete it and its .run.json")
    problems: list[dict] = []
    seen: dict[str, int] = {}
    rows = imported = already = invalid = 0

    def problem(line: int, custom_id: Any, kind: str, message: str) -> None:
        problems.append({"line": line, "custom_id": custom_id, "kind": kind, "message": message})

    with JsonlAppender(output) as sink:
        for line, obj in iter_json_objects(results):
            rows += 1
            custom_id = obj.get("custom_id")
            if not isinstance(custom_id, str) or not custom_id:
                problem(line, custom_id, "malformed", "no custom_id")
                continue
            if custom_id in seen:
                problem(line, custom_id, "duplicate", f"custom_id seen before (line {seen[custom_id]})")
                continue
            seen[custom_id] = line
            if known is not None and custom_id not in known:
                problem(line, custom_id, "unknown", f"custom_id is not in {Path(requests).name}")
                continue
            if custom_id in done:
                already += 1
                continue
            error = _error_text(obj)
            if error is not None:
                problem(line, custom_id, "error", error)
                continue
            body = obj["response"].get("body")
            text, choice = completion_text(body)
            if text is None:
                problem(line, custom_id, "malformed", "response.body has no choices[0].message.content or .text")
                continue
            violation = constraint.violation(text, choice.get("finish_reason") or "stop") if constraint else None
            if violation:
                problem(line, custom_id, "unconstrained", f"the answer {violation}: the batch runner did not enforce "
                                                          f"the constraint sent as {constraint.sent_as}")
                continue
            # Results hold no post text, so quotes are not grounded here (evidence stays None).
            prediction = analyzer.predict_from_output(Post(id=custom_id, text=""), text, ground=False)
            usage = body.get("usage") if isinstance(body, dict) else None
            prediction.usage = {k: v for k, v in (usage or {}).items()
                                if k in ("prompt_tokens", "completion_tokens") and isinstance(v, int)}
            sink.write({**prediction.to_dict(), **({"unchecked": True} if unchecked else {})})
            analyzer.plugins.notify_prediction(prediction, task)
            done.add(custom_id)
            imported += 1
            invalid += not prediction.valid
    errors_file = output.with_name(output.name + ".errors.jsonl")
    if problems:
        _write_rows(errors_file, problems)
    else:
        errors_file.unlink(missing_ok=True)  # no stale list from an earlier import
    by_kind = {kind: n for kind in PROBLEM_KINDS if (n := sum(p["kind"] == kind for p in problems))}
    return {"output": str(output), "results": str(results), "rows": rows, "imported": imported, "already": already,
            "invalid": invalid, "problems": len(problems), "by_kind": by_kind, "first_problems": problems[:20],
            "missing": len(known - done) if known is not None else None,
            "errors_file": str(errors_file) if problems else None}


def _write_rows(path: Path, rows: list[dict]) -> None:
    import json

    partial = path.with_name(path.name + ".part")
    partial.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    os.replace(partial, path)
