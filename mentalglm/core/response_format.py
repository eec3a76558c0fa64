"""The answer format of a task: the one owner of ``标签：``, ``解释：`` and the ``、`` separator.

It renders answers (fine-tuning targets, score-mode answers, what the CLI prints), names the
headers the parser looks for first, and builds the constraint for decoding: one grammar,
two encodings.

- classification: ``标签：<label>[、<label>…]\\n解释：<free text>``;
- extraction: one ``field：text`` line per field, then the explanation;
- hierarchical (cognitive pathways): one line per part, ``part：<sublabel>[、…]｜<summary>`` or
  ``part：无``, then the explanation.

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
from dataclasses import dataclass
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


@dataclass(frozen=True)
class _Class(_Node):
    """A character class repeated: ``line`` (one or more non-newline) or ``free`` (anything but NUL)."""

    name: str

    _FORMS = {"line": (r"[^\n]+", rb"[^\n]+"), "free": (r"[^\x00]*", rb"[^\x00]*")}

    def gbnf(self, rules):
        rules.setdefault(self.name, self._FORMS[self.name][0])
        return self.name

    def regex(self):
        return self._FORMS[self.name][1]


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

    # -- headers and rendering ----------------------------------------------------------------------
    @property
    def label_head(self) -> str:
        """What opens the label line: ``标签：``."""
        return f"{self.label_prefix}{COLON}"

    @property
    def explanation_head(self) -> str:
        """What opens the explanation: ``解释：``."""
        return f"{self.explanation_prefix}{COLON}"

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

    def render(self, answer, explanation: str = "") -> str:
        """The answer text in this format — what fine-tuning teaches and constrained decoding accepts.

        Args:
            answer: labels (classification); field name → text (extraction; a missing or empty
                field is written as :attr:`empty_value`); for hierarchical tasks a mapping with
                ``labels`` (sub-labels) and ``summaries`` (part → text).
            explanation: the explanation; left out when empty.
        """
        if self.kind == "extraction":
            lines = [f"{self.field_head(name)}{answer.get(name) or self.empty_value}" for name in self.fields]
        elif self.kind == "hierarchical":
            chosen, summaries = set(answer.get("labels") or ()), answer.get("summaries") or {}
            lines = [self.part_line(part, [s for s in subs if s in chosen], summaries.get(part, ""))
                     for part, subs in self.parts]
        else:
            lines = [self.label_line(answer)]
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
        """The label line and the explanation header: what score mode writes before generating the explanation."""
        return f"{self.label_line(labels)}\n{self.explanation_head}"

    # -- the grammar ----------------------------------------------------------------------------
    def _label_list(self, rule: str, labels: tuple[str, ...]) -> _Node:
        label = _Rule(rule, _Alt(tuple(_Lit(label) for label in labels)))
        return _Seq((label, _Rep(_Seq((_Lit(self.separator), label)), 0, len(labels) - 1)))

    @cached_property
    def _constrained(self) -> _Node:
        """Everything before the free explanation, the explanation header included."""
        explanation = _Lit("\n" + self.explanation_head)
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
        return self._patterns[0].fullmatch(text, partial=True) is not None

    def in_free_text(self, text: bytes) -> bool:
        """Whether ``text`` has reached the free explanation (anything may follow, and the answer may end)."""
        return self._patterns[1].match(text) is not None
