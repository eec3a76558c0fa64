"""Reading posts and C-IMHI records, writing predictions; every input error names file, line and field.

Data is read as the field distributes it, streamed so a file of millions of posts runs in
constant memory:

- C-IMHI / Alpaca records: JSON array or JSONL of ``{"instruction", "input", "output"}`` objects;
- OpenAI chat fine-tuning JSONL (``messages``) and ShareGPT / LLaMA-Factory ``conversations``
  (see :mod:`mentalglm.data.conversations`);
- post files: JSONL with ``text`` (optional ``id``, ``label``, ``instruction``); CSV/TSV whatever
  the extension (delimiter and quoting sniffed, see :mod:`mentalglm.data.tables`), with a header
  or with ``--columns``, labels in a label column (raw values through ``--label-map``) or in
  one-hot columns named by the labels; ``.txt`` with one post per non-empty line;
- Parquet, Arrow and Hugging Face ``datasets`` folders (``hf:PATH[:split]``; optional pyarrow,
  see :mod:`mentalglm.data.columnar`);
- a YAML dataset card naming one of these with its mapping (see :mod:`mentalglm.data.mapping`).

Text is UTF-8 (BOM or not), UTF-16/32 with a BOM, or GB18030/GBK — detected strictly, or given
with ``--encoding`` (see :mod:`mentalglm.data.encodings`). The synthetic samples shipped with the
package are addressed as ``sample:NAME``.

Entry points: :func:`iter_posts` (streaming), :func:`read_posts` (a list, for small callers),
:class:`PostSource` (re-iterable, with a one-pass digest for run records), :func:`iter_records` /
:func:`read_records` (fine-tuning records) and :func:`open_source` (what was detected).
"""

from __future__ import annotations

import hashlib
import json
import os
from array import array
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from mentalglm.core.errors import DataError, MentalGLMError
from mentalglm.core.parsing import LABEL_SEPARATORS
from mentalglm.core.prediction import Post
from mentalglm.data.encodings import (
    Encoding,
    decode_error,
    detect_encoding,
    head_text,
    iter_lines,
    open_binary,
    open_text,
)
from mentalglm.data.json_array import TOO_DEEP, iter_json_array
from mentalglm.data.mapping import DataMapping, is_card, load_card
from mentalglm.data.schema import RowReader, Schema, string_field
from mentalglm.data.tables import DelimitedFile, Dialect, sniff_dialect

POST_SUFFIXES = (".jsonl", ".ndjson", ".json", ".csv", ".tsv", ".txt", ".parquet", ".arrow")
SAMPLE_SCHEME = "sample:"
_FORMAT_OF_SUFFIX = {".jsonl": "json", ".ndjson": "json", ".json": "json", ".csv": "csv", ".tsv": "csv",
                     ".txt": "txt", ".parquet": "parquet", ".arrow": "arrow"}


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
        from mentalglm.core.errors import UnknownNameError

        raise UnknownNameError("sample", name, names)
    return Path(str(resources.files("mentalglm") / "samples" / f"{name}.jsonl"))


def _read_text(path: Path) -> str:
    """The UTF-8 text of one of mentalglm's own files (predictions), new lines normalised."""
    with open_binary(path) as handle:
        raw = handle.read()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise DataError(path, line, None,
                        f"not valid UTF-8 (byte 0x{raw[exc.start]:02x}); save the file as UTF-8") from None
    return text.replace("\r\n", "\n").replace("\r", "\n")


# -- JSON ---------------------------------------------------------------------------------------
def iter_json_objects(path: str | os.PathLike, encoding: Encoding | None = None) -> Iterator[tuple[int, dict]]:
    """(line, object) pairs of a JSONL or JSON array file, streamed either way; blank lines skipped.

    Args:
        path: the file.
        encoding: how to decode it (detected when None).

    Raises:
        DataError: malformed JSON or an item that is not an object, with its line.
    """
    path = Path(path)
    encoding = encoding or detect_encoding(path)
    lines = iter_lines(path, encoding)
    first = True
    for number, line in lines:
        if not line.strip():
            continue
        if first and line.lstrip().startswith("["):
            lines.close()  # an array cannot be split at new lines: stream it item by item
            with open_text(path, encoding) as handle:
                try:
                    yield from iter_json_array(path, handle)
                except UnicodeDecodeError:
                    raise decode_error(path, encoding) from None
            return
        first = False
        try:
            value = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(path, number, None, f"malformed JSON: {exc.msg} (column {exc.colno})") from None
        except RecursionError:
            raise DataError(path, number, None, TOO_DEEP) from None
        if not isinstance(value, dict):
            raise DataError(path, number, None, f"expected a JSON object, got {type(value).__name__}")
        yield number, value


# -- sources ------------------------------------------------------------------------------------
@dataclass
class _Part:
    """One file of a source (a folder of Parquet shards has several)."""

    path: Path
    format: str
    encoding: Encoding | None = None
    dialect: Dialect | None = None
    columns: tuple[str, ...] | None = None
    given_columns: tuple[str, ...] | None = None

    def rows(self) -> Iterator[tuple[Path, int, dict]]:
        path = self.path
        if self.format == "json":
            for line, obj in iter_json_objects(path, self.encoding):
                yield path, line, obj
        elif self.format == "csv":
            for line, obj in DelimitedFile(path, self.encoding, self.dialect, self.given_columns).rows():
                yield path, line, obj
        elif self.format == "txt":
            for number, line in iter_lines(path, self.encoding):
                if line.strip():
                    yield path, number, {"id": str(number), "text": line}
        elif self.format == "parquet":
            from mentalglm.data.columnar import iter_parquet

            yield from iter_parquet(path)
        else:
            from mentalglm.data.columnar import iter_arrow

            yield from iter_arrow(path)


@dataclass
class DataSource:
    """A data spec resolved: which files, in which format and encoding, with which mapping.

    Made by :func:`open_source`; :meth:`rows` opens the files afresh each time it is called, so a
    source can be read more than once (once for the run record's digest, once for the run).

    Attributes:
        spec: as the user named it (a file, ``sample:NAME``, ``hf:…``, a dataset card).
        format: ``jsonl``, ``json array``, ``csv``, ``txt``, ``parquet``, ``arrow`` or ``hub``.
        parts: the files read, in order.
        mapping: the mapping in force (card keys overridden by flags).
        card: the dataset card the spec went through, if any.
        notes: what detection decided that the user should know (shown by ``data inspect``).
        hub: ``(name, split)`` of a Hub dataset.
        layout: for ``hf:`` specs: ``save_to_disk``, ``DatasetDict``, ``folder``, ``file`` or ``hub``.
        split: the split read, when there is one.
    """

    spec: str
    format: str
    parts: list[_Part]
    mapping: DataMapping
    card: str | None = None
    notes: list[str] = field(default_factory=list)
    hub: tuple[str, str | None] | None = None
    layout: str | None = None
    split: str | None = None

    @property
    def files(self) -> list[Path]:
        """The data files, in reading order (empty for a Hub dataset)."""
        return [p.path for p in self.parts]

    @property
    def tabular(self) -> bool:
        """Rows are table cells (CSV, Parquet, Arrow, Hub) rather than JSON objects."""
        return self.format not in ("jsonl", "json array", "txt")

    @property
    def display(self) -> str:
        """How errors about the whole source name it."""
        return str(self.parts[0].path) if len(self.parts) == 1 else self.spec

    @property
    def columns(self) -> tuple[str, ...] | None:
        """Column names of a table (header, ``--columns`` or the Parquet/Arrow schema); None for JSON."""
        return self.parts[0].columns if self.parts else None

    def fingerprint(self) -> str | None:
        """SHA-256 over the card's and every data file's SHA-256, in order; None for a Hub dataset.

        What a run that records its data by file (``train``) keeps for a spec that is a folder or a card.
        """
        if self.hub is not None:
            return None
        from mentalglm.core.files import file_sha256

        files = ([Path(self.card)] if self.card else []) + self.files
        if len(files) == 1:
            return file_sha256(files[0])  # the same value as for the file named directly
        return hashlib.sha256("\n".join(file_sha256(f) for f in files).encode("ascii")).hexdigest()

    def rows(self) -> Iterator[tuple[Path | str, int, dict]]:
        """(file, line or row, row object) for every row of every file, streamed."""
        if self.hub is not None:
            from mentalglm.data.columnar import iter_hub

            yield from iter_hub(*self.hub)
            return
        for part in self.parts:
            yield from part.rows()

    def describe(self) -> dict:
        """JSON-ready: format, files, encoding, delimiter, columns, mapping given, notes."""
        first = self.parts[0] if self.parts else None
        info: dict[str, Any] = {"spec": self.spec, "format": self.format,
                                "files": [str(p) for p in self.files] if len(self.parts) > 1 else None,
                                "file": str(first.path) if first and len(self.parts) == 1 else None,
                                "card": self.card, "layout": self.layout, "split": self.split,
                                "hub_dataset": self.hub[0] if self.hub else None}
        if first is not None and first.encoding is not None:
            info["encoding"] = {"name": first.encoding.name, "how": first.encoding.how}
        if first is not None and first.dialect is not None:
            info["delimiter"] = first.dialect.describe()
        info["columns"] = list(self.columns) if self.columns else None
        info["mapping_given"] = self.mapping.describe()
        info["mapping_from"] = {key: self.mapping.where(key) for key in info["mapping_given"]}
        info["notes"] = list(dict.fromkeys(self.notes))  # a folder of shards would repeat them
        return {k: v for k, v in info.items() if v is not None}


def _json_layout(path: Path, encoding: Encoding) -> str:
    return "json array" if head_text(path, encoding, 1 << 16).lstrip().startswith("[") else "jsonl"


def _text_part(path: Path, fmt: str, mapping: DataMapping, notes: list[str]) -> tuple[_Part, str]:
    """A text file's part: encoding detected or given, delimiter sniffed, header read."""
    encoding = detect_encoding(path, mapping.encoding)
    if fmt == "json":
        if mapping.columns:
            raise MentalGLMError(f"{mapping.where('columns')} names the columns of a headerless delimited file; "
                                 f"{path} is JSON")
        return _Part(path, "json", encoding), _json_layout(path, encoding)
    if fmt == "txt":
        return _Part(path, "txt", encoding), "txt"
    forced = "\t" if fmt == "tsv" else None
    dialect = sniff_dialect(head_text(path, encoding, 1 << 16), path.suffix.lower(), forced=forced)
    if dialect.how == "sniffed" and path.suffix.lower() in (".csv", ".tsv"):
        expected = "\t" if path.suffix.lower() == ".tsv" else ","
        if dialect.delimiter != expected:
            notes.append(f"{path.name} is {dialect.describe().split(',')[0]} although its extension says "
                         f"{path.suffix.lower()[1:]}")
    if not dialect.quoting:
        notes.append(f"{path.name}: fields hold bare quotation marks, so quotes are read as text (no CSV quoting)")
    part = _Part(path, "csv", encoding, dialect, given_columns=mapping.columns)
    part.columns = DelimitedFile(path, encoding, dialect, mapping.columns).header()
    return part, "tsv" if dialect.delimiter == "\t" else "csv"


def _file_format(path: Path, mapping: DataMapping, notes: list[str]) -> str:
    if mapping.format:
        return {"jsonl": "json"}.get(mapping.format, mapping.format)
    suffix = path.suffix.lower()
    fmt = _FORMAT_OF_SUFFIX.get(suffix)
    if fmt is None:
        raise DataError(path, None, None, f"unsupported file type '{suffix or '(none)'}'; use one of "
                        f"{', '.join(POST_SUFFIXES)}, or name the format with --format")
    if fmt == "txt" and (mapping.columns or mapping.text_field or mapping.label_field):
        # One post per line has no fields; naming fields means the .txt file is a table.
        given = mapping.where("columns") if mapping.columns else "a text or label field"
        notes.append(f"{path.name} is read as delimited text because {given} was given")
        return "csv"
    return fmt


def open_source(spec: str | os.PathLike, mapping: DataMapping | None = None) -> DataSource:
    """Resolve ``spec`` and detect how to read it (reads only the start of the file).

    Args:
        spec: a file, ``sample:NAME``, ``hf:PATH_OR_NAME[:split]`` or a dataset card (``.yaml``).
        mapping: the mapping flags; with a card they override the card's keys.

    Raises:
        DataError: a missing or unreadable file, an unsupported type, an undecodable start.
        MentalGLMError: a bad card or mapping, a missing optional extra.
    """
    mapping = mapping or DataMapping()
    text = os.fspath(spec)
    card = None
    if is_card(text) and not text.startswith((SAMPLE_SCHEME, "hf:")):
        card = text
        text, card_mapping = load_card(text)
        mapping = card_mapping.overridden_by(mapping)
        if is_card(text):
            raise DataError(card, None, "path", "a dataset card cannot point at another card")
    notes: list[str] = []
    if text.startswith("hf:"):
        return _hf_source(text, mapping, card, notes)
    path = resolve_path(text)
    if path.is_dir():
        raise DataError(path, None, None, "is a directory, expected a file (a datasets folder is read as hf:FOLDER)")
    fmt = _file_format(path, mapping, notes)
    if fmt in ("parquet", "arrow"):
        return DataSource(os.fspath(spec), fmt, [_columnar_part(path, fmt, mapping, notes)], mapping, card, notes)
    part, shown = _text_part(path, fmt, mapping, notes)
    return DataSource(os.fspath(spec), shown, [part], mapping, card, notes)


def _columnar_part(path: Path, fmt: str, mapping: DataMapping, notes: list[str]) -> _Part:
    from mentalglm.data.columnar import arrow_columns, parquet_columns

    if not path.is_file():
        raise DataError(path, None, None, "no such file")
    columns = parquet_columns(path) if fmt == "parquet" else arrow_columns(path)
    if mapping.columns:
        raise MentalGLMError(f"{mapping.where('columns')} names the columns of a headerless delimited file; "
                             f"{path} is {fmt.capitalize()} with named columns ({', '.join(columns)})")
    if mapping.encoding:
        notes.append(f"{mapping.where('encoding')} has no effect on {fmt.capitalize()} (its strings are UTF-8)")
    return _Part(path, fmt, columns=tuple(columns))


def _hf_source(spec: str, mapping: DataMapping, card: str | None, notes: list[str]) -> DataSource:
    from mentalglm.data.columnar import require_pyarrow, resolve_hf

    found = resolve_hf(spec)
    shown = card or spec  # errors and records name what the user typed
    if found.layout == "hub":
        notes.append(f"hf:{found.hub_name} is not a local folder: it is streamed from the Hugging Face Hub")
        return DataSource(shown, "hub", [], mapping, card, notes, hub=(found.hub_name, found.split),
                          layout="hub", split=found.split)
    parts = []
    for path in found.files:
        fmt = _file_format(path, mapping, notes)
        if fmt in ("parquet", "arrow"):
            require_pyarrow("Parquet" if fmt == "parquet" else "Arrow files")
            parts.append(_columnar_part(path, fmt, mapping, notes))
        else:
            parts.append(_text_part(path, {"jsonl": "json"}.get(fmt, fmt), mapping, notes)[0])
    if not parts:
        raise DataError(spec, None, None, "the dataset lists no data files")
    fmt = parts[0].format if parts[0].format != "json" else _json_layout(parts[0].path, parts[0].encoding)
    if len(parts) > 1:
        notes.append(f"{len(parts)} files are read in order: {', '.join(p.path.name for p in parts[:4])}"
                     + (" …" if len(parts) > 4 else ""))
    return DataSource(shown, fmt, parts, mapping, card, notes, layout=found.layout, split=found.split)


# -- posts --------------------------------------------------------------------------------------
class _IdIndex:
    """Finds repeated post ids in 8 bytes per id rather than a set of strings (~60 bytes each).

    Positional ids (``1``, ``2``, … — files without ids) are unique by construction and cost
    nothing: while every id so far is its row's position, only that count is kept. From the first
    other id on, each id's 64-bit hash goes into an open-addressing table. A hash already present
    is only a *candidate*: the caller confirms it against the real ids by reading the file again,
    so a hash collision never rejects good data.
    """

    def __init__(self):
        self.prefix = 0  # rows 1..prefix had positional ids
        self.table: array | None = None
        self.count = 0

    def _slot_hash(self, post_id: str) -> int:
        return (hash(post_id) & 0xFFFF_FFFF_FFFF_FFFF) or 1  # 0 marks an empty slot

    def _insert(self, value: int) -> bool:
        table = self.table
        mask = len(table) - 1
        slot = value & mask
        while True:
            held = table[slot]
            if held == 0:
                table[slot] = value
                self.count += 1
                if self.count * 4 > len(table) * 3:
                    self._grow()
                return False
            if held == value:
                return True
            slot = (slot + 1) & mask

    def _grow(self) -> None:
        old = self.table
        self.table, self.count = array("Q", bytes(8 * len(old) * 2)), 0
        for value in old:
            if value:
                self._insert(value)

    def add(self, post_id: str, position: int) -> int | None:
        """Record ``post_id`` (row ``position``); a candidate earlier position, 0 for "look it up", or None."""
        if self.table is None:
            if post_id == str(position):
                self.prefix = position
                return None
            self.table = array("Q", bytes(8 * (1 << 16)))
        if post_id.isascii() and post_id.isdigit() and post_id[0] != "0" and int(post_id) <= self.prefix:
            return int(post_id)  # the id of an earlier positional row
        return 0 if self._insert(self._slot_hash(post_id)) else None


def _first_occurrence(source: DataSource, reader: RowReader, post_id: str, before: int,
                      position_hint: int) -> tuple[Any, int] | None:
    """(file, line) of the first row before row ``before`` whose id is ``post_id``, read afresh."""
    for position, (path, line, obj) in enumerate(source.rows(), 1):
        if position >= before:
            return None
        if position_hint and position != position_hint:
            continue
        try:
            if reader.row_id(path, line, obj, position) == post_id:
                return path, line
        except DataError:
            continue
    return None


def _check_columns(source: DataSource, reader: RowReader) -> None:
    """Refuse a table whose columns hold no post (or miss a named field) before reading a row."""
    for part in source.parts:
        if part.columns is None:
            continue
        if part.given_columns:
            reader.check_columns(part.path, part.columns, None, "--columns")
        else:
            reader.check_columns(part.path, part.columns, 1 if part.format == "csv" else None,
                                 "the header" if part.format == "csv" else "the schema")


def iter_posts(source: str | os.PathLike | DataSource, task=None, mapping: DataMapping | None = None, *,
               problems: list | None = None, reader: RowReader | None = None) -> Iterator[Post]:
    """Stream the posts of a data source, checked against ``task``; memory does not grow with the file.

    Args:
        source: a spec (see :func:`open_source`) or an opened :class:`DataSource`.
        task: the task whose label set gold answers must belong to (None: gold is ignored).
        mapping: the mapping flags (ignored when ``source`` is already a DataSource).
        problems: collect row errors here and go on (``data inspect``); None: raise the first.
        reader: the row reader to use (to see afterwards which schemas were found).

    Raises:
        DataError: one line naming the file, line and field at fault, or a file with no posts.
    """
    opened = source if isinstance(source, DataSource) else open_source(source, mapping)
    reader = reader or RowReader(task, opened.mapping, tabular=opened.tabular)
    ids = _IdIndex()
    position = count = 0
    try:
        _check_columns(opened, reader)
        for path, line, obj in opened.rows():
            position += 1
            try:
                post = reader.post(path, line, obj, position)
                candidate = ids.add(post.id, position)
                if candidate is not None:
                    first = _first_occurrence(opened, reader, post.id, position, candidate)
                    if first is not None:
                        where = f"line {first[1]}" if first[0] == path else f"{first[0]}:{first[1]}"
                        raise DataError(path, line, "id", f"duplicate id '{post.id}' (first on {where})")
            except DataError as exc:
                if problems is None:
                    raise
                problems.append(exc)
                continue
            count += 1
            yield post
    except DataError as exc:
        if problems is None:
            raise
        problems.append(exc)
        return
    if not count:
        error = DataError(opened.display, None, None, "no posts found")
        if problems is None:
            raise error
        problems.append(error)


def read_posts(path: str | os.PathLike, task=None, mapping: DataMapping | None = None) -> list[Post]:
    """Read all posts of a data source into a list (for small files; stream with :func:`iter_posts`).

    Args:
        path: a data file (see the module docstring), ``sample:NAME``, ``hf:…`` or a dataset card.
        task: the task whose label set gold labels must belong to (None: gold is ignored).
        mapping: how to read fields detection cannot know (``--text-field`` …).

    Raises:
        DataError: one line naming the file, line and field at fault (for a gold label outside
            the task, the allowed labels too).
    """
    return list(iter_posts(path, task, mapping))


class PostSource:
    """A data source as a re-iterable stream of posts: iterate it as often as needed, in constant memory.

    What a run over millions of posts needs: one pass for the run record's digest
    (:meth:`digest`), another for the analysis.

    Example:
        >>> source = PostSource("sample:depression")
        >>> sha256, count = source.digest()
        >>> next(iter(source)).id
        'dep-001'
    """

    def __init__(self, spec: str | os.PathLike | DataSource, task=None, mapping: DataMapping | None = None):
        self.source = spec if isinstance(spec, DataSource) else open_source(spec, mapping)
        self.task = task

    def __iter__(self) -> Iterator[Post]:
        return iter_posts(self.source, self.task)

    def digest(self) -> tuple[str, int]:
        """``(posts_sha256, count)`` in one pass; as ``posts_digest`` of the list."""
        from mentalglm.core.prediction import posts_digest

        counter = _Counted(iter(self))
        return posts_digest(counter), counter.count


class _Counted:
    """Counts what passes through (a digest pass also yields the number of posts)."""

    def __init__(self, items: Iterable):
        self.items, self.count = iter(items), 0

    def __iter__(self):
        return self

    def __next__(self):
        item = next(self.items)
        self.count += 1
        return item


# -- records ------------------------------------------------------------------------------------
def _label_only(task, answer: str) -> bool:
    """True when an answer only names labels (``低自杀风险``): it is rendered in the task's format for training."""
    matcher = getattr(task, "matcher", None)
    if matcher is None:
        return False
    stripped = answer.strip().strip("。.!！")
    pieces = [p for p in LABEL_SEPARATORS.split(stripped) if p.strip()]
    if not pieces:
        return False
    none = getattr(task, "_is_none", None)
    return all(matcher.lookup(p) for p in pieces) or (len(pieces) == 1 and none is not None and none(pieces[0]))


def iter_records(source: str | os.PathLike | DataSource, task=None, mapping: DataMapping | None = None,
                 *, on_rendered: Callable[[str], None] | None = None) -> Iterator[Record]:
    """Stream fine-tuning records from any data source.

    C-IMHI records are taken as they are (outputs verbatim). Chat and ShareGPT rows keep their
    assistant answer unless it only names labels (``低自杀风险``), which is rendered in the task's
    format (``标签：低自杀风险``) so training teaches that format; labelled posts (tables, one-hot
    columns) get ``task.response_format().render(labels)``. A row without its own instruction
    gets the task's.

    Args:
        source: a spec or an opened :class:`DataSource`.
        task: needed for anything but C-IMHI records; when given, every answer is checked against it.
        mapping: the mapping flags (ignored when ``source`` is a DataSource).
        on_rendered: called with the id of each record whose output was rendered in the task's format.

    Raises:
        DataError: a missing/empty field, a duplicate id, a row without a gold answer, an answer
            outside the task, a file with no records.
        MentalGLMError: a row that is not a C-IMHI record and no task to render its answer.
    """
    opened = source if isinstance(source, DataSource) else open_source(source, mapping)
    reader = RowReader(task, opened.mapping, tabular=opened.tabular)
    ids = _IdIndex()
    count = 0
    answer_format = task.response_format() if task is not None else None
    for position, (path, line, obj) in enumerate(opened.rows(), 1):
        schema: Schema = reader.schema(obj.keys())
        if schema.shape == "record" and not schema.label:
            record_id = string_field(path, line, obj, "id", required=False, numeric=True) or str(position)
            record = Record(instruction=string_field(path, line, obj, "instruction"),
                            input=string_field(path, line, obj, "input", allow_empty=True),
                            output=string_field(path, line, obj, "output"), id=record_id, line=line)
            if task is not None:
                try:
                    task.gold_from_output(record.output)
                except ValueError as exc:
                    raise DataError(path, line, "output", str(exc)) from None
        else:
            if task is None:
                raise DataError(path, line, "instruction", "missing: a training record needs 'instruction', "
                                "'input' and 'output' (chat, ShareGPT and labelled post rows need --task)")
            post = reader.post(path, line, obj, position)
            if post.gold is None:
                field_name = schema.label or ("messages" if schema.shape == "chat" else
                                              "conversations" if schema.shape == "sharegpt" else "label")
                raise DataError(path, line, field_name, "no gold answer: a training record needs one")
            answer = _answer_of(path, line, obj, schema)
            if answer is None or _label_only(task, answer):
                answer = answer_format.render(post.gold)
                if on_rendered is not None:
                    on_rendered(post.id)
            record = Record(instruction=post.instruction or task.instruction, input=post.text, output=answer,
                            id=post.id, line=line)
        candidate = ids.add(record.id, position)
        if candidate is not None:
            first = _first_record(opened, reader, record.id, position, candidate)
            if first is not None:
                raise DataError(path, line, "id", f"duplicate id '{record.id}' (first on line {first})")
        count += 1
        yield record
    if not count:
        raise DataError(opened.display, None, None, "no records found")


def _answer_of(path, line: int, obj: dict, schema: Schema) -> str | None:
    """The row's own answer text (assistant turn, ``output``), or None for label-only rows."""
    if schema.label:
        return None
    if schema.shape in ("chat", "sharegpt"):
        from mentalglm.data.conversations import single_turn

        return single_turn(path, line, obj, "messages" if schema.shape == "chat" else "conversations").answer
    if schema.shape == "record":
        return obj.get("output") if isinstance(obj.get("output"), str) else None
    return None


def _first_record(source: DataSource, reader: RowReader, record_id: str, before: int, hint: int) -> int | None:
    for position, (path, line, obj) in enumerate(source.rows(), 1):
        if position >= before:
            return None
        if hint and position != hint:
            continue
        try:
            schema = reader.schema(obj.keys())
            found = (string_field(path, line, obj, "id", required=False, numeric=True) or str(position)
                     if schema.shape == "record" else reader.row_id(path, line, obj, position))
        except DataError:
            continue
        if found == record_id:
            return line
    return None


def read_records(path: str | os.PathLike, task=None, mapping: DataMapping | None = None) -> list[Record]:
    """Read fine-tuning records into a list; C-IMHI files as before, other formats through ``task``.

    Raises:
        DataError: unreadable file, malformed JSON, a missing/empty ``instruction``, ``input``
            or ``output``, a duplicate id, or a file with no records.
    """
    return list(iter_records(path, task, mapping))


# -- predictions --------------------------------------------------------------------------------
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


def iter_done(path: str | os.PathLike) -> Iterator[dict]:
    """The predictions already written to a JSONL output, streamed line by line (for resuming a run).

    A torn last line (a write cut short by a kill) is skipped: that post is redone.

    Raises:
        DataError: a line in the middle of the file that is not a prediction object.
    """
    path = Path(path)
    if not path.exists():
        return
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle, 1):
            torn = not raw.endswith(b"\n")
            try:
                line = raw.decode("utf-8-sig" if number == 1 else "utf-8")
            except UnicodeDecodeError:
                if torn:
                    return
                raise DataError(path, number, None, "not valid UTF-8 in an existing output; "
                                "fix or remove the file to start over") from None
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except (json.JSONDecodeError, RecursionError):
                if torn:  # torn last line: it is redone
                    return
                raise DataError(path, number, None, "malformed JSON in an existing output; "
                                "fix or remove the file to start over") from None
            if not isinstance(obj, dict) or "id" not in obj:
                raise DataError(path, number, "id", "missing in an existing output line")
            yield obj


def read_done(path: str | os.PathLike) -> dict[str, dict]:
    """Predictions already written to a JSONL output, by id (evaluation scores them from disk).

    Raises:
        DataError: a line in the middle of the file that is not a prediction object.
    """
    return {str(obj["id"]): obj for obj in iter_done(path)}


def read_done_ids(path: str | os.PathLike) -> set[str]:
    """The ids already in a JSONL output: all a resumed run needs to keep, for any number of posts."""
    return {str(obj["id"]) for obj in iter_done(path)}
