"""A JSON array file read item by item, so a C-IMHI release distributed as one big array streams.

The text is read in chunks into a buffer; each item is decoded with :meth:`json.JSONDecoder.raw_decode`
and dropped from the buffer as soon as it is yielded, so memory holds about one chunk plus the
item being read, not the file. An item cut by the chunk's end fails to decode: the reader then
reads more (as much again as it holds, so a huge item costs linear time) and tries again; only
at the end of the file is a decode error real. Line numbers count the new lines dropped so far.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator, TextIO

from mentalglm.core.errors import DataError

#: Characters read at a time.
CHUNK = 1 << 20
TOO_DEEP = "JSON nested too deeply to be a post or record"
_WHITESPACE = " \t\n\r"


class _Buffer:
    """The text read so far, from ``start`` on unread, with the line ``start`` is on.

    Consumed text is cut off only once it is most of the buffer, so dropping an item costs
    nothing per item (slicing the buffer every item would copy a chunk per item).
    """

    def __init__(self, handle: TextIO):
        self.handle, self.text, self.start, self.line, self.eof = handle, "", 0, 1, False

    def more(self) -> bool:
        """Read on (at least a chunk, or as much again as is unread); False at the end of the file."""
        if self.eof:
            return False
        if self.start > len(self.text) // 2:
            self.text, self.start = self.text[self.start:], 0
        chunk = self.handle.read(max(CHUNK, len(self.text) - self.start))
        self.eof = not chunk
        self.text += chunk
        return bool(chunk)

    def drop(self, count: int) -> None:
        """Consume ``count`` characters, counting their new lines."""
        self.line += self.text.count("\n", self.start, self.start + count)
        self.start += count

    def line_at(self, offset: int) -> int:
        """The line of the character ``offset`` past ``start``."""
        return self.line + self.text.count("\n", self.start, self.start + offset)

    def peek(self) -> str:
        return self.text[self.start:self.start + 1]

    def skip_space(self) -> str:
        """Consume white space (reading on as needed); the next character, or '' at the end."""
        while True:
            at = self.start
            while at < len(self.text) and self.text[at] in _WHITESPACE:
                at += 1
            self.drop(at - self.start)
            if self.start < len(self.text) or not self.more():
                return self.peek()


def iter_json_array(path: Path, handle: TextIO) -> Iterator[tuple[int, dict]]:
    """(line, object) for each item of the JSON array in ``handle`` (positioned at its start).

    Raises:
        DataError: malformed JSON, an item that is not an object, or text after the array — with its line.
    """
    decoder = json.JSONDecoder()
    buffer = _Buffer(handle)
    if buffer.skip_space() != "[":
        raise DataError(path, buffer.line, None, "malformed JSON: expected '[' to open the array")
    buffer.drop(1)
    if buffer.skip_space() == "]":
        _end(path, buffer)
        return
    while True:
        buffer.skip_space()
        while True:
            try:
                value, end = decoder.raw_decode(buffer.text, buffer.start)
                break
            except json.JSONDecodeError as exc:
                where = buffer.line_at(exc.pos - buffer.start)  # before reading on moves the buffer
                if buffer.more():
                    continue  # the item may only be cut by the chunk's end
                raise DataError(path, where, None, f"malformed JSON: {exc.msg}") from None
            except RecursionError:
                raise DataError(path, buffer.line, None, TOO_DEEP) from None
        if not isinstance(value, dict):
            raise DataError(path, buffer.line, None, f"expected a JSON object, got {type(value).__name__}")
        yield buffer.line, value
        buffer.drop(end - buffer.start)
        following = buffer.skip_space()
        if following == ",":
            buffer.drop(1)
            continue
        if following == "]":
            _end(path, buffer)
            return
        raise DataError(path, buffer.line, None, "malformed JSON: expected ',' or ']' in the array")


def _end(path: Path, buffer: _Buffer) -> None:
    """After the closing bracket only white space may follow."""
    buffer.drop(1)
    if buffer.skip_space():
        raise DataError(path, buffer.line, None, "malformed JSON: extra data after the array")
