"""Tolerant reading of free model text: sections (label line, explanation, fields) and label mentions.

Models answer in many shapes: full- or half-width colons, ``**标签**``, ``Label:``, English label
names, one label per line, a preamble before the label line. These helpers normalise the text
and find what a task needs; deciding validity is left to the task.
"""

from __future__ import annotations

import functools
import re
import unicodedata
from dataclasses import dataclass
from typing import Iterable, Sequence

#: Separators between labels in a multi-label answer (after NFKC, so full-width forms are folded).
LABEL_SEPARATORS = re.compile(r"[、,;/|\n]+|\s+(?:和|及|以及|与|and|&)\s+"
                              r"|(?<=[\u4e00-\u9fff])(?:和|以及|及|与)(?=[\u4e00-\u9fff])")

#: A negation just before a label mention, within its clause (text is folded: lower case, NFKC).
_NEGATION = re.compile(r"(?:不|没有|没|无|未|并非|不是|不属于|不存在|排除|not|no|non|isn't|is not)[ -]?"
                       r"(?:明显的?|明确的?|属于|存在|具有|有|表现出|a |an |the |really |clearly )?$")
_MARKDOWN_INLINE = re.compile(r"\*\*|__|`+|~~")
_LINE_DECORATION = re.compile(r"^[ \t]*(?:#{1,6}[ \t]*|>[ \t]*|[-*+•·][ \t]+|\d{1,2}[.)][ \t]+|【[ \t]*|\[[ \t]*)?")
_TRAILING_BRACKET = re.compile(r"[ \t]*[】\]][ \t]*(?=[:\n]|$)", re.M)


@dataclass(frozen=True)
class Normalized:
    """Model text folded for matching, remembering where each character came from.

    ``text`` is NFKC-folded (full-width forms become half-width), without markdown emphasis,
    line decorations (headings, bullets, brackets) or surrounding spaces on each line. Spans
    found in it map back to the model's own wording with :meth:`original`, so explanations
    and extracted fields are returned exactly as the model wrote them.
    """

    text: str
    source: str
    origin: tuple[int, ...]

    def original(self, start: int, end: int) -> str:
        """The source text behind ``text[start:end]``, stripped."""
        if start >= end:
            return ""
        return self.source[self.origin[start]: self.origin[end - 1] + 1].strip()


def _drop(chars: list[str], origin: list[int], pattern: re.Pattern, per_line: bool = False):
    text = "".join(chars)
    doomed: set[int] = set()
    if per_line:
        offset = 0
        for line in text.split("\n"):
            match = pattern.match(line)
            if match:
                doomed.update(range(offset + match.start(), offset + match.end()))
            stripped_end = len(line.rstrip())
            doomed.update(range(offset + stripped_end, offset + len(line)))
            offset += len(line) + 1
    else:
        for match in pattern.finditer(text):
            doomed.update(range(match.start(), match.end()))
    keep = [i for i in range(len(chars)) if i not in doomed]
    return [chars[i] for i in keep], [origin[i] for i in keep]


def normalize(text: str) -> Normalized:
    """Fold full-width forms (NFKC), drop markdown emphasis and line decorations, unify new lines.

    The result keeps one line per input line, and each character knows its source position.
    """
    source = text.replace("\r\n", "\n").replace("\r", "\n")
    chars: list[str] = []
    origin: list[int] = []
    for index, ch in enumerate(source):
        folded = unicodedata.normalize("NFKC", ch) if ord(ch) > 127 else ch
        chars.extend(folded)
        origin.extend([index] * len(folded))
    chars, origin = _drop(chars, origin, _MARKDOWN_INLINE)
    chars, origin = _drop(chars, origin, _TRAILING_BRACKET)
    chars, origin = _drop(chars, origin, _LINE_DECORATION, per_line=True)
    return Normalized("".join(chars), source, tuple(origin))


def fold(text: str) -> str:
    """The key used to compare a label or alias with model text: NFKC, lower case, single spaces."""
    return re.sub(r"\s+", " ", unicodedata.normalize("NFKC", text)).strip().lower()


def _is_ascii_word(alias: str) -> bool:
    return bool(re.fullmatch(r"[a-z0-9][a-z0-9 '\-]*", alias))


@dataclass(frozen=True)
class LabelMatcher:
    """Finds label mentions in text, longest alias first, so 非抑郁 is never read as 抑郁.

    Args:
        aliases: pairs of (alias, canonical label); the canonical name itself should be included.
    """

    aliases: tuple[tuple[str, str], ...]

    @classmethod
    def build(cls, table: Iterable[tuple[str, str]]) -> "LabelMatcher":
        """Make a matcher from (alias, label) pairs; aliases are folded and sorted longest first."""
        folded = {fold(alias): label for alias, label in table if fold(alias)}
        return cls(tuple(sorted(folded.items(), key=lambda item: (-len(item[0]), item[0]))))

    def lookup(self, piece: str) -> str | None:
        """The label that ``piece`` names exactly (after folding), or None."""
        key = fold(piece)
        for alias, label in self.aliases:
            if alias == key:
                return label
        return None

    def find(self, text: str) -> list[tuple[int, int, str]]:
        """Non-overlapping (start, end, label) mentions in ``text``, in reading order.

        English aliases only match as whole words (``depressed`` is not found in ``undepressed``).
        """
        haystack = fold(text) if text else ""
        taken: list[tuple[int, int, str]] = []
        for alias, label in self.aliases:
            if _is_ascii_word(alias):
                pattern = re.compile(rf"(?<![a-z0-9]){re.escape(alias)}(?![a-z0-9])")
            else:
                pattern = re.compile(re.escape(alias))
            for match in pattern.finditer(haystack):
                start, end = match.span()
                if all(end <= s or start >= e for s, e, _ in taken):
                    taken.append((start, end, label))
        return sorted(taken)

    def labels_in(self, text: str, negated: bool = False) -> list[str]:
        """Distinct labels mentioned in ``text``, in order of first mention.

        A mention right after a negation (``不属于高自杀风险``, ``not high risk``) is not a
        mention of that label; with ``negated=True`` only such negated mentions are returned.
        """
        folded = fold(text) if text else ""
        seen: list[str] = []
        for start, _, label in self.find(text):
            if _NEGATION.search(folded[max(0, start - 8):start]) is not None and label not in seen:
                if negated:
                    seen.append(label)
            elif not negated and label not in seen:
                seen.append(label)
        return seen

    def leftovers(self, text: str) -> list[str]:
        """Pieces of a label list that name no label (for reporting unknown labels)."""
        folded = fold(text)
        chars = list(folded)
        for start, end, _ in self.find(text):
            chars[start:end] = [" "] * (end - start)
        rest = "".join(chars)
        pieces = (p.strip(" .。:!?()[]{}\"'-*") for p in LABEL_SEPARATORS.split(rest))
        return [p for p in pieces if p and not re.fullmatch(r"(和|及|以及|与|and|&)", p)]


@dataclass(frozen=True)
class Section:
    """A headed part of a response: its header kind (``label``, ``explanation`` or a field name),
    its body (stripped) and where the body lies in the normalised text."""

    kind: str
    header: str
    body: str
    start: int
    end: int


def _stripped_span(text: str, start: int, end: int) -> tuple[int, int]:
    piece = text[start:end]
    if not piece.strip():
        return start, start
    return start + len(piece) - len(piece.lstrip()), start + len(piece.rstrip())


@functools.lru_cache(maxsize=256)
def _header_pattern(headers: tuple[tuple[str, tuple[str, ...]], ...]):
    """The compiled header pattern and folded word → kind map of one header set (a task's are few and fixed:
    compiling them per answer cost more than the parse itself)."""
    words = sorted(((w, k) for k, ws in headers for w in ws), key=lambda p: -len(p[0]))
    if not words:
        return None
    kind_of = {fold(w): k for w, k in words}
    alternation = "|".join(re.escape(w) for w, _ in words)
    pattern = re.compile(
        rf"(?im)(?:^[ \t]*(?P<a>{alternation})[ \t]*(?::|$)|(?<=[。.!?;,\s])(?P<b>{alternation})[ \t]*:)"
    )
    return pattern, kind_of


def split_sections(text: str, headers: dict[str, Sequence[str]]) -> tuple[Section, list[Section]]:
    """Split normalised text at known headers (``标签：``, ``Explanation:``, a field name…).

    A header counts at the start of a line (with a colon, or alone on its line as a markdown
    heading) or inside a line after a sentence break with a colon. Only the first header of
    each kind opens a section, so ``原因：`` inside an explanation stays part of it.

    Args:
        text: output of :func:`normalize`.
        headers: kind → header words (any case).

    Returns:
        The preamble before the first header (as a Section of kind ``preamble``), and the
        headed sections in order.
    """
    compiled = _header_pattern(tuple((kind, tuple(words)) for kind, words in headers.items()))
    if compiled is None:
        start, end = _stripped_span(text, 0, len(text))
        return Section("preamble", "", text[start:end], start, end), []
    pattern, kind_of = compiled
    accepted: list[tuple[str, str, int, int]] = []
    seen: set[str] = set()
    for match in pattern.finditer(text):
        word = match.group("a") or match.group("b")
        kind = kind_of[fold(word)]
        if kind in seen:
            continue
        seen.add(kind)
        accepted.append((kind, word, match.start(), match.end()))
    preamble_end = accepted[0][2] if accepted else len(text)
    start, end = _stripped_span(text, 0, preamble_end)
    preamble = Section("preamble", "", text[start:end], start, end)
    sections = []
    for i, (kind, word, _, body_start) in enumerate(accepted):
        body_end = accepted[i + 1][2] if i + 1 < len(accepted) else len(text)
        start, end = _stripped_span(text, body_start, body_end)
        sections.append(Section(kind, word, text[start:end], start, end))
    return preamble, sections


def first_line(text: str) -> str:
    """The first non-empty line of ``text`` ('' if none)."""
    return next((line.strip() for line in text.split("\n") if line.strip()), "")
