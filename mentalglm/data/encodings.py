"""How the bytes of a data file become text: found from a byte-order mark, by strict UTF-8, by strict
GB18030, or given by the user — never decoded with silent replacement.

Chinese datasets are still shipped in GB18030/GBK (Excel and older Windows tools write it) and in
UTF-16 with a BOM. Detection decodes the first :data:`SNIFF_BYTES` strictly: a byte order mark
decides first; otherwise UTF-8 is tried, then GB18030 (a superset of GBK and GB2312). A byte that
fits the chosen encoding nowhere later in the file is an error naming the file, the line and the
byte, with the hint to give ``--encoding``.

Files are read through :class:`io.TextIOWrapper` (C speed, universal new lines, so CRLF and LF
read alike) and only when it fails is the file scanned again to locate the offending byte: the
fast path pays nothing for precise errors.
"""

from __future__ import annotations

import codecs
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, TextIO

from mentalglm.core.errors import DataError, MentalGLMError

#: How much of a file detection reads (and how much the format sniffers see).
SNIFF_BYTES = 1 << 20
#: Order matters: the UTF-32-LE mark begins with the UTF-16-LE one.
_BOMS = ((codecs.BOM_UTF32_LE, "utf-32", "utf-32-le"), (codecs.BOM_UTF32_BE, "utf-32", "utf-32-be"),
         (codecs.BOM_UTF8, "utf-8-sig", "utf-8"), (codecs.BOM_UTF16_LE, "utf-16", "utf-16-le"),
         (codecs.BOM_UTF16_BE, "utf-16", "utf-16-be"))


@dataclass(frozen=True)
class Encoding:
    """The encoding a file is read with.

    Attributes:
        codec: the Python codec that decodes it (``utf-8-sig`` strips a UTF-8 BOM).
        name: what the user is told (``utf-8``, ``gb18030``, ``utf-16-le``).
        how: ``BOM``, ``detected`` or ``given`` (``--encoding`` or a dataset card).
    """

    codec: str
    name: str
    how: str

    def describe(self) -> str:
        """``gb18030 (detected)``: the name and how it was found."""
        return f"{self.name} ({self.how})"


def open_binary(path: str | Path):
    """``path`` opened for reading bytes; a missing file, a folder or an OS error is a one-line DataError."""
    try:
        return open(path, "rb")
    except FileNotFoundError:
        raise DataError(path, None, None, "no such file") from None
    except IsADirectoryError:
        raise DataError(path, None, None, "is a directory, expected a file") from None
    except OSError as exc:
        raise DataError(path, None, None, f"cannot read: {exc.strerror or exc}") from None


def _head(path: Path, size: int | None = None) -> bytes:
    with open_binary(path) as handle:
        return handle.read(SNIFF_BYTES if size is None else size)


def _decodes(codec: str, data: bytes, final: bool) -> bool:
    try:
        codecs.getincrementaldecoder(codec)().decode(data, final=final)
    except UnicodeDecodeError:
        return False
    return True


def detect_encoding(path: str | Path, given: str | None = None) -> Encoding:
    """The encoding of ``path``: ``given`` if set, else from its BOM, else strict UTF-8, else strict GB18030.

    Raises:
        DataError: the file cannot be read, looks like UTF-16 without a BOM, or its start decodes
            neither as UTF-8 nor as GB18030 (the message names line and byte).
        MentalGLMError: ``given`` is not an encoding Python knows.
    """
    path = Path(path)
    head = _head(path)
    final = len(head) < SNIFF_BYTES
    if given:
        try:
            name = codecs.lookup(given).name
        except LookupError:
            raise MentalGLMError(f"unknown encoding '{given}' (try utf-8, gb18030, gbk, utf-16)") from None
        if name == "utf-8" and head.startswith(codecs.BOM_UTF8):
            return Encoding("utf-8-sig", "utf-8", "given")  # the mark is not part of the first column's name
        return Encoding(name, name, "given")
    for bom, codec, name in _BOMS:
        if head.startswith(bom):
            return Encoding(codec, name, "BOM")
    if b"\x00" in head[:4096] and head[:4096].count(b"\x00") * 4 > len(head[:4096]):
        # Strict UTF-8 would accept the NULs and hand over text with a NUL after every character.
        raise DataError(path, None, None, "looks like UTF-16 without a byte-order mark; "
                        "give --encoding utf-16-le or --encoding utf-16-be")
    if _decodes("utf-8", head, final):
        return Encoding("utf-8", "utf-8", "detected")
    if _decodes("gb18030", head, final):
        return Encoding("gb18030", "gb18030", "detected")
    utf8, gb = locate_decode_error(path, "utf-8"), locate_decode_error(path, "gb18030")
    # The encoding that got further is most likely the file's own; its failure is the broken byte.
    line, offset, byte = max(utf8, gb, key=lambda found: found[1])
    raise DataError(path, line, None, f"not valid UTF-8 nor GB18030 (byte 0x{byte:02x} at file offset {offset}); "
                    "save the file as UTF-8 or give its encoding with --encoding")


def locate_decode_error(path: str | Path, codec: str) -> tuple[int, int, int]:
    """Where ``codec`` first fails on ``path``: (line, file offset, the byte), or (0, -1, 0) when it does not.

    A second, slower pass used only after a decoding error, so the fast path stays fast.
    """
    decoder = codecs.getincrementaldecoder(codec)()
    offset, line = 0, 1
    with open(path, "rb") as handle:
        while True:
            chunk = handle.read(1 << 16)
            state = decoder.getstate()
            try:
                text = decoder.decode(chunk, final=not chunk)
            except UnicodeDecodeError as exc:
                buffered = len(state[0])
                good = exc.start - buffered  # exc.start counts from the bytes the decoder held back
                probe = codecs.getincrementaldecoder(codec)()
                probe.setstate(state)
                try:
                    line += probe.decode(chunk[:max(good, 0)]).count("\n")
                except UnicodeDecodeError:  # cannot happen: that prefix decoded before
                    pass
                position = offset + good
                failing = (state[0] + chunk)[exc.start] if exc.start < buffered + len(chunk) else 0
                return line, position, failing
            line += text.count("\n")
            if not chunk:
                return 0, -1, 0
            offset += len(chunk)


def decode_error(path: Path, encoding: Encoding) -> DataError:
    """The one-line error for a byte of ``path`` that ``encoding`` cannot decode."""
    line, offset, byte = locate_decode_error(path, encoding.codec)
    hint = ("; the file's start decoded as UTF-8 — if it is GB18030/GBK give --encoding gb18030"
            if encoding.how == "detected" and encoding.name == "utf-8" else "; give the right --encoding")
    where = f"byte 0x{byte:02x} at file offset {offset}" if offset >= 0 else "truncated at the end of the file"
    return DataError(path, line or None, None, f"not valid {encoding.name} ({where}){hint}")


def open_text(path: str | Path, encoding: Encoding, *, newline: str | None = None) -> TextIO:
    """``path`` opened for reading as text in ``encoding``, strictly (``errors="strict"``).

    Args:
        newline: ``None`` (default) reads CRLF, CR and LF alike as ``\\n``.
    """
    raw = open_binary(Path(path))
    return io.TextIOWrapper(raw, encoding=encoding.codec, errors="strict", newline=newline)


def iter_lines(path: str | Path, encoding: Encoding) -> Iterator[tuple[int, str]]:
    """(line number, line without its line end) for every line of ``path``, streamed.

    Raises:
        DataError: a byte the encoding cannot decode (line and byte named).
    """
    path = Path(path)
    with open_text(path, encoding) as handle:
        try:
            for number, line in enumerate(handle, 1):
                yield number, line[:-1] if line.endswith("\n") else line
        except UnicodeDecodeError:
            raise decode_error(path, encoding) from None


def read_text(path: str | Path, encoding: Encoding) -> str:
    """The whole text of ``path`` with new lines normalised to ``\\n`` (for formats that cannot stream)."""
    path = Path(path)
    with open_text(path, encoding) as handle:
        try:
            return handle.read()
        except UnicodeDecodeError:
            raise decode_error(path, encoding) from None


def head_text(path: str | Path, encoding: Encoding, size: int = 1 << 16) -> str:
    """The decoded start of ``path`` (up to ``size`` bytes, cut at a character boundary), for sniffing formats."""
    data = _head(Path(path), size)
    decoder = codecs.getincrementaldecoder(encoding.codec)()
    try:
        text = decoder.decode(data, final=len(data) < size)
    except UnicodeDecodeError:
        raise decode_error(Path(path), encoding) from None
    return text.replace("\r\n", "\n").replace("\r", "\n")
