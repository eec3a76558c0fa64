"""The settings a set of predictions was made with, kept next to them so a rerun never mixes settings.

Every output that a run appends to (``evaluate``'s ``predictions.jsonl``, ``analyze
--output FILE``) has a record: ``run.json`` in an evaluation folder, ``FILE.run.json`` beside
an analysis file. It holds everything that changes a prediction — task definition, backend,
model, prompt template, system message, mode, redaction, format strictness, every backend
option (``max_new_tokens``, ``n_ctx``… so truncation too) and the data's SHA-256. A rerun
with the same settings resumes; any difference is refused with one line naming the
setting, as ``mentalglm train`` does for its data.

Not recorded, because it does not change what a post's prediction is: batch size, progress
display, and the output path itself.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from mentalglm.core.errors import MentalGLMError
from mentalglm.core.files import file_sha256, read_json, write_json


def sidecar_path(output: str | Path) -> Path:
    """Where the record of an analysis output file lives: ``FILE.run.json`` beside it."""
    output = Path(output)
    return output.with_name(output.name + ".run.json")




def data_settings(source: str | Path | None, posts_sha256: str) -> dict:
    """What identifies the data: its name, the SHA-256 of its file (when it is one), and of the posts read.

    Args:
        source: the data as the user named it (a file, ``sample:NAME``, a card), or None.
        posts_sha256: :func:`mentalglm.core.prediction.posts_digest` of the posts as read (mapping applied).
    """
    from mentalglm.data.readers import resolve_path

    path = resolve_path(source) if source is not None and not str(source).startswith("hf:") else None
    return {"data": None if source is None else str(source),
            "data_sha256": file_sha256(path) if path is not None and path.is_file() else None,
            "posts_sha256": posts_sha256}


def _flatten(settings: dict, prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in settings.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _shown(value: Any) -> str:
    text = "missing" if value is _MISSING else json.dumps(value, ensure_ascii=False)
    return text if len(text) <= 40 else text[:37] + "…"


_MISSING = object()


def differences(previous: dict, current: dict) -> list[str]:
    """``setting (was X, now Y)`` for every setting that differs, nested options as ``options.KEY``.

    Fingerprints (``*_sha256``) are named only when no plain setting explains the difference:
    a new system message also changes the prompt's fingerprint, and the message says "system".
    """
    old, new = _flatten(previous), _flatten(current)
    changed = [key for key in sorted(set(old) | set(new)) if old.get(key, _MISSING) != new.get(key, _MISSING)]
    plain = [key for key in changed if not key.endswith("_sha256")]
    return [f"{key} (was {_shown(old.get(key, _MISSING))}, now {_shown(new.get(key, _MISSING))})"
            for key in (plain or changed)]


def claim(record: str | Path, settings: dict, *, output: str | Path, has_predictions: bool, retry_hint: str) -> None:
    """Make ``record`` describe ``settings``, or refuse when the predictions on disk were made otherwise.

    Args:
        record: the record file (``run.json`` or ``FILE.run.json``).
        settings: everything that changes a prediction, JSON-ready.
        output: the predictions file the record belongs to (for messages).
        has_predictions: whether the output already holds predictions; without any, an old
            record is simply replaced.
        retry_hint: how to start afresh (``use another --output-dir or delete it``).

    Raises:
        MentalGLMError: predictions exist and were made with other settings, or with none recorded.
    """
    record = Path(record)
    if has_predictions:
        if not record.exists():
            raise MentalGLMError(f"{output} holds predictions with no record of their settings ({record} is missing); "
                                 f"{retry_hint}")
        previous = read_json(record, "run record")
        if not isinstance(previous, dict):
            raise MentalGLMError(f"{record}: run record is not a JSON object; {retry_hint}")
        changed = differences(previous, settings)
        if changed:
            shown = "; ".join(changed[:3]) + (f"; and {len(changed) - 3} more" if len(changed) > 3 else "")
            raise MentalGLMError(f"{record} records predictions made with other settings: {shown}; {retry_hint}")
        return
    try:
        record.parent.mkdir(parents=True, exist_ok=True)
        write_json(record, settings)
    except OSError as exc:
        raise MentalGLMError(f"{record}: cannot write the run record: {exc.strerror or exc}") from None
