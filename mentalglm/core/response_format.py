"""The answer format of a task: the one owner of ``标签：``, ``解释：`` and the ``、`` separator.

It renders answers (fine-tuning targets, score-mode answers, what the CLI prints), names the
headers the parser looks for first, and builds the constraint for decoding: one language,
two encodings.

``标签：<label>[、<label>…]\\n解释：<free text>`` (or one ``field：text`` line per field for
extraction tasks, then the explanation). llama.cpp gets it as a GBNF grammar
(:meth:`ResponseFormat.gbnf`); transformers gets the same language as a prefix test on UTF-8
bytes (:meth:`ResponseFormat.allows`), so greedy constrained decoding picks the same tokens in
both. The label part is constrained; the explanation is free text whose length the token
budget (``max_new_tokens``) bounds. Working on bytes, not characters, keeps tokens that hold
half a Chinese character (byte-level BPE has them) usable.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

COLON = "："


@dataclass(frozen=True)
class ResponseFormat:
    """The constrained shape of one task's answers.

    Attributes:
        kind: ``single-label``, ``multi-label`` or ``extraction``.
        labels: allowed labels (classification).
        none_label: multi-label only: the answer meaning "no label" (``无``), or None.
        fields: extraction only: field names in order; each field holds one non-empty line.
        label_prefix: header of the label line.
        explanation_prefix: header of the explanation.
        empty_value: extraction only: what an empty field is written as.
        separator: between labels of a multi-label answer (at most one mention per label's worth:
            a multi-label answer names at most ``len(labels)`` labels, so a looping model stops).
    """

    kind: str
    labels: tuple[str, ...] = ()
    none_label: str | None = None
    fields: tuple[str, ...] = ()
    label_prefix: str = "标签"
    explanation_prefix: str = "解释"
    separator: str = "、"
    empty_value: str = "无"

    @property
    def label_head(self) -> str:
        """What opens the label line: ``标签：``."""
        return f"{self.label_prefix}{COLON}"

    @property
    def explanation_head(self) -> str:
        """What opens the explanation: ``解释：``."""
        return f"{self.explanation_prefix}{COLON}"

    def field_head(self, name: str) -> str:
        """What opens an extraction field's line: ``触发事件：``."""
        return f"{name}{COLON}"

    def label_line(self, labels) -> str:
        """``标签：A、B`` (multi-label with no label: the none answer, ``标签：无``)."""
        if not labels and self.none_label:
            return f"{self.label_head}{self.none_label}"
        return f"{self.label_head}{self.separator.join(labels)}"

    def render(self, answer, explanation: str = "") -> str:
        """The answer text in this format — what fine-tuning teaches and constrained decoding accepts.

        Args:
            answer: labels (classification) or field name → text (extraction; a missing or empty
                field is written as :attr:`empty_value`).
            explanation: the explanation; left out when empty.
        """
        if self.kind == "extraction":
            lines = [f"{self.field_head(name)}{answer.get(name) or self.empty_value}" for name in self.fields]
        else:
            lines = [self.label_line(answer)]
        if explanation:
            lines.append(f"{self.explanation_head}{explanation}")
        return "\n".join(lines)

    def explanation_lead(self, labels) -> str:
        """The label line and the explanation header: what score mode writes before generating the explanation."""
        return f"{self.label_line(labels)}\n{self.explanation_head}"

    @cached_property
    def _explanation_head(self) -> bytes:
        return f"\n{self.explanation_head}".encode()

    # -- prefix test (transformers) ---------------------------------------------------------
    def allows(self, text: bytes) -> bool:
        """Whether ``text`` (UTF-8 bytes generated so far) can still become a valid answer."""
        return self._walk(text) is not None

    def in_free_text(self, text: bytes) -> bool:
        """Whether ``text`` has reached the free explanation (anything may follow, and the answer may end)."""
        return self._walk(text) is True

    def _walk(self, text: bytes):
        """None: impossible; False: a valid unfinished prefix of the constrained part; True: in free text."""
        if self.kind == "extraction":
            return self._walk_fields(text)
        head = self.label_head.encode()
        if len(text) <= len(head):
            return False if head.startswith(text) else None
        if not text.startswith(head):
            return None
        first = [l.encode() for l in self.labels] + ([self.none_label.encode()] if self.none_label else [])
        return self._walk_labels(text[len(head):], first, len(self.labels))

    def _walk_labels(self, rest: bytes, choices: list[bytes], budget: int):
        """Match one label (``budget`` = how many labels may still come, this one included)."""
        more = [l.encode() for l in self.labels]
        outcome = None
        for label in choices:
            if len(rest) <= len(label):
                if label.startswith(rest):
                    outcome = outcome or False
                continue
            if not rest.startswith(label):
                continue
            after = rest[len(label):]
            result = self._after_label(after, label, more, budget - 1)
            if result is True:
                return True
            if result is False:
                outcome = False
        return outcome

    def _after_label(self, after: bytes, label: bytes, more: list[bytes], budget: int):
        results = [self._after_head(after, self._explanation_head)]
        if self.kind == "multi-label" and budget > 0 and label != (self.none_label or "").encode():
            sep = self.separator.encode()
            if len(after) <= len(sep):
                results.append(False if sep.startswith(after) else None)
            elif after.startswith(sep):
                results.append(self._walk_labels(after[len(sep):], more, budget))
        if True in results:
            return True
        return False if False in results else None

    @staticmethod
    def _after_head(text: bytes, head: bytes):
        if len(text) < len(head):
            return False if head.startswith(text) else None
        return True if text.startswith(head) else None

    def _walk_fields(self, text: bytes):
        heads = [self.field_head(name).encode() for name in self.fields]
        position = 0
        for index, head in enumerate(heads):
            chunk = text[position:]
            if len(chunk) <= len(head):
                return False if head.startswith(chunk) else None
            if not chunk.startswith(head):
                return None
            position += len(head)
            end = text.find(b"\n", position)
            if end == -1:
                return False  # inside the field's line
            if end == position:
                return None  # an empty field
            if index + 1 < len(heads):
                position = end + 1
            else:
                return self._after_head(text[end:], self._explanation_head)
        return None

    # -- grammar (llama.cpp) ----------------------------------------------------------------
    def gbnf(self) -> str:
        """The same language as a GBNF grammar for llama.cpp."""
        def literal(text: str) -> str:
            escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
            return f'"{escaped}"'

        explanation = f'{literal(chr(10) + self.explanation_head)} free'
        rules = []
        if self.kind == "extraction":
            lines = " ".join(f'{literal(("" if i == 0 else chr(10)) + self.field_head(name))} line'
                             for i, name in enumerate(self.fields))
            rules.append(f"root ::= {lines} {explanation}")
            rules.append(r'line ::= [^\n]+')
        else:
            label = " | ".join(literal(l) for l in self.labels)
            rules.append(f"label ::= {label}")
            if self.kind == "multi-label":
                labels = f'label ({literal(self.separator)} label){{0,{len(self.labels) - 1}}}'
                if self.none_label:
                    labels = f"({labels} | {literal(self.none_label)})"
            else:
                labels = "label"
            rules.insert(0, f"root ::= {literal(self.label_head)} {labels} {explanation}")
        rules.append(r"free ::= [^\x00]*")
        return "\n".join(rules) + "\n"
