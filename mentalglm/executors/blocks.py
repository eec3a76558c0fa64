"""Predictions written block by block and merged by post id: exactly once, whatever was killed when.

A distributed run (:mod:`mentalglm.executors.ray_data`) gets predictions back in blocks, in
whatever order the workers finish them. Each block is written as its own JSONL file under the
output's ``parts`` folder — to a hidden temporary name first, then renamed, so a part is either
complete or absent, never torn. A rerun reads the ids in the merged output and in every part and
skips them; at the end the parts are merged into the one predictions file, each id once (a block
a retried worker wrote twice counts once) and in input order, and the merged parts are removed.

Nothing here needs Ray; the layout matches the local path's, so either executor can resume the
other's output (the run record decides whether the settings allow it).

Example:
    >>> layout = OutputLayout.for_file("runs/predictions.jsonl")
    >>> layout.parts.name, layout.record.name
    ('predictions.jsonl.parts', 'predictions.jsonl.run.json')
"""

from __future__ import annotations

import itertools
import json
import os
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Mapping, Sequence

from mentalglm.analysis import run_record
from mentalglm.core.errors import DataError, MentalGLMError
from mentalglm.core.prediction import Post, posts_digest

PART_GLOB = "part-*.jsonl"
_BOM = b"\xef\xbb\xbf"
_OPEN_PARTS = 64  # part files kept open while merging: blocks cover runs of consecutive posts


@dataclass(frozen=True)
class OutputLayout:
    """Where a distributed run keeps its files.

    Attributes:
        predictions: the merged predictions (JSONL, one line per post id).
        record: the run record (settings and data fingerprint).
        parts: the folder of block files not merged yet.
        errors: the posts of the last run that failed (id and a one-line error; no post text).
    """

    predictions: Path
    record: Path
    parts: Path
    errors: Path

    @classmethod
    def for_file(cls, output: str | os.PathLike) -> OutputLayout:
        """``analyze --output FILE``: ``FILE``, ``FILE.run.json``, ``FILE.parts/``, ``FILE.errors.jsonl``."""
        path = Path(output)
        return cls(path, run_record.sidecar_path(path), path.with_name(path.name + ".parts"),
                   path.with_name(path.name + ".errors.jsonl"))

    @classmethod
    def for_dir(cls, output: str | os.PathLike) -> OutputLayout:
        """The layout of an output folder: ``predictions.jsonl``, ``run.json``, ``parts/``, ``errors.jsonl``."""
        folder = Path(output)
        return cls(folder / "predictions.jsonl", folder / "run.json", folder / "parts", folder / "errors.jsonl")

    def part_files(self) -> list[Path]:
        """The complete part files, in name order (temporary files are hidden and never listed)."""
        return sorted(self.parts.glob(PART_GLOB)) if self.parts.is_dir() else []


_WRITERS = itertools.count()


class BlockWriter:
    """Writes blocks of prediction lines as part files, each atomically (temporary name, then rename).

    Args:
        parts: the folder the part files go to (created when needed).
    """

    def __init__(self, parts: str | os.PathLike):
        self.parts = Path(parts)
        # Unique per writer, so a retried or concurrent one never reuses a name, and in the order the
        # writers started (clock, then a counter within the process), so names sort as written and
        # "the first copy of an id wins" in the merge means the same copy every time.
        self.run_id = f"{time.time_ns():020d}-{next(_WRITERS):06d}-{uuid.uuid4().hex[:8]}"
        self.written = 0

    def write(self, lines: Sequence[str]) -> Path | None:
        """Write one block of JSON lines (predictions with an ``id``) as a part file; None for an empty block.

        Raises:
            MentalGLMError: the folder or file cannot be written.
        """
        if not lines:
            return None
        name = f"part-{self.run_id}-{self.written:06d}.jsonl"
        path, temporary = self.parts / name, self.parts / f".{name}.tmp"
        try:
            self.parts.mkdir(parents=True, exist_ok=True)
            with open(temporary, "w", encoding="utf-8") as handle:
                handle.writelines(line + "\n" for line in lines)
                handle.flush()
                os.fsync(handle.fileno())  # the rename must not publish a file whose data is not on disk yet
            os.replace(temporary, path)
        except OSError as exc:
            raise MentalGLMError(f"{path}: cannot write a block of predictions: {exc.strerror or exc}") from None
        self.written += 1
        return path


def _entries(path: Path) -> Iterator[tuple[str, int, int]]:
    """``(id, offset, length)`` of each complete prediction line of ``path``; a torn last line is left out.

    Raises:
        DataError: a line in the middle that is not a prediction object with an id.
    """
    offset = 0
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle, 1):
            start, size = offset, len(raw)
            offset += size
            if not raw.endswith(b"\n"):  # cut short by a kill: that post is redone
                return
            if number == 1 and raw.startswith(_BOM):
                start, size, raw = start + len(_BOM), size - len(_BOM), raw[len(_BOM):]
            if not raw.strip():
                continue
            try:
                obj = json.loads(raw)
            except (json.JSONDecodeError, UnicodeDecodeError, RecursionError):
                raise DataError(path, number, None, "malformed JSON in an existing output; "
                                "fix or remove the file to start over") from None
            if not isinstance(obj, dict) or "id" not in obj:
                raise DataError(path, number, "id", "missing in an existing output line")
            yield str(obj["id"]), start, size


def done_ids(layout: OutputLayout) -> set[str]:
    """The ids already predicted: in the merged predictions file and in every part not merged yet."""
    done: set[str] = set()
    for path in ([layout.predictions] if layout.predictions.is_file() else []) + layout.part_files():
        done.update(post_id for post_id, _, _ in _entries(path))
    return done


@dataclass
class MergeResult:
    """What :func:`merge` did: predictions in the merged file, duplicate lines dropped, part files merged."""

    predictions: int
    duplicates: int
    parts: int


class _OpenFiles:
    """A few source files kept open for reading lines at offsets (the least recently used is closed)."""

    def __init__(self, paths: Sequence[Path], limit: int = _OPEN_PARTS):
        self.paths, self.limit, self.handles = paths, limit, OrderedDict()

    def read(self, source: int, offset: int, size: int) -> bytes:
        handle = self.handles.pop(source, None) or open(self.paths[source], "rb")
        self.handles[source] = handle
        if len(self.handles) > self.limit:
            self.handles.popitem(last=False)[1].close()
        handle.seek(offset)
        return handle.read(size)

    def close(self) -> None:
        for handle in self.handles.values():
            handle.close()
        self.handles.clear()


def merge(layout: OutputLayout, positions: Mapping[str, int] | None = None) -> MergeResult:
    """Merge the part files into the predictions file: each id once, in input order; then remove the parts.

    The first line of an id wins (the merged file first, then the parts in name order): every
    copy was made with the settings of the one run record, so they are the same prediction.
    Ids without a position (none given) keep the order they were found in. The new file replaces
    the old one atomically, and the parts are removed only after that, so a kill at any point
    leaves every prediction on disk, in one place or the other.

    Args:
        layout: the output's files.
        positions: each post id's place in the input (0, 1, …).

    Raises:
        DataError: an existing file holds a line that is not a prediction.
        MentalGLMError: the merged file cannot be written.
    """
    parts = layout.part_files()
    existing = [layout.predictions] if layout.predictions.is_file() else []
    if not parts:
        count = sum(1 for _ in _entries(layout.predictions)) if existing else 0
        return MergeResult(predictions=count, duplicates=0, parts=0)
    sources = existing + parts
    chosen: dict[str, tuple[int, int, int]] = {}
    duplicates = 0
    for source, path in enumerate(sources):
        for post_id, offset, size in _entries(path):
            if post_id in chosen:
                duplicates += 1
            else:
                chosen[post_id] = (source, offset, size)
    ids = list(chosen)
    order = list(range(len(ids)))  # found order, then (a stable sort) input order; unknown ids last
    if positions:
        order.sort(key=lambda i: positions.get(ids[i], len(positions)))
    temporary = layout.predictions.with_name(f".{layout.predictions.name}.merging")
    files = _OpenFiles(sources)
    try:
        layout.predictions.parent.mkdir(parents=True, exist_ok=True)
        with open(temporary, "wb") as out:
            for i in order:
                out.write(files.read(*chosen[ids[i]]))
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, layout.predictions)
    except OSError as exc:
        raise MentalGLMError(f"{layout.predictions}: cannot write the merged predictions: "
                             f"{exc.strerror or exc}") from None
    finally:
        files.close()
    for path in parts:
        path.unlink(missing_ok=True)
    for stale in layout.parts.glob(".part-*.tmp"):  # left by writers killed mid-block
        stale.unlink(missing_ok=True)
    try:
        layout.parts.rmdir()
    except OSError:  # not empty: a late writer added a part; the next run merges it
        pass
    return MergeResult(predictions=len(chosen), duplicates=duplicates, parts=len(parts))


def write_errors(layout: OutputLayout, errors: Sequence[tuple[str, str]]) -> None:
    """Keep the failed posts of this run as ``{"id", "error"}`` lines (replaced atomically), or remove the file."""
    if not errors:
        layout.errors.unlink(missing_ok=True)
        return
    temporary = layout.errors.with_name(f".{layout.errors.name}.tmp")
    try:
        layout.errors.parent.mkdir(parents=True, exist_ok=True)
        with open(temporary, "w", encoding="utf-8") as handle:
            handle.writelines(json.dumps({"id": i, "error": e}, ensure_ascii=False) + "\n" for i, e in errors)
        os.replace(temporary, layout.errors)
    except OSError as exc:
        raise MentalGLMError(f"{layout.errors}: cannot write the failed posts: {exc.strerror or exc}") from None


class Fingerprint:
    """One pass over the posts: the run record's digest of them, their number and each id's position.

    Example:
        >>> fingerprint = Fingerprint.of([Post(id="a", text="…"), Post(id="b", text="…")])
        >>> fingerprint.count, fingerprint.positions["b"]
        (2, 1)
    """

    def __init__(self):
        self.positions: dict[str, int] = {}
        self.sha256: str | None = None

    @property
    def count(self) -> int:
        """How many posts were seen."""
        return len(self.positions)

    def track(self, posts: Iterable[Post]) -> Iterator[Post]:
        """Pass ``posts`` through, recording each id's position.

        Raises:
            MentalGLMError: an id appears twice (exactly-once by id needs unique ids).
        """
        for post in posts:
            if post.id in self.positions:
                raise MentalGLMError(f"post id '{post.id}' appears twice in the data; ids must be unique "
                                     "for a distributed run to write each exactly once")
            self.positions[post.id] = len(self.positions)
            yield post

    @classmethod
    def of(cls, posts: Iterable[Post]) -> Fingerprint:
        """The fingerprint of ``posts`` (any iterable, read once); ``sha256`` is ``posts_digest``."""
        fingerprint = cls()
        fingerprint.sha256 = posts_digest(fingerprint.track(posts))
        return fingerprint
