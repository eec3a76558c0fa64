"""llama.cpp's grammar-side UTF-8 decoding, shared by the torch constraint and the llama.cpp sampler.

llama.cpp's grammar reads each token's piece as UTF-8 and keeps an unfinished character
across tokens; :func:`utf8_step` follows it, so the torch backend accepts exactly the tokens
llama.cpp's grammar accepts, and the llama.cpp sampler knows when only continuation bytes can come.
"""

from __future__ import annotations

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
