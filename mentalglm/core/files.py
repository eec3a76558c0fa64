"""Small file helpers every part of mentalglm shares: JSON read with one-line errors, JSON
written atomically, and the SHA-256 of a file.

Atomic writes matter because run folders are read back to resume: a reader must never see
half a ``run.json`` after a crash.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from mentalglm.core.errors import MentalGLMError


def read_json(path: str | Path, what: str = "JSON file") -> Any:
    """The parsed JSON in ``path``.

    Raises:
        MentalGLMError: the file is missing, unreadable, not JSON or nested too deeply, in one
            line that names the file.
    """
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise MentalGLMError(f"{path}: {what} not found") from None
    except RecursionError:
        raise MentalGLMError(f"{path}: {what} is nested too deeply to read") from None
    except (OSError, ValueError) as exc:
        raise MentalGLMError(f"{path}: unreadable {what} ({exc})") from None


def read_json_object(path: str | Path, what: str = "JSON file") -> dict:
    """Like :func:`read_json`, and the document must be a JSON object."""
    data = read_json(path, what)
    if not isinstance(data, dict):
        raise MentalGLMError(f"{path}: {what} is not a JSON object")
    return data


def write_json(path: str | Path, document: Any, *, indent: int | None = 2) -> Path:
    """Write ``document`` as UTF-8 JSON under a temporary name, then rename it into place.

    Returns:
        The path written.
    """
    path = Path(path)
    temporary = path.with_name(f".{path.name}.partial")
    temporary.write_text(json.dumps(document, ensure_ascii=False, indent=indent) + "\n", encoding="utf-8")
    os.replace(temporary, path)
    return path


def file_sha256(path: str | Path) -> str:
    """The SHA-256 of a file's bytes, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()

def digest(value: Any) -> str:
    """SHA-256 of a JSON-serialisable value (keys sorted), for fingerprints of settings."""
    text = json.dumps(value, ensure_ascii=False, sort_keys=True, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


#: Where content digests are remembered by (path, size, mtime): a 6 GB GGUF is hashed once, not per run.
DIGEST_CACHE = Path(os.environ.get("MENTALGLM_CACHE") or Path.home() / ".cache" / "mentalglm") / "digests.json"


def content_sha256(path: str | Path) -> str:
    """The SHA-256 of a file, or of a folder's files (relative names and each file's digest, in order).

    Digests are remembered by absolute path, size and modification time in :data:`DIGEST_CACHE`,
    so an unchanged model is not read again; a file rewritten in place gets a new mtime and is.
    The cache is read once and written once per call, however many files a folder holds.
    """
    path = Path(path).resolve()
    try:
        cache = json.loads(DIGEST_CACHE.read_text(encoding="utf-8"))
        if not isinstance(cache, dict):
            cache = {}
    except (OSError, ValueError):
        cache = {}
    changed = False

    def one(file: Path) -> str:
        nonlocal cache, changed
        stat = file.stat()
        key = f"{file}|{stat.st_size}|{stat.st_mtime_ns}"
        if isinstance(cache.get(key), str):
            return cache[key]
        value = file_sha256(file)
        cache = {k: v for k, v in cache.items() if not k.startswith(f"{file}|")}  # the file's older versions
        cache[key], changed = value, True
        return value

    if path.is_dir():
        result = digest([[p.relative_to(path).as_posix(), one(p)]
                         for p in sorted(p for p in path.rglob("*") if p.is_file())])
    else:
        result = one(path)
    if changed:
        try:
            DIGEST_CACHE.parent.mkdir(parents=True, exist_ok=True)
            write_json(DIGEST_CACHE, cache, indent=None)
        except OSError:
            pass  # a read-only home: the digest is still right, only not remembered
    return result


def yaml_problem(exc: Exception, text: str) -> tuple[int | None, str]:
    """The line (1-based, or None) and a one-line reason of a PyYAML error on ``text``.

    Parser errors carry a ``problem_mark``; reader errors (a character YAML does not allow) only a
    ``position`` in the text.
    """
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    if mark is not None:
        line = mark.line + 1
    elif isinstance(getattr(exc, "position", None), int):
        line = text[: exc.position].count("\n") + 1
    else:
        line = None
    reason = getattr(exc, "problem", None) or getattr(exc, "reason", None) or str(exc)
    return line, " ".join(str(reason).split())
