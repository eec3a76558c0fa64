"""Reading posts and C-IMHI records, writing predictions; every input error names file, line and field.

Accepted inputs (UTF-8 with or without BOM, LF or CRLF):

- C-IMHI records: JSON array or JSONL of ``{"instruction", "input", "output"}`` objects;
- post files: JSONL with ``id`` (optional, defaults to the line number), ``text`` and an
  optional ``label``; CSV with a header holding ``text`` (and optionally ``id``, ``label``);
  ``.txt`` with one post per non-empty line.

The synthetic samples shipped with the package are addressed as ``sample:NAME``.
"""

from __future__ import annotations

import csv
import io
import json
import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Iterator

from .errors import DataError, MentalGLMError
from .prediction import Post

POST_SUFFIXES = (".jsonl", ".ndjson", ".json", ".csv", ".tsv", ".txt")
SAMPLE_SCHEME = "sample:"


@dataclass
class Record:
    """A C-IMHI instruction record (what fine-tuning reads).

    Attributes:
        instruction: the task instruction.
        input: the post.
        output: the response: label line and explanation.
        id: the record's ``id`` or its position in the file.
        line: the line it starts on.
    """

    instruction: str
    input: str
    output: str
    id: str
    line: int


def sample_names() -> list[str]:
    """Names of the synthetic sample files shipped in ``mentalglm/samples``."""
    folder = resources.files("mentalglm") / "samples"
    return sorted(p.name[: -len(".jsonl")] for p in folder.iterdir() if p.name.endswith(".jsonl"))


def resolve_path(spec: str | os.PathLike) -> Path:
    """A filesystem path for ``spec``; ``sample:NAME`` means a shipped synthetic sample.

    Raises:
        MentalGLMError: an unknown sample name (the message lists the available ones).
    """
    text = os.fspath(spec)
    if not text.startswith(SAMPLE_SCHEME):
        return Path(text)
    name = text[len(SAMPLE_SCHEME):]
    names = sample_names()
    if name not in names:
        from .errors import UnknownNameError

        raise UnknownNameError("sample", name, names)
    return Path(str(resources.files("mentalglm") / "samples" / f"{name}.jsonl"))


def _read_text(path: Path) -> str:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise DataError(path, None, None, "no such file") from None
    except IsADirectoryError:
        raise DataError(path, None, None, "is a directory, expected a file") from None
    except OSError as exc:
        raise DataError(path, None, None, f"cannot read: {exc.strerror or exc}") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise DataError(path, line, None, f"not valid UTF-8 (byte 0x{raw[exc.start]:02x}); save the file as UTF-8") from None
    return text.replace("\r\n", "\n").replace("\r", "\n")


def iter_json_objects(path: Path) -> Iterator[tuple[int, dict]]:
    """(line, object) pairs of a JSONL file or a JSON array file; blank JSONL lines are skipped.

    Raises:
        DataError: malformed JSON or an item that is not an object, with its line.
    """
    text = _read_text(path)
    stripped = text.lstrip()
    if stripped.startswith("["):
        yield from _iter_json_array(path, text)
        return
    for number, line in enumerate(text.split("\n"), 1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(path, number, None, f"malformed JSON: {exc.msg} (column {exc.colno})") from None
        if not isinstance(value, dict):
            raise DataError(path, number, None, f"expected a JSON object, got {type(value).__name__}")
        yield number, value


def _iter_json_array(path: Path, text: str) -> Iterator[tuple[int, dict]]:
    """Walk a JSON array item by item so each item's line number is known."""
    decoder = json.JSONDecoder()
    position = text.index("[") + 1

    def line_at(offset: int) -> int:
        return text.count("\n", 0, offset) + 1

    def skip(offset: int) -> int:
        while offset < len(text) and text[offset] in " \t\n":
            offset += 1
        return offset

    position = skip(position)
    if position < len(text) and text[position] == "]":
        return
    while True:
        position = skip(position)
        try:
            value, end = decoder.raw_decode(text, position)
        except json.JSONDecodeError as exc:
            raise DataError(path, line_at(exc.pos), None, f"malformed JSON: {exc.msg}") from None
        if not isinstance(value, dict):
            raise DataError(path, line_at(position), None, f"expected a JSON object, got {type(value).__name__}")
        yield line_at(position), value
        position = skip(end)
        if position < len(text) and text[position] == ",":
            position += 1
            continue
        if position < len(text) and text[position] == "]":
            if text[position + 1:].strip():
                raise DataError(path, line_at(position + 1), None, "malformed JSON: extra data after the array")
            return
        raise DataError(path, line_at(position), None, "malformed JSON: expected ',' or ']' in the array")


def _string_field(path: Path, line: int, obj: dict, name: str, *, required: bool = True,
                  allow_empty: bool = False) -> str | None:
    if name not in obj or obj[name] is None:
        if required:
            raise DataError(path, line, name, "missing")
        return None
    value = obj[name]
    allowed = (str, int) if name == "id" else (str,)  # numeric ids are common in exported data
    if isinstance(value, bool) or not isinstance(value, allowed):
        raise DataError(path, line, name, f"expected a string, got {type(value).__name__}")
    value = str(value)
    if not allow_empty and not value.strip():
        raise DataError(path, line, name, "empty")
    return value


def read_records(path: str | os.PathLike) -> list[Record]:
    """Read C-IMHI instruction records (JSON array or JSONL) for fine-tuning.

    Raises:
        DataError: unreadable file, malformed JSON, a missing/empty ``instruction``, ``input``
            or ``output``, a duplicate id, or a file with no records.
    """
    path = resolve_path(path)
    records, seen = [], {}
    for number, obj in iter_json_objects(path):
        record_id = _string_field(path, number, obj, "id", required=False) or str(len(records) + 1)
        if record_id in seen:
            raise DataError(path, number, "id", f"duplicate id '{record_id}' (first on line {seen[record_id]})")
        seen[record_id] = number
        records.append(Record(
            instruction=_string_field(path, number, obj, "instruction"),
            input=_string_field(path, number, obj, "input", allow_empty=True),
            output=_string_field(path, number, obj, "output"),
            id=record_id, line=number))
    if not records:
        raise DataError(path, None, None, "no records found")
    return records


def _gold(path: Path, line: int, field: str, task, value: Any, from_output: bool):
    try:
        return task.gold_from_output(value) if from_output else task.gold_from_value(value)
    except ValueError as exc:
        raise DataError(path, line, field, str(exc)) from None


def _post_from_object(path: Path, number: int, obj: dict, position: int, task) -> Post:
    if "text" in obj:
        text = _string_field(path, number, obj, "text")
        post = Post(id="", text=text, line=number)
        label_field = "label" if "label" in obj else ("labels" if "labels" in obj else None)
        if task is not None and label_field and obj[label_field] is not None:
            post.gold = _gold(path, number, label_field, task, obj[label_field], from_output=False)
    elif "input" in obj or "instruction" in obj:
        text = _string_field(path, number, obj, "input")
        instruction = _string_field(path, number, obj, "instruction", required=False)
        post = Post(id="", text=text, instruction=instruction, line=number)
        output = _string_field(path, number, obj, "output", required=False, allow_empty=True)
        if task is not None and output is not None:
            post.gold = _gold(path, number, "output", task, output, from_output=True)
    else:
        raise DataError(path, number, "text", "missing (a post needs 'text'; a C-IMHI record needs "
                        "'instruction', 'input' and 'output')")
    post.id = _string_field(path, number, obj, "id", required=False) or str(position)
    return post


def _rows_from_csv(path: Path, text: str, delimiter: str) -> Iterator[tuple[int, dict]]:
    reader = csv.reader(io.StringIO(text), delimiter=delimiter)
    try:
        header = next(reader)
    except StopIteration:
        raise DataError(path, None, None, "empty file") from None
    header = [h.strip() for h in header]
    if "text" not in header:
        raise DataError(path, 1, "text", f"missing from the header (columns: {', '.join(header)})")
    try:
        for row in reader:
            number = reader.line_num
            if not any(cell.strip() for cell in row):
                continue
            if len(row) != len(header):
                raise DataError(path, number, None, f"expected {len(header)} columns, found {len(row)}")
            yield number, {k: v for k, v in zip(header, row) if not (k in ("label", "id") and not v.strip())}
    except csv.Error as exc:
        raise DataError(path, reader.line_num, None, f"malformed CSV: {exc}") from None


def read_posts(path: str | os.PathLike, task=None) -> list[Post]:
    """Read posts from any accepted file; gold answers are checked against ``task`` when given.

    Args:
        path: a ``.jsonl``/``.json``/``.csv``/``.tsv``/``.txt`` file or ``sample:NAME``.
        task: the task whose label set gold labels must belong to (None: gold is ignored).

    Raises:
        DataError: one line naming the file, line and field at fault (for a gold label outside
            the task, the allowed labels too).
    """
    path = resolve_path(path)
    suffix = path.suffix.lower()
    if suffix not in POST_SUFFIXES:
        raise DataError(path, None, None, f"unsupported file type '{suffix or '(none)'}'; "
                        f"use one of {', '.join(POST_SUFFIXES)}")
    if suffix == ".txt":
        text = _read_text(path)
        rows = ((n, {"id": str(n), "text": line}) for n, line in enumerate(text.split("\n"), 1) if line.strip())
    elif suffix in (".csv", ".tsv"):
        rows = _rows_from_csv(path, _read_text(path), "\t" if suffix == ".tsv" else ",")
    else:
        rows = iter_json_objects(path)
    posts: list[Post] = []
    seen: dict[str, int] = {}
    for number, obj in rows:
        post = _post_from_object(path, number, obj, len(posts) + 1, task)
        if post.id in seen:
            raise DataError(path, number, "id", f"duplicate id '{post.id}' (first on line {seen[post.id]})")
        seen[post.id] = number
        posts.append(post)
    if not posts:
        raise DataError(path, None, None, "no posts found")
    return posts


class JsonlAppender:
    """Appends one JSON object per line and flushes each, so a killed run loses at most one line.

    On open, a torn last line (a write cut short by a kill) is removed so the file stays valid.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise MentalGLMError(f"{self.path}: cannot create its folder: {exc.strerror or exc}") from None
        repair_torn_tail(self.path)
        try:
            self._file = open(self.path, "a", encoding="utf-8")
        except OSError as exc:
            raise MentalGLMError(f"{self.path}: cannot write: {exc.strerror or exc}") from None

    def write(self, obj: dict) -> None:
        """Append ``obj`` as one line and flush it to the OS."""
        self._file.write(json.dumps(obj, ensure_ascii=False) + "\n")
        self._file.flush()

    def close(self) -> None:
        """Close the file."""
        self._file.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()


def repair_torn_tail(path: Path) -> None:
    """Cut a final line without its new line (an interrupted write) off the end of ``path``."""
    if not path.exists() or path.stat().st_size == 0:
        return
    with open(path, "rb+") as handle:
        data = handle.read()
        if data.endswith(b"\n"):
            return
        handle.truncate(data.rfind(b"\n") + 1)


def read_done(path: str | os.PathLike) -> dict[str, dict]:
    """Predictions already written to a JSONL output, by id (for resuming a run).

    Raises:
        DataError: a line in the middle of the file that is not a prediction object.
    """
    path = Path(path)
    if not path.exists():
        return {}
    done: dict[str, dict] = {}
    text = _read_text(path)
    lines = text.split("\n")
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError:
            if number == len(lines):  # torn last line: it is redone
                break
            raise DataError(path, number, None, "malformed JSON in an existing output; "
                            "fix or remove the file to start over") from None
        if not isinstance(obj, dict) or "id" not in obj:
            raise DataError(path, number, "id", "missing in an existing output line")
        done[str(obj["id"])] = obj
    return done
