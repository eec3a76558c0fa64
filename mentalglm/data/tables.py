"""Delimited text (CSV, TSV, whatever the extension says): the delimiter and quoting are sniffed from the
file, the header is read or named with ``--columns``, and rows stream as ``{column: cell}`` dicts.

Public datasets of these tasks ship ``.csv`` files that are really tab-separated, and TSVs written
with ``"\\t".join`` whose posts hold bare quotation marks. So the delimiter is the one that splits
the sampled lines into the header's width most consistently (ties go to what the extension says),
and a tab-separated file whose fields hold a quote in the middle (``"他说"好``) is read without CSV
quoting, so the quote marks stay part of the post.
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

from mentalglm.core.errors import DataError
from mentalglm.data.encodings import Encoding, decode_error, open_text

#: Candidate delimiters, in the order ties are broken after the extension's own.
DELIMITERS = ("\t", ",", ";", "|")
_NAMES = {"\t": "tab", ",": "comma", ";": "semicolon", "|": "pipe"}
#: A field opened by a quote that closes before the field ends: the file does not use CSV quoting.
_BARE_QUOTE = re.compile(r'^"(?:[^"]|"")*"(?!"|$)')
_SAMPLE_LINES = 200


@dataclass(frozen=True)
class Dialect:
    """How a delimited file is split.

    Attributes:
        delimiter: the field separator.
        quoting: whether ``"…"`` quotes fields (CSV quoting); False keeps quotes as text.
        how: ``sniffed``, ``extension`` (nothing to sniff from) or ``given`` (``--format tsv``).
    """

    delimiter: str
    quoting: bool
    how: str

    def describe(self) -> str:
        """``tab-separated, CSV quoting (sniffed)``."""
        quoting = "CSV quoting" if self.quoting else "no quoting"
        return f"{_NAMES.get(self.delimiter, repr(self.delimiter))}-separated, {quoting} ({self.how})"


def _widths(lines: Sequence[str], delimiter: str, quoting: bool) -> list[int]:
    reader = csv.reader(lines, delimiter=delimiter, quoting=csv.QUOTE_MINIMAL if quoting else csv.QUOTE_NONE)
    try:
        return [len(row) for row in reader if any(cell.strip() for cell in row)]
    except csv.Error:
        return []


def sniff_dialect(sample: str, suffix: str, *, forced: str | None = None) -> Dialect:
    """The dialect of a delimited file from the decoded start of it.

    Args:
        sample: the file's first characters (the last, maybe cut, line is ignored).
        suffix: the file's extension (``.csv``/``.tsv``), which breaks ties.
        forced: a delimiter the user named (``--format tsv``): only the quoting is sniffed.
    """
    lines = sample.split("\n")
    if len(lines) > 1:
        lines = lines[:-1]  # may be cut in the middle
    lines = [line for line in lines[:_SAMPLE_LINES] if line.strip()]
    preferred = "\t" if suffix == ".tsv" else ","
    if forced:
        delimiter, how = forced, "given"
    else:
        best, best_score = None, 0.0
        for candidate in (preferred, *(d for d in DELIMITERS if d != preferred)):
            widths = _widths(lines, candidate, True)
            if not widths or widths[0] < 2:
                continue
            score = sum(w == widths[0] for w in widths) / len(widths)
            if score > best_score:
                best, best_score = candidate, score
        delimiter, how = (best, "sniffed") if best else (preferred, "extension")
    quoting = True
    if delimiter != ",":
        for line in lines:
            if any(_BARE_QUOTE.match(field) for field in line.split(delimiter)):
                quoting = False
                break
    return Dialect(delimiter, quoting, how)


class DelimitedFile:
    """Rows of a delimited text file as ``{column: cell}`` dicts, streamed.

    Args:
        path: the file.
        encoding: how to decode it.
        dialect: delimiter and quoting.
        columns: names for the columns of a headerless file (``--columns``); None: the first
            row is the header.
    """

    def __init__(self, path: Path, encoding: Encoding, dialect: Dialect, columns: Sequence[str] | None = None):
        self.path, self.encoding, self.dialect = Path(path), encoding, dialect
        self.given_columns = tuple(columns) if columns else None

    def _reader(self, handle):
        return csv.reader(handle, delimiter=self.dialect.delimiter,
                          quoting=csv.QUOTE_MINIMAL if self.dialect.quoting else csv.QUOTE_NONE)

    def header(self) -> tuple[str, ...]:
        """The column names: the given ones, or the first row's (stripped).

        Raises:
            DataError: an empty file, an empty or repeated column name.
        """
        if self.given_columns:
            return self.given_columns
        with open_text(self.path, self.encoding) as handle:
            try:
                first = next(self._reader(handle), None)
            except UnicodeDecodeError:
                raise decode_error(self.path, self.encoding) from None
            except csv.Error as exc:
                raise DataError(self.path, 1, None, f"malformed CSV: {exc}") from None
        if first is None:
            raise DataError(self.path, None, None, "empty file")
        return self._check_header([cell.strip() for cell in first], 1)

    def _check_header(self, names: Sequence[str], line: int | None) -> tuple[str, ...]:
        seen = set()
        for index, name in enumerate(names, 1):
            if not name:
                raise DataError(self.path, line, None, f"column {index} of the header has no name")
            if name in seen:
                raise DataError(self.path, line, name, "appears twice in the header")
            seen.add(name)
        return tuple(names)

    def rows(self) -> Iterator[tuple[int, dict]]:
        """(line, {column: cell}) for every non-empty data row.

        Raises:
            DataError: a row whose width differs from the header's, malformed CSV, an undecodable byte.
        """
        header = self.header()
        width = len(header)
        given = f" (--columns names {width})" if self.given_columns else ""
        with open_text(self.path, self.encoding) as handle:
            reader = self._reader(handle)
            try:
                if not self.given_columns:
                    next(reader, None)
                for row in reader:
                    if not any(cell.strip() for cell in row):
                        continue
                    if len(row) != width:
                        raise DataError(self.path, reader.line_num, None,
                                        f"expected {width} columns, found {len(row)}{given}")
                    yield reader.line_num, dict(zip(header, row))
            except UnicodeDecodeError:
                raise decode_error(self.path, self.encoding) from None
            except csv.Error as exc:
                raise DataError(self.path, reader.line_num, None, f"malformed CSV: {exc}") from None
