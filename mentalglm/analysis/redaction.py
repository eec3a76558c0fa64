"""PII redaction for posts before they leave the machine (pure Python, standard library only).

:func:`redact` replaces, in this order of priority,

=============  ===========  ===========================================================================
what           becomes      caught
=============  ===========  ===========================================================================
URLs           ``[URL]``    ``http://``, ``https://``, ``ftp://`` URLs (ASCII URL characters, so a URL
                            glued to Chinese text ends where the Chinese starts; trailing ``.,;:!?'"``
                            and an unbalanced ``)`` are left outside); scheme-less ``www.…`` and bare
                            domains whose top-level domain is a common one written in lower case
                            (``t.cn/A6abc``, ``weibo.com/u/1``, ``example.co.uk``)
e-mail         ``[EMAIL]``  ``local@domain.tld`` (``123456@qq.com``, ``a.b+c@mail.example.cn``)
ID cards       ``[ID]``     Chinese resident identity card numbers: 18 characters (6-digit region code
                            not starting with 0, birth date 18xx/19xx/20xx with month 01–12 and day
                            01–31, 3-digit sequence, check character digit or ``X``/``x``), with at
                            most one space or dash after the region code and after the birth date; the
                            old 15-digit form (6-digit region, 2-digit year, month, day, 3 digits)
phones         ``[PHONE]``  mainland mobiles ``1[3-9]`` + 9 digits, optionally after ``+86``,
                            ``0086``, ``86`` or ``(+86)``, as one run or grouped 3-4-4 with spaces or
                            dashes (``138-1234-5678``, ``138 1234 5678``); landlines with an area code
                            (``010``, ``02x``, ``0xxx``, or after ``+86`` without the 0) and a 7–8
                            digit number, the area code optionally in parentheses, groups split by
                            ``-`` or a space, an optional extension after ``-``, ``转``, ``ext`` or
                            ``x`` (``010-12345678``, ``(0755)1234567``, ``0755 8888 6666``,
                            ``+86 10 12345678``, ``010-12345678-123``, ``010-12345678转123``)
@mentions      ``[@USER]``  Weibo-style ``@用户名`` (Chinese, letters, digits, ``_``, ``-``) and
                            ``@name``; not the ``@`` of an e-mail address or of ``word@word``
=============  ===========  ===========================================================================

Design decisions:

- **Full-width forms are caught.** Matching runs on an NFKC-normalised copy of the text
  (character by character, with a map back to the original positions), so ``＠张三``,
  ``１３８１２３４５６７８`` and ``ｈｔｔｐｓ：／／…`` are found; only the matched spans are
  replaced, and everything else stays exactly as written (full-width punctuation included).
- **ID-card checksums are not required.** A number with the ID structure (region, plausible birth
  date) is redacted even when its ISO 7064 check character is wrong: a mistyped or deliberately
  altered ID is still identifying, and the date structure already keeps ordinary numbers out.
  :func:`id_checksum_ok` is there for callers that want to tell the two apart.
- **Numbers are delimited by digits.** A phone or ID must not be part of a longer digit run or of
  a decimal number (``3.14159265358979`` keeps its digits), so dates (``2024-10-01``), times
  (``23:59``), counts (``27天``), amounts (``1234567元``) and scores stay. Any 11-digit run
  starting ``13``–``19`` *is* treated as a mobile number, even when followed by ``元``: the
  redactor errs towards removing.
- **A mention runs to the next character that cannot be in a name** (space, punctuation,
  ``:``), capped at Weibo's nickname limit of 30 units (a Chinese character counts 2, so at
  most 15 Chinese characters). Weibo puts a space or colon after a mention; when a post glues
  words to it (``@小明今天好烦``), those words are redacted with the name.

Not caught (redaction is a safety net, not anonymisation): personal names, addresses, QQ or
WeChat ids and other bare account numbers, bank-card numbers, IP addresses, landlines without
an area code (``62345678``), service numbers (``400-161-9995``, ``12356``), mobile numbers
split in other ways (``1381 234 5678``) or spelt in Chinese numerals, and URLs without a scheme
whose top-level domain is not in the list below.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass, field

#: Placeholders by kind, in the order the kinds are applied.
PLACEHOLDERS: dict[str, str] = {
    "url": "[URL]",
    "email": "[EMAIL]",
    "id_card": "[ID]",
    "phone": "[PHONE]",
    "mention": "[@USER]",
}

_URL_CHARS = r"[A-Za-z0-9\-._~:/?#\[\]@!$&'()*+,;=%]"
#: Top-level domains of scheme-less URLs (lower case only, so ``tired.Me too`` stays); a
#: two-letter country code may follow (``.com.cn``, ``.co.uk``).
_TLDS = "com|cn|net|org|edu|gov|info|biz|io|me|co|cc|tv|xyz|top|vip|club|site|online|app|dev|link|ly"
_HOST = r"(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+"

_SCHEME_URL = re.compile(rf"(?:https?|ftp)://{_URL_CHARS}+", re.IGNORECASE)
_BARE_URL = re.compile(
    rf"(?<![A-Za-z0-9@._%+\-/]){_HOST}(?:{_TLDS})(?:\.[a-z]{{2}})?(?![A-Za-z0-9\-@])"
    rf"(?::\d{{1,5}})?(?:/{_URL_CHARS}*)?")
_EMAIL = re.compile(r"(?<![A-Za-z0-9._%+\-])[A-Za-z0-9._%+\-]+@(?:[A-Za-z0-9-]+\.)+[A-Za-z]{2,}(?![A-Za-z0-9\-])")

_DATE8 = r"(?:18|19|20)\d{2}(?:0[1-9]|1[0-2])(?:0[1-9]|[12]\d|3[01])"
_DATE6 = r"\d{2}(?:0[1-9]|1[0-2])(?:0[1-9]|[12]\d|3[01])"
_ID_CARD = re.compile(
    rf"(?<!\d)(?<!\d\.)(?:[1-9]\d{{5}}[ -]?{_DATE8}[ -]?\d{{3}}[\dXx]|[1-9]\d{{5}}{_DATE6}\d{{3}})(?![\dXx])(?!\.\d)")

_SEP = r"[ \-]?"
_MOBILE = re.compile(
    rf"(?<![\d+])(?<!\d\.)(?:\(?(?:\+|00)?86\)?{_SEP})?1[3-9]\d{_SEP}\d{{4}}{_SEP}\d{{4}}(?!\d)(?!\.\d)")
_LANDLINE = re.compile(
    r"(?<![\d+])(?<!\d\.)"
    r"(?:(?:\+|00)86[ \-]?\(?0?|\(?0)(?:10|2\d|[3-9]\d{2})\)?[ \-]?"
    r"\d{3,4}[ \-]?\d{4}"
    r"(?:(?:-|转|ext\.?\s?|x)\d{1,6})?"
    r"(?!\d)(?!\.\d)", re.IGNORECASE)
_MENTION = re.compile(r"(?<![A-Za-z0-9._%+\-\[])@[\w\-]+")  # "[@USER]" stays

_MAX_MENTION_UNITS = 30
_MASK = "\x00"


@dataclass(frozen=True)
class Redacted:
    """The redacted text and how many items of each kind were replaced.

    Attributes:
        text: the text with each caught item replaced by its placeholder; the rest as written.
        counts: replacements per kind (``url``, ``email``, ``id_card``, ``phone``, ``mention``;
            every kind is present, zero when none was found).
    """

    text: str
    counts: dict[str, int] = field(default_factory=dict)

    @property
    def total(self) -> int:
        """All replacements together."""
        return sum(self.counts.values())


def id_checksum_ok(number: str) -> bool:
    """Whether an 18-character ID-card number has the right ISO 7064 MOD 11-2 check character.

    Spaces and dashes are ignored; full-width digits are accepted.

    Example:
        >>> id_checksum_ok("11010519491231002X")
        True
    """
    chars = unicodedata.normalize("NFKC", number).replace(" ", "").replace("-", "").upper()
    if not re.fullmatch(r"\d{17}[\dX]", chars):
        return False
    weights = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
    total = sum(int(c) * w for c, w in zip(chars, weights))
    return "10X98765432"[total % 11] == chars[17]


def _normalized(text: str) -> tuple[str, list[int]]:
    """NFKC of each character, and for each normalised character the index of its original."""
    parts: list[str] = []
    origin: list[int] = []
    for index, char in enumerate(text):
        norm = char if char < "\x80" else unicodedata.normalize("NFKC", char)
        parts.append(norm)
        origin.extend([index] * len(norm))
    return "".join(parts), origin


def _trim_url(match_text: str) -> int:
    """Length of a URL match without trailing punctuation (and without an unbalanced ``)``)."""
    end = len(match_text)
    while end:
        last = match_text[end - 1]
        if last in ".,;:!?'\"":
            end -= 1
        elif last == ")" and match_text[:end].count("(") < match_text[:end].count(")"):
            end -= 1
        elif last == "]" and match_text[:end].count("[") < match_text[:end].count("]"):
            end -= 1
        else:
            break
    return end


def _mention_length(match_text: str) -> int:
    """Length of a mention capped at Weibo's 30 units (non-ASCII characters count 2)."""
    units = 0
    for position, char in enumerate(match_text[1:], start=1):
        units += 1 if char < "\x80" else 2
        if units > _MAX_MENTION_UNITS:
            return position
    return len(match_text)


def _spans(pattern: re.Pattern, text: str, kind: str):
    for match in pattern.finditer(text):
        start, end = match.span()
        if kind == "url":
            end = start + _trim_url(match.group())
            if match.re is _SCHEME_URL and not text[start:end].split("://", 1)[1].strip("/"):
                continue  # a scheme with nothing after it
        elif kind == "mention":
            end = start + _mention_length(match.group())
            if end - start < 2:
                continue
        yield start, end


_PATTERNS: tuple[tuple[str, tuple[re.Pattern, ...]], ...] = (
    ("url", (_SCHEME_URL, _BARE_URL)),
    ("email", (_EMAIL,)),
    ("id_card", (_ID_CARD,)),
    ("phone", (_MOBILE, _LANDLINE)),
    ("mention", (_MENTION,)),
)


def redact(text: str) -> Redacted:
    """Replace URLs, e-mail addresses, ID-card numbers, phone numbers and @mentions in ``text``.

    Kinds are applied in that order; text claimed by an earlier kind is out of reach of later
    ones (the ``@`` inside a URL or e-mail address is no mention). See the module docstring for
    exactly what is and is not caught.

    Example:
        >>> r = redact("加我微信吧，电话 138-1234-5678，或者发邮件到 ab@qq.com ＠小明")
        >>> r.text
        '加我微信吧，电话 [PHONE]，或者发邮件到 [EMAIL] [@USER]'
        >>> r.counts["phone"], r.counts["mention"]
        (1, 1)
    """
    counts = {kind: 0 for kind in PLACEHOLDERS}
    if not text:
        return Redacted(text, counts)
    norm, origin = _normalized(text)
    masked = list(norm)
    found: list[tuple[int, int, str]] = []  # original start, end, kind
    for kind, patterns in _PATTERNS:
        current = "".join(masked)
        spans = []
        for pattern in patterns:
            for start, end in _spans(pattern, current, kind):
                if any(start < e and s < end for s, e in spans):
                    continue
                spans.append((start, end))
        for start, end in spans:
            masked[start:end] = _MASK * (end - start)
            found.append((origin[start], origin[end - 1] + 1, kind))
            counts[kind] += 1
    if not found:
        return Redacted(text, counts)
    pieces = []
    position = 0
    for start, end, kind in sorted(found):
        start = max(start, position)  # one original character expanded by NFKC may hold two matches
        if start >= end:
            continue
        pieces.append(text[position:start])
        pieces.append(PLACEHOLDERS[kind])
        position = end
    pieces.append(text[position:])
    return Redacted("".join(pieces), counts)
