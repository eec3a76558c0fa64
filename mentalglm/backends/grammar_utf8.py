"""llama.cpp's grammar-side UTF-8 decoding, shared by the torch constraint and the llama.cpp sampler.

llama.cpp's grammar reads each token's piece as UTF-8 and keeps an unfinished character
across tokens; :func:`utf8_step` follows it, so the torch backend accepts exactly the tokens
llama.cpp's grammar accepts, and the llama.cpp sampler knows when only continuation bytes can come.
"""

from __future__ import annotations

from functools import cached_property
from typing import Sequence

#: llama.cpp's UTF-8 lead-byte table: sequence length by the high nibble (0 = continuation byte).
_UTF8_LENGTH = (1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 2, 2, 3, 4)


def utf8_step(state: tuple[int, int], data: bytes) -> tuple[int, int, int] | None:
    """Advance llama.cpp's grammar-side UTF-8 decoder over one token's bytes.

    Mirrors ``decode_utf8`` and ``llama_grammar_match_partial_char`` in llama.cpp's
    ``llama-grammar.cpp`` for a character class that excludes only NUL (every class in
    :meth:`ResponseFormat.gbnf` does): the token is rejected where llama.cpp rejects it, and
    accepted where it accepts it — including its leniency (continuation bytes inside one
    token are not checked, overlong forms are caught only when a sequence is split after two
    bytes with a value below 2).

    Args:
        state: ``(value, bytes still expected)`` of an unfinished character, ``(0, 0)`` if none.
        data: the token's bytes.

    Returns:
        ``(value, bytes still expected, characters completed by this token)``, or None if
        llama.cpp's grammar would reject the token (empty or NUL-led piece, an invalid
        sequence, a NUL character).
    """
    if not data or data[0] == 0:
        return None  # llama.cpp masks empty pieces and pieces starting with NUL outright
    data = data.split(b"\0", 1)[0]  # llama.cpp reads pieces as C strings
    value, remain = state
    pos = completed = 0
    while pos < len(data) and remain > 0:
        if data[pos] >> 6 != 2:
            return None  # a new lead byte where a continuation byte was due
        value = (value << 6) + (data[pos] & 0x3F)
        pos += 1
        remain -= 1
    if state[1] > 0 and remain == 0:
        if value == 0:
            return None
        completed += 1
    while pos < len(data):
        remain = _UTF8_LENGTH[data[pos] >> 4] - 1
        if remain < 0:
            return None  # a continuation byte where a character should start
        value = data[pos] & ((1 << (7 - remain)) - 1)
        pos += 1
        while pos < len(data) and remain > 0:
            value = (value << 6) + (data[pos] & 0x3F)
            pos += 1
            remain -= 1
        if remain == 0:
            if value == 0:
                return None  # the grammar's classes exclude NUL
            completed += 1
    if remain == 1 and value < 2:
        return None  # a 7-bit character split across two bytes (overlong)
    return value, remain, completed


class TokenBytesIndex:
    """What a vocabulary's pieces (the bytes llama.cpp's grammar reads per token) tell a constrained
    search, computed once per model: which tokens UTF-8 allows where the grammar's decoder stands,
    and the pieces sorted for byte-prefix search.

    Inside an unfinished character only a token whose piece starts with a continuation byte can
    follow; between characters only a non-empty piece that does not (:func:`utf8_step` refuses the
    rest, and so does llama.cpp). End-of-generation tokens are decided elsewhere and are in neither.

    Args:
        pieces: the bytes of each token id (None or empty where the grammar reads nothing).
    """

    def __init__(self, pieces: Sequence[bytes | None]):
        import numpy as np

        self._np = np
        self.pieces = pieces
        self.known = np.array([bool(p) for p in pieces], dtype=bool)
        self.continues = np.array([bool(p) and p[0] >> 6 == 2 for p in pieces], dtype=bool)
        self._ids: dict = {}

    def utf8_allowed(self, inside_character: bool):
        """A boolean mask over the ids: the tokens UTF-8 allows inside an unfinished character, or between."""
        return self.continues if inside_character else self.known & ~self.continues

    def utf8_allowed_ids(self, inside_character: bool, also: Sequence[int] = ()):
        """The ids :meth:`utf8_allowed` marks, with ``also`` (end tokens) added, ascending; cached."""
        key = (inside_character, tuple(sorted(also)))
        if key not in self._ids:
            mask = self.utf8_allowed(inside_character).copy()
            mask[[t for t in also if t < len(mask)]] = True
            self._ids[key] = self._np.flatnonzero(mask).astype(self._np.int32)
        return self._ids[key]

    @cached_property
    def by_piece(self) -> tuple[list[bytes], list[int]]:
        """``(pieces, ids)`` sorted by piece (read up to a NUL, as llama.cpp reads them), for prefix search."""
        entries = sorted((piece.split(b"\0", 1)[0], token) for token, piece in enumerate(self.pieces) if piece)
        return [piece for piece, _ in entries], [token for _, token in entries]
