"""GLM-4 tokenizer facts and the byte-level BPE alphabet, shared by backends and converters.

The special tokens, stop tokens, pre-tokenizer regex and chat template are GLM-4's own; the
byte ↔ character table is GPT-2's, which every byte-level ``tokenizer.json`` vocabulary uses.
"""

from __future__ import annotations

from functools import lru_cache

GLM4_SPECIAL_TOKENS = ("<|endoftext|>", "[MASK]", "[gMASK]", "[sMASK]", "<sop>", "<eop>",
                       "<|system|>", "<|user|>", "<|assistant|>", "<|observation|>")
GLM4_PRETOKENIZE_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
                          r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
#: Generation ends at any of these (GLM-4 turn markers); the first is also the pad token.
GLM4_STOP_TOKENS = ("<|endoftext|>", "<|user|>", "<|observation|>")
#: ``[gMASK]<sop>`` + ``<|role|>\ncontent`` per message (+ ``<|assistant|>\n``). Written with
#: explicit ``\n`` strings because transformers renders with trim_blocks/lstrip_blocks.
GLM4_CHAT_TEMPLATE = (
    "[gMASK]<sop>"
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\\n' + message['content'] }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}"
)


@lru_cache(maxsize=1)
def byte_to_unicode() -> dict[int, str]:
    """GPT-2's byte → printable character table used by byte-level BPE vocabularies."""
    printable = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
                 + list(range(ord("®"), ord("ÿ") + 1)))
    table = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return table


@lru_cache(maxsize=1)
def unicode_to_byte() -> dict[str, int]:
    """Inverse of :func:`byte_to_unicode`."""
    return {c: b for b, c in byte_to_unicode().items()}


def token_to_str(token: bytes) -> str:
    """Raw token bytes → the byte-level string a ``tokenizer.json`` vocabulary uses."""
    table = byte_to_unicode()
    return "".join(table[b] for b in token)


def str_to_token(text: str) -> bytes:
    """A byte-level vocabulary string → raw token bytes.

    Raises:
        ValueError: a character outside the 256-symbol byte-level alphabet.
    """
    table = unicode_to_byte()
    try:
        return bytes(table[c] for c in text)
    except KeyError as exc:
        raise ValueError(f"{text!r} is not a byte-level BPE token (character {exc.args[0]!r})") from None
