"""The answer format of a task: the one owner of ``标签：``, ``解释：`` and the ``、`` separator.

It renders answers (fine-tuning targets, score-mode answers, what the CLI prints), names the
headers the parser looks for first, and builds the constraint for decoding: one grammar,
two encodings.

- classification: ``标签：<label>[、<label>…]\\n解释：<free text>``;
- extraction: one ``field：text`` line per field, then the explanation;
- hierarchical (cognitive pathways): one line per part, ``part：<sublabel>[、…]｜<summary>`` or
  ``part：无``, then the explanation;
- with an evidence part (tasks with ``evidence: true``), a line ``依据：“span”[“span”…]`` or
  ``依据：无`` before the explanation. Given the post (:meth:`ResponseFormat.for_post`), the
  spans must be copied from it: GBNF spells the post's substrings out as a chain of rules, and
  the prefix test checks the spans against the post's bytes directly (a regex of every
  substring would be quadratic in the post's length).

The grammar is built once as a small tree (:class:`_Node`) and rendered twice: as GBNF for
llama.cpp (:meth:`ResponseFormat.gbnf`) and as a bytes regular expression whose *partial*
match is the prefix test transformers needs (:meth:`ResponseFormat.allows`), so greedy
constrained decoding picks the same tokens in both. The label part is constrained; the
explanation is free text whose length the token budget (``max_new_tokens``) bounds. Working on
bytes, not characters, keeps tokens that hold half a Chinese character (byte-level BPE has
them) usable.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from functools import cached_property

COLON = "："


# -- the grammar tree ------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Node:
    """A piece of the answer grammar; subclasses render it as GBNF and as a bytes regex."""

    def gbnf(self, rules: dict[str, str]) -> str:
        """This piece as a GBNF expression; named rules it uses are added to ``rules``."""
        raise NotImplementedError

    def regex(self) -> bytes:
        """This piece as a bytes regular expression over the answer's UTF-8 bytes."""
        raise NotImplementedError


@dataclass(frozen=True)
class _Lit(_Node):
    text: str

    def gbnf(self, rules):
        escaped = self.text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
        return f'"{escaped}"'

    def regex(self):
        return re.escape(self.text.encode())


@dataclass(frozen=True)
class _Seq(_Node):
    items: tuple[_Node, ...]

    def gbnf(self, rules):
        # A sequence inside a sequence needs no parentheses: concatenation is associative.
        return " ".join(item.gbnf(rules) if isinstance(item, _Seq) else _grouped(item, rules) for item in self.items)

    def regex(self):
        return b"".join(b"(?:" + item.regex() + b")" for item in self.items)


@dataclass(frozen=True)
class _Alt(_Node):
    options: tuple[_Node, ...]

    def gbnf(self, rules):
        return " | ".join(option.gbnf(rules) for option in self.options)

    def regex(self):
        return b"|".join(b"(?:" + option.regex() + b")" for option in self.options)


@dataclass(frozen=True)
class _Rep(_Node):
    item: _Node
    low: int
    high: int

    def gbnf(self, rules):
        return f"{_grouped(self.item, rules)}{{{self.low},{self.high}}}"

    def regex(self):
        return b"(?:" + self.item.regex() + b")" + f"{{{self.low},{self.high}}}".encode()


@dataclass(frozen=True)
class _Rule(_Node):
    """A named rule: referenced by name in GBNF (defined once), inlined in the regex."""

    name: str
    body: _Node

    def gbnf(self, rules):
        if self.name not in rules:
            rules[self.name] = ""  # reserve the slot first: definitions keep the order of first use
            rules[self.name] = self.body.gbnf(rules)
        return self.name

    def regex(self):
        return self.body.regex()


# One UTF-8 character that is neither a newline nor a quote mark “ ” (E2 80 9C/9D), byte by byte.
_QUOTABLE_CHAR = (rb"(?:[\x00-\x09\x0b-\x7f]|[\xc0-\xdf][\x80-\xbf]|\xe2(?:[\x81-\xbf][\x80-\xbf]"
                  rb"|\x80[\x80-\x9b\x9e-\xbf])|[\xe0\xe1\xe3-\xef][\x80-\xbf]{2}|[\xf0-\xf7][\x80-\xbf]{3})")


@dataclass(frozen=True)
class _Class(_Node):
    """A character class repeated: ``line`` (one or more non-newline), ``free`` (anything but NUL)
    or ``quoted`` (two or more characters, no newline and no quote mark “ ”)."""

    name: str

    _FORMS = {"line": (r"[^\n]+", rb"[^\n]+"), "free": (r"[^\x00]*", rb"[^\x00]*"),
              "quoted": ("[^“”\\n] [^“”\\n]+", _QUOTABLE_CHAR + b"{2,}")}

    def gbnf(self, rules):
        rules.setdefault(self.name, self._FORMS[self.name][0])
        return self.name

    def regex(self):
        return self._FORMS[self.name][1]


@dataclass(frozen=True)
class _Copied(_Node):
    """Two or more consecutive characters of ``source`` without a newline or a quote mark “ ”
    (one per grammar; ``source`` has at least one such pair: see :func:`quotable`).

    GBNF: one rule per character position, each the character followed optionally by the next
    position's rule; a span starts at any position that has a successor. The regex is the
    shape only (:data:`_QUOTABLE_CHAR`); :meth:`ResponseFormat.allows` checks the copying.
    """

    source: str

    def gbnf(self, rules):
        starts, offset = [], 0
        for segment in quotable(self.source):
            names = [f"copy{offset + i}" for i in range(len(segment))]
            for i, char in enumerate(segment):
                literal = _Lit(char).gbnf(rules)
                rules[names[i]] = f"{literal} {names[i + 1]}?" if i + 1 < len(segment) else literal
                if i + 1 < len(segment):
                    starts.append(f"{literal} {names[i + 1]}")
            offset += len(segment)
        rules["copied"] = " | ".join(dict.fromkeys(starts))
        return "copied"

    def regex(self):
        return _Class("quoted").regex()


def _characters(data: bytes) -> int:
    """Characters in UTF-8 ``data``, an unfinished last one included (lead bytes are not 80–BF)."""
    return sum(not 0x80 <= byte <= 0xBF for byte in data)


def quotable(source: str) -> list[str]:
    """The stretches of ``source`` a quoted span can be copied from: split at newlines and quote marks,
    two characters or more."""
    return [seg for seg in source.replace("“", "\n").replace("”", "\n").split("\n") if len(seg) >= 2]


def _grouped(node: _Node, rules: dict[str, str]) -> str:
    text = node.gbnf(rules)
    return f"({text})" if isinstance(node, (_Alt, _Seq)) else text


# -- the format -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class ResponseFormat:
    """The constrained shape of one task's answers.

    Attributes:
        kind: ``single-label``, ``multi-label``, ``extraction`` or ``hierarchical``.
        labels: allowed labels (classification).
        none_label: multi-label only: the answer meaning "no label" (``无``), or None.
        fields: extraction only: field names in order; each field holds one non-empty line.
        parts: hierarchical only: (part, its sub-labels) in order.
        label_prefix: header of the label line.
        explanation_prefix: header of the explanation.
        empty_value: extraction and hierarchical: what an empty field or absent part is written as.
        separator: between labels of a multi-label answer (at most one mention per label's worth:
            a multi-label answer names at most ``len(labels)`` labels, so a looping model stops).
        summary_separator: hierarchical only: between a part's sub-labels and its summary.
        evidence_prefix: header of the evidence line (``依据``), or None for a task without one.
        evidence_source: the post the evidence must be copied from (:meth:`for_post`), or None:
            then any quoted text is allowed and grounding flags what the post lacks.
        max_quotes: at most this many quoted spans on the evidence line.
    """

    kind: str
    labels: tuple[str, ...] = ()
    none_label: str | None = None
    fields: tuple[str, ...] = ()
    parts: tuple[tuple[str, tuple[str, ...]], ...] = ()
    label_prefix: str = "标签"
    explanation_prefix: str = "解释"
    separator: str = "、"
    empty_value: str = "无"
    summary_separator: str = "｜"
    evidence_prefix: str | None = None
    evidence_source: str | None = None
    max_quotes: int = 3

    def for_post(self, text: str) -> ResponseFormat:
        """This format with its evidence copied from ``text`` (the post as the backend sees it);
        itself when the task has no evidence part."""
        return replace(self, evidence_source=text) if self.evidence_prefix else self

    # -- headers and rendering ----------------------------------------------------------------------
    @property
    def label_head(self) -> str:
        """What opens the label line: ``标签：``."""
        return f"{self.label_prefix}{COLON}"

    @property
    def explanation_head(self) -> str:
        """What opens the explanation: ``解释：``."""
        return f"{self.explanation_prefix}{COLON}"

    @property
    def evidence_head(self) -> str:
        """What opens the evidence line: ``依据：``."""
        return f"{self.evidence_prefix}{COLON}"

    def evidence_line(self, quotes) -> str:
        """``依据：“span”“span”``, or ``依据：无`` without quotes."""
        spans = "".join(f"“{quote}”" for quote in quotes)
        return f"{self.evidence_head}{spans or self.empty_value}"

    def field_head(self, name: str) -> str:
        """What opens an extraction field's or a pathway part's line: ``触发性事件：``."""
        return f"{name}{COLON}"

    def label_line(self, labels) -> str:
        """``标签：A、B`` (multi-label with no label: the none answer, ``标签：无``)."""
        if not labels and self.none_label:
            return f"{self.label_head}{self.none_label}"
        return f"{self.label_head}{self.separator.join(labels)}"

    def part_line(self, part: str, labels, summary: str = "") -> str:
        """``part：A、B｜summary``, or ``part：无`` for a part without sub-labels."""
        if not labels:
            return f"{self.field_head(part)}{self.empty_value}"
        named = self.separator.join(labels)
        return f"{self.field_head(part)}{named}{self.summary_separator}{summary or self.empty_value}"

    def render(self, answer, explanation: str = "", evidence=None) -> str:
        """The answer text in this format — what fine-tuning teaches and constrained decoding accepts.

        Args:
            answer: labels (classification); field name → text (extraction; a missing or empty
                field is written as :attr:`empty_value`); for hierarchical tasks a mapping with
                ``labels`` (sub-labels) and ``summaries`` (part → text).
            explanation: the explanation; left out when empty.
            evidence: spans quoted from the post, for a format with an evidence part (none: ``依据：无``).
        """
        if self.kind == "extraction":
            lines = [f"{self.field_head(name)}{answer.get(name) or self.empty_value}" for name in self.fields]
        elif self.kind == "hierarchical":
            chosen, summaries = set(answer.get("labels") or ()), answer.get("summaries") or {}
            lines = [self.part_line(part, [s for s in subs if s in chosen], summaries.get(part, ""))
                     for part, subs in self.parts]
        else:
            lines = [self.label_line(answer)]
        if self.evidence_prefix:
            lines.append(self.evidence_line(evidence or ()))
        if explanation:
            lines.append(f"{self.explanation_head}{explanation}")
        return "\n".join(lines)

    def answer_lines(self, labels, fields=None) -> list[str]:
        """A parsed answer (labels, and fields or summaries) written back in this format, explanation aside:
        what the command line and the quickstart show for a prediction."""
        if self.kind == "hierarchical":
            return self.render({"labels": labels, "summaries": fields or {}}).split("\n")
        if self.kind == "extraction":
            return [f"{self.field_head(name)}{(fields or {}).get(name) or '—'}" for name in self.fields]
        return [self.label_line(labels) if labels or self.none_label else f"{self.label_head}—"]

    def explanation_lead(self, labels) -> str:
        """What score mode writes before generating the explanation: the label line and the
        explanation header, or, with an evidence part, the evidence header (the model quotes, then explains)."""
        return f"{self.label_line(labels)}\n{self.evidence_head if self.evidence_prefix else self.explanation_head}"

    # -- the grammar ----------------------------------------------------------------------------
    def _label_list(self, rule: str, labels: tuple[str, ...]) -> _Node:
        label = _Rule(rule, _Alt(tuple(_Lit(label) for label in labels)))
        return _Seq((label, _Rep(_Seq((_Lit(self.separator), label)), 0, len(labels) - 1)))

    def _evidence(self) -> _Node:
        """``\n依据：`` and ``无`` or one to :attr:`max_quotes` quoted spans (copied when the post is known)."""
        head, none = _Lit("\n" + self.evidence_head), _Lit(self.empty_value)
        if self.evidence_source is not None and not quotable(self.evidence_source):
            return _Seq((head, none))  # the post has nothing to quote
        span = _Copied(self.evidence_source) if self.evidence_source is not None else _Class("quoted")
        quote = _Seq((_Lit("“"), span, _Lit("”")))
        return _Seq((head, _Alt((none, _Seq((quote, _Rep(quote, 0, self.max_quotes - 1)))))))

    @cached_property
    def _constrained(self) -> _Node:
        """Everything before the free explanation, the explanation header included."""
        explanation = _Lit("\n" + self.explanation_head)
        if self.evidence_prefix:
            explanation = _Seq((self._evidence(), explanation))
        line = _Class("line")
        if self.kind == "extraction":
            heads = [_Seq((_Lit(("" if i == 0 else "\n") + self.field_head(name)), line))
                     for i, name in enumerate(self.fields)]
            return _Seq((*heads, explanation))
        if self.kind == "hierarchical":
            lines = []
            for index, (part, subs) in enumerate(self.parts):
                present = _Seq((self._label_list(f"part{index + 1}", subs), _Lit(self.summary_separator), line))
                lines.append(_Seq((_Lit(("" if index == 0 else "\n") + self.field_head(part)),
                                   _Alt((present, _Lit(self.empty_value))))))
            return _Seq((*lines, explanation))
        if self.kind == "multi-label":
            labels: _Node = self._label_list("label", self.labels)
            if self.none_label:
                labels = _Alt((labels, _Lit(self.none_label)))
        else:
            labels = _Rule("label", _Alt(tuple(_Lit(label) for label in self.labels)))
        return _Seq((_Lit(self.label_head), labels, explanation))

    def gbnf(self) -> str:
        """The answer language as a GBNF grammar for llama.cpp."""
        rules: dict[str, str] = {}
        root = _Seq((self._constrained, _Class("free"))).gbnf(rules)
        return "\n".join([f"root ::= {root}", *(f"{name} ::= {body}" for name, body in rules.items())]) + "\n"

    @cached_property
    def _patterns(self):
        import regex  # the `regex` module (a dependency): partial matching, which `re` lacks

        constrained = self._constrained.regex()
        return (regex.compile(b"(?:" + constrained + b")" + _Class("free").regex(), regex.DOTALL),
                regex.compile(b"(?:" + constrained + b")", regex.DOTALL))

    # -- prefix test (transformers) -------------------------------------------------------------
    def allows(self, text: bytes) -> bool:
        """Whether ``text`` (UTF-8 bytes generated so far) can still become a valid answer."""
        if self._patterns[0].fullmatch(text, partial=True) is None:
            return False
        return self.evidence_source is None or all(map(self._copied_so_far, self._quoted_so_far(text)))

    def _copied_so_far(self, span: bytes) -> bool:
        """Whether ``span`` (bytes after “, possibly ending mid-character) can still become a copy of
        two or more characters of one quotable stretch of the post — exactly what the GBNF allows."""
        close = "”".encode()
        for k in (1, 2):  # the span closing: whole characters, then the first bytes of ”
            if span.endswith(close[:k]) and _characters(span[:-k]) >= 2 and self._occurs(span[:-k]):
                return True
        # Still open: it occurs, and it is long enough to close or can grow where it occurs.
        return self._occurs(span, grow=_characters(span) < 2)

    @cached_property
    def _segments(self) -> tuple[bytes, ...]:
        return tuple(seg.encode() for seg in quotable(self.evidence_source or ""))

    def _occurs(self, span: bytes, grow: bool = False) -> bool:
        """``span`` occurs in a stretch (with ``grow``: with at least one character after it there)."""
        for segment in self._segments:
            at = segment.find(span)
            while at >= 0:
                if not grow or at + len(span) < len(segment):
                    return True
                at = segment.find(span, at + 1)
        return False

    def _quoted_so_far(self, text: bytes) -> list[bytes]:
        """The spans of the evidence line in ``text``, the last one possibly unfinished (a prefix of a
        substring is a substring, so an unfinished span is checked as it stands)."""
        head = ("\n" + self.evidence_head).encode()
        at = text.find(head)
        if at < 0:
            return []
        line = text[at + len(head):].split(b"\n", 1)[0]
        return [piece.split("”".encode(), 1)[0] for piece in line.split("“".encode())[1:]]

    def in_free_text(self, text: bytes) -> bool:
        """Whether ``text`` has reached the free explanation (anything may follow, and the answer may end)."""
        return self._patterns[1].match(text) is not None
