"""Tasks: what to ask the model, which labels exist, how to read its answer, how to score it.

Four kinds: ``single-label`` (depression, suicide risk), ``multi-label`` (cognitive
distortions), ``hierarchical`` (cognitive pathways: parts with sub-labels and a summary each,
Jiang et al. 2024) and ``extraction`` (named text fields). Every task
answers with a label line and an explanation, and parses free model text tolerantly: when
nothing usable is found the response is *invalid* — kept, counted, never mapped to a default.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import Any, ClassVar, Mapping, Sequence

from mentalglm.core import metrics as _metrics
from mentalglm.core.parsing import LABEL_SEPARATORS, LabelMatcher, first_line, fold, normalize, split_sections
from mentalglm.core.response_format import ResponseFormat

#: Header words that introduce the label line, besides the task's own ``label_prefix``.
LABEL_HEADERS = ("标签", "标注", "类别", "分类", "分类结果", "判断", "判断结果", "预测", "答案", "结论",
                 "label", "labels", "category", "categories", "class", "prediction", "answer")
#: Header words that introduce the explanation, besides the task's own ``explanation_prefix``.
EXPLANATION_HEADERS = ("解释", "理由", "推理", "原因", "分析", "依据", "判断依据", "说明",
                       "explanation", "reason", "reasons", "reasoning", "rationale", "analysis")

KINDS = ("single-label", "multi-label", "extraction", "hierarchical")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


@dataclass(frozen=True)
class Label:
    """One label of a classification task.

    Args:
        name: the canonical label, as gold data and outputs spell it (e.g. ``抑郁``).
        aliases: other spellings a model may use (English names, variants, negations).
        description: a short gloss, usually the English name.
    """

    name: str
    aliases: tuple[str, ...] = ()
    description: str = ""


@dataclass(frozen=True)
class Field:
    """One text field of an extraction task (e.g. ``信念`` of a cognitive pathway)."""

    name: str
    aliases: tuple[str, ...] = ()
    description: str = ""


@dataclass(frozen=True)
class ParsedResponse:
    """What a task read from one model response.

    Attributes:
        labels: canonical labels found (extraction tasks: the names of non-empty fields).
        explanation: the explanation text ('' when the model gave none).
        valid: False when no usable answer was found; such a response scores as wrong.
        problem: why it is invalid, or a note on a valid one (e.g. unknown extra labels).
        fields: extraction tasks only: field name → extracted text.
        label_line: the labels were read from a label line (``标签：…``), not guessed from prose.
    """

    labels: tuple[str, ...]
    explanation: str
    valid: bool
    problem: str | None = None
    fields: Mapping[str, str] | None = None
    label_line: bool = False


class Task:
    """Base class of all tasks; subclasses implement parsing, gold reading and metrics.

    Args:
        name: short name used on the command line (``suicide-risk``).
        instruction: the Chinese instruction given to the model before the post.
        description: one line for ``mentalglm tasks``.
        label_prefix: the header of the label line in the response format (``标签``).
        explanation_prefix: the header of the explanation (``解释``).
        evidence_prefix: the header of an evidence line quoting the post (``依据``) before the
            explanation, or None (the default) for a task whose answers have none.
        primary_metric: the key of :meth:`compute_metrics` shown first in reports.
        source: where the task was defined (a file path or a module), for ``mentalglm plugins``.
    """

    kind: ClassVar[str] = ""

    def __init__(self, *, name: str, instruction: str, description: str = "", label_prefix: str = "标签",
                 explanation_prefix: str = "解释", evidence_prefix: str | None = None, primary_metric: str = "",
                 source: str | None = None):
        if not _NAME.match(name or ""):
            raise ValueError(f"task name {name!r} must be letters, digits, '-', '_' or '.'")
        if not instruction or not instruction.strip():
            raise ValueError(f"task {name!r} has no instruction")
        self.name, self.instruction, self.description = name, instruction, description
        self.label_prefix, self.explanation_prefix = label_prefix, explanation_prefix
        self.evidence_prefix = evidence_prefix or None
        self.primary_metric, self.source = primary_metric, source

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r} ({self.kind})>"

    # -- what subclasses provide -------------------------------------------------------------
    def parse(self, text: str, *, strict: bool = False) -> ParsedResponse:
        """Read a model response; never raises on odd text, returns an invalid response instead.

        ``strict``: accept only answers in the task's own format (a label line, or field lines).
        """
        raise NotImplementedError

    def gold_from_output(self, output: str) -> Any:
        """The gold answer stated by a C-IMHI ``output``; raises ValueError when it states none."""
        raise NotImplementedError

    def gold_from_value(self, value: Any) -> Any:
        """The gold answer from a post file's ``label`` value; raises ValueError when outside the task."""
        raise NotImplementedError

    def explanation_of(self, output: str) -> str | None:
        """The explanation section of a gold answer (after ``解释：``), or None when it has none."""
        sections = self._headed_sections(output)
        return (sections[2] or None) if sections else None

    def compute_metrics(self, golds: Sequence[Any], responses: Sequence[ParsedResponse]) -> dict:
        """All metrics of this task for aligned gold answers and parsed responses."""
        raise NotImplementedError

    def response_format(self) -> ResponseFormat:
        """The answer format: renders answers, names the headers, builds the decoding constraint."""
        raise NotImplementedError

    def describe(self) -> dict:
        """A JSON-ready description for ``mentalglm tasks --json``."""
        info = {"name": self.name, "kind": self.kind, "description": self.description,
                "primary_metric": self.primary_metric, "instruction": self.instruction}
        if self.evidence_prefix:  # only when set: tasks without one describe (and digest) as before
            info["evidence_prefix"] = self.evidence_prefix
        return info

    # -- shared helpers ----------------------------------------------------------------------
    def _headers(self) -> dict[str, tuple[str, ...]]:
        return {"label": (self.label_prefix, *LABEL_HEADERS),
                "explanation": (self.explanation_prefix, *EXPLANATION_HEADERS), **self._evidence_header()}

    def _evidence_header(self) -> dict[str, tuple[str, ...]]:
        """The evidence line as a section of its own, so it never runs into a label or a field."""
        return {"evidence": (self.evidence_prefix,)} if self.evidence_prefix else {}

    def _headed_sections(self, text: str):
        """``(norm, headed sections without the explanation, explanation)``, or None for an empty answer.

        What the parsers of tasks read from header lines (fields, pathway parts) share.
        """
        norm = normalize(text or "")
        if not norm.text.strip():
            return None
        _, sections = split_sections(norm.text, self._headers())
        explanation = next((norm.original(s.start, s.end) for s in sections if s.kind == "explanation"), "")
        return norm, [s for s in sections if s.kind not in ("explanation", "evidence")], explanation


class ClassificationTask(Task):
    """What single- and multi-label tasks share: a fixed label set, aliases, and the label-line parser.

    Use :class:`SingleLabelTask` or :class:`MultiLabelTask`; they differ only where the number
    of labels per post matters (reading the answer, reading gold values, metrics).

    Args:
        labels: the label set, in display order.
        report_label_f1: labels whose own F1 is reported as ``f1[label]`` (``高自杀风险``).
        **kwargs: see :class:`Task`.
    """

    #: The fewest labels a task of this kind can have.
    min_labels: ClassVar[int] = 2
    multi_label: ClassVar[bool] = False

    def __init__(self, *, labels: Sequence[Label], report_label_f1: Sequence[str] = (), **kwargs):
        super().__init__(**kwargs)
        if len(labels) < self.min_labels:
            raise ValueError(f"task {self.name!r} needs at least {self.min_labels} labels")
        self.labels = tuple(labels)
        names = [label.name for label in self.labels]
        if len(set(names)) != len(names):
            raise ValueError(f"task {self.name!r} lists a label twice")
        unknown = [name for name in report_label_f1 if name not in names]
        if unknown:
            raise ValueError(f"task {self.name!r}: report_label_f1 names unknown labels {unknown}")
        self.report_label_f1 = tuple(report_label_f1)
        table = [(label.name, label.name) for label in self.labels]
        table += [(alias, label.name) for label in self.labels for alias in label.aliases]
        clashes = {fold(a) for a, l in table if any(fold(a) == fold(b) and l != m for b, m in table)}
        if clashes:
            raise ValueError(f"task {self.name!r}: alias {sorted(clashes)[0]!r} names two labels")
        self.matcher = LabelMatcher.build(table)

    @property
    def label_names(self) -> tuple[str, ...]:
        """The canonical label names, in display order."""
        return tuple(label.name for label in self.labels)

    def describe(self) -> dict:
        """JSON-ready description including the label set and aliases."""
        info = super().describe()
        info["labels"] = [{"name": l.name, "description": l.description, "aliases": list(l.aliases)}
                          for l in self.labels]
        return info

    def response_format(self) -> ResponseFormat:
        """``标签：`` + the label(s) + ``\n解释：`` + free text."""
        return ResponseFormat(self.kind, labels=self.label_names, label_prefix=self.label_prefix,
                              explanation_prefix=self.explanation_prefix, evidence_prefix=self.evidence_prefix)

    # -- what the two kinds do differently --------------------------------------------------
    def _label_block(self, body: str) -> str:
        """The label list of a label section: its first line (multi-label tasks read on)."""
        return body.split("\n")[0]  # the body is stripped: its first line is the answer line

    def _read_labels(self, candidate: str, explanation: str) -> ParsedResponse | None:
        """The answer ``candidate`` gives, or None when it names no usable label."""
        raise NotImplementedError

    def _gold_pieces(self, value: Any) -> list:
        """The label mentions in a gold ``label`` value."""
        raise NotImplementedError

    # -- shared ------------------------------------------------------------------------------
    def parse(self, text: str, *, strict: bool = False) -> ParsedResponse:
        """Read labels and explanation from free model text (see the module docstring).

        Args:
            text: the model's answer.
            strict: only an answer with a label line (``标签：…``) counts; without one it is invalid.
        """
        norm = normalize(text or "")
        if not norm.text.strip():
            return ParsedResponse((), "", False, "empty response")
        preamble, sections = split_sections(norm.text, self._headers())
        label_section = next((s for s in sections if s.kind == "label"), None)
        explained = next((s for s in sections if s.kind == "explanation"), None)
        if label_section is not None:
            answer = self._label_block(label_section.body)
            candidates = [answer]
            after_answer = (label_section.start + len(answer), label_section.end)
        else:
            # No label line: try the answer's first line, then all text before any explanation.
            answer = first_line(preamble.body)
            candidates = [] if strict else [answer, preamble.body]
            after_answer = (preamble.start + len(answer), preamble.end)
        span = (explained.start, explained.end) if explained is not None else after_answer
        explanation = norm.original(*span)
        for candidate in candidates:
            read = self._read_labels(candidate, explanation)
            if read is not None:
                return replace(read, label_line=label_section is not None)
        if label_section is not None and answer.strip():
            problem = f"label line names no label of task '{self.name}': {answer.strip()[:40]!r}"
        elif strict:
            problem = f"no label line ({self.label_prefix}：…); --strict-format accepts only a label line"
        else:
            problem = f"no label of task '{self.name}' found"
        return ParsedResponse((), explanation, False, problem)

    def _ambiguous(self, labels: Sequence[str], explanation: str) -> ParsedResponse:
        return ParsedResponse((), explanation, False, f"ambiguous: names several labels ({', '.join(labels)})")

    def _allowed(self) -> str:
        return ", ".join(self.label_names)

    def gold_from_output(self, output: str) -> tuple[str, ...]:
        """Gold labels stated by a C-IMHI output; unknown or missing labels raise ValueError."""
        parsed = self.parse(output)
        if not parsed.valid:
            raise ValueError(f"{parsed.problem} (allowed: {self._allowed()})")
        if parsed.problem:  # gold must state its labels plainly (no unknown extras, no negations)
            raise ValueError(f"{parsed.problem} (allowed: {self._allowed()})")
        return parsed.labels

    def gold_from_value(self, value: Any) -> tuple[str, ...]:
        """Gold labels from a ``label`` value: a label name or alias (multi-label: a list or joined string)."""
        labels: list[str] = []
        for piece in self._gold_pieces(value):
            if not isinstance(piece, str):
                raise ValueError(f"expected label strings, got {type(piece).__name__}")
            label = self.matcher.lookup(piece)
            if label is None:
                raise ValueError(f"'{piece.strip()}' is not a label of task '{self.name}' (allowed: {self._allowed()})")
            if label not in labels:
                labels.append(label)
        return tuple(labels)


class SingleLabelTask(ClassificationTask):
    """Exactly one label per post (depression, suicide risk); primary metric weighted F1 by default.

    Example:
        >>> task = SingleLabelTask(name="stress", instruction="判断压力。", labels=[Label("有压力"), Label("无压力")])
        >>> task.parse("标签：无压力\n解释：……").labels
        ('无压力',)
    """

    kind = "single-label"

    def __init__(self, **kwargs):
        kwargs.setdefault("primary_metric", "weighted_f1")
        super().__init__(**kwargs)

    def _read_labels(self, candidate: str, explanation: str) -> ParsedResponse | None:
        labels = self.matcher.labels_in(candidate)
        if len(labels) == 1:
            return ParsedResponse((labels[0],), explanation, True)
        if len(labels) > 1:
            return self._ambiguous(labels, explanation)
        if len(self.labels) == 2:
            # A binary task answered by negating one label ("不属于高自杀风险") means the other.
            negated = self.matcher.labels_in(candidate, negated=True)
            if len(negated) == 1:
                other = next(name for name in self.label_names if name != negated[0])
                return ParsedResponse((other,), explanation, True, f"read from the negation of {negated[0]}")
        return None

    def _gold_pieces(self, value: Any) -> list:
        if not isinstance(value, str):
            raise ValueError(f"expected one label as a string, got {type(value).__name__}")
        if not value.strip():
            raise ValueError(f"empty label (allowed: {self._allowed()})")
        return [value]

    def compute_metrics(self, golds, responses) -> dict:
        """Classification metrics from scikit-learn; invalid responses count as wrong."""
        predicted = [r.labels[0] if r.valid else _metrics.INVALID for r in responses]
        return _metrics.single_label_metrics([g[0] for g in golds], predicted, self.label_names,
                                             self.report_label_f1)


class MultiLabelTask(ClassificationTask):
    """Any number of labels per post (cognitive distortions); primary metric micro F1 by default.

    Args:
        none_aliases: answers meaning "no label applies" (``无``); the first is what the
            answer format writes.
        **kwargs: see :class:`ClassificationTask`.
    """

    kind = "multi-label"
    min_labels = 1
    multi_label = True

    def __init__(self, *, none_aliases: Sequence[str] = (), **kwargs):
        kwargs.setdefault("primary_metric", "micro_f1")
        super().__init__(**kwargs)
        self.none_aliases = tuple(none_aliases)

    def response_format(self) -> ResponseFormat:
        """``标签：`` + labels joined by ``、`` (or the none answer) + ``\n解释：`` + free text."""
        return replace(super().response_format(), none_label=self.none_aliases[0] if self.none_aliases else None)

    def _is_none(self, text: str) -> bool:
        key = fold(text).strip(" .。!")
        return any(key == fold(alias) for alias in self.none_aliases)

    def _label_block(self, body: str) -> str:
        """The first line plus following lines made only of labels (a list written one per line)."""
        lines = body.split("\n")
        block = [lines[0]]
        for line in lines[1:]:
            if not line.strip():
                continue
            pieces = [p for p in LABEL_SEPARATORS.split(line) if p.strip()]
            if pieces and all(self.matcher.lookup(p) for p in pieces):
                block.append(line)
            else:
                break
        return "\n".join(block)

    def _read_labels(self, candidate: str, explanation: str) -> ParsedResponse | None:
        labels = self.matcher.labels_in(candidate)
        if labels:
            unknown = self.matcher.leftovers(candidate)
            note = f"unknown labels ignored: {', '.join(unknown)}" if unknown else None
            return ParsedResponse(tuple(labels), explanation, True, note)
        if candidate and self._is_none(candidate):
            return ParsedResponse((), explanation, True)
        return None

    def _gold_pieces(self, value: Any) -> list:
        if isinstance(value, str):
            pieces = [p for p in LABEL_SEPARATORS.split(value) if p.strip()]
        elif isinstance(value, list):
            pieces = value
        else:
            raise ValueError(f"expected a label or a list of labels, got {type(value).__name__}")
        if len(pieces) == 1 and isinstance(pieces[0], str) and self._is_none(pieces[0]):
            return []
        return pieces

    def compute_metrics(self, golds, responses) -> dict:
        """Classification metrics from scikit-learn; invalid responses count as wrong."""
        predicted = [r.labels if r.valid else () for r in responses]
        return _metrics.multi_label_metrics(golds, predicted, self.label_names, [not r.valid for r in responses])


class ExtractionTask(Task):
    """A task that extracts named text fields (the parts of a cognitive pathway).

    A response is valid when it fills at least one field; missing fields score as empty.
    Scored with character-level ROUGE-L F1 per field, averaged over fields and posts.

    Args:
        fields: the fields, in the order the response format lists them.
        empty_values: values that mean "nothing to extract" (``无``); they are kept as written.
        **kwargs: see :class:`Task`.
    """

    kind = "extraction"

    def __init__(self, *, fields: Sequence[Field], empty_values: Sequence[str] = ("无",), **kwargs):
        kwargs.setdefault("primary_metric", "rouge_l")
        super().__init__(**kwargs)
        if not fields:
            raise ValueError(f"task {self.name!r} needs at least one field")
        self.fields = tuple(fields)
        self.empty_values = tuple(empty_values)

    @property
    def field_names(self) -> tuple[str, ...]:
        """The field names, in response order."""
        return tuple(f.name for f in self.fields)

    def describe(self) -> dict:
        """JSON-ready description including the fields."""
        info = super().describe()
        info["fields"] = [{"name": f.name, "description": f.description, "aliases": list(f.aliases)}
                          for f in self.fields]
        return info

    def response_format(self) -> ResponseFormat:
        """One ``field：text`` line per field, then ``\n解释：`` + free text."""
        return ResponseFormat(self.kind, fields=self.field_names, explanation_prefix=self.explanation_prefix,
                              empty_value=self.empty_values[0], evidence_prefix=self.evidence_prefix)

    def _headers(self) -> dict[str, tuple[str, ...]]:
        headers = {f.name: (f.name, *f.aliases) for f in self.fields}
        headers["explanation"] = (self.explanation_prefix, *EXPLANATION_HEADERS)
        return {**headers, **self._evidence_header()}

    def parse(self, text: str, *, strict: bool = False) -> ParsedResponse:
        """Read each field's text; invalid when the response names none of the fields.

        Fields are always read from their own header lines, so ``strict`` changes nothing here.
        """
        headed = self._headed_sections(text)
        if headed is None:
            return ParsedResponse((), "", False, "empty response", {})
        norm, sections, explanation = headed
        values = {s.kind: " ".join(norm.original(s.start, s.end).split()) for s in sections}
        if not values:
            return ParsedResponse((), explanation, False,
                                  f"none of the fields {', '.join(self.field_names)} found", {})
        fields = {name: values.get(name, "") for name in self.field_names}
        filled = tuple(name for name in self.field_names if fields[name])
        return ParsedResponse(filled, explanation, True, None, fields, label_line=True)

    def gold_from_output(self, output: str) -> dict[str, str]:
        """Gold fields from a C-IMHI output; every field must be present."""
        parsed = self.parse(output)
        if not parsed.valid:
            raise ValueError(parsed.problem)
        missing = [name for name in self.field_names if not parsed.fields[name]]
        if missing:
            raise ValueError(f"missing fields {', '.join(missing)} (write '{self.empty_values[0]}' for none)")
        return dict(parsed.fields)

    def gold_from_value(self, value: Any) -> dict[str, str]:
        """Gold fields from a ``label`` object mapping field names to text."""
        if not isinstance(value, dict):
            raise ValueError(f"expected an object with fields {', '.join(self.field_names)}")
        unknown = [k for k in value if k not in self.field_names]
        missing = [k for k in self.field_names if not isinstance(value.get(k), str)]
        if unknown or missing:
            bad = unknown or missing
            raise ValueError(f"{'unknown' if unknown else 'missing'} fields {', '.join(bad)} "
                             f"(expected: {', '.join(self.field_names)})")
        return {k: value[k] for k in self.field_names}

    def compute_metrics(self, golds, responses) -> dict:
        """Character-level ROUGE-L per field; invalid responses score 0."""
        predicted = [dict(r.fields or {}) if r.valid else {} for r in responses]
        return _metrics.extraction_metrics(golds, predicted, self.field_names,
                                           [not r.valid for r in responses])


class HierarchicalTask(Task):
    """Two-level labels with a summary per top-level part: the cognitive pathways of Jiang et al. (2024).

    Each *part* (触发性事件, 认知歪曲, 情绪反应, 驳斥) has sub-labels; a post's answer names, per
    part, the sub-labels that apply and a one-sentence summary — ``认知歪曲：以偏概全｜我什么都做不好``
    — or ``无``. Scored with micro-F1 at level 1 (the parts implied by the sub-labels), level 2
    (the sub-labels) and overall (true/false positives and negatives pooled over both levels),
    and ROUGE-1/2/L of the summaries at character level.

    Args:
        parts: the top-level labels, in answer order (their aliases are accepted as headers).
        sub_labels: part name → its sub-labels (aliases accepted as answers).
        empty_values: answers meaning "this part is absent" (``无``); the first is written.
        **kwargs: see :class:`Task`.
    """

    kind = "hierarchical"

    def __init__(self, *, parts: Sequence[Label], sub_labels: Mapping[str, Sequence[Label]],
                 empty_values: Sequence[str] = ("无",), **kwargs):
        kwargs.setdefault("primary_metric", "hierarchical_f1")
        super().__init__(**kwargs)
        self.parts = tuple(parts)
        names = [part.name for part in self.parts]
        if not names or len(set(names)) != len(names):
            raise ValueError(f"task {self.name!r} needs distinct top-level labels (parts)")
        unknown = [parent for parent in sub_labels if parent not in names]
        if unknown:
            raise ValueError(f"task {self.name!r}: parent {unknown[0]!r} is not a top-level label")
        self.sub_labels = {name: tuple(sub_labels.get(name, ())) for name in names}
        empty = [name for name, subs in self.sub_labels.items() if not subs]
        if empty:
            raise ValueError(f"task {self.name!r}: top-level label {empty[0]!r} has no sub-labels")
        leaves = [label.name for subs in self.sub_labels.values() for label in subs]
        if len(set(leaves) | set(names)) != len(leaves) + len(names):
            raise ValueError(f"task {self.name!r} lists a label twice")
        self.parent_of = {label.name: part for part, subs in self.sub_labels.items() for label in subs}
        self.empty_values = tuple(empty_values)
        self.matchers = {part: LabelMatcher.build([(l.name, l.name) for l in subs]
                                                  + [(a, l.name) for l in subs for a in l.aliases])
                         for part, subs in self.sub_labels.items()}

    @property
    def part_names(self) -> tuple[str, ...]:
        """The top-level labels, in answer order."""
        return tuple(part.name for part in self.parts)

    @property
    def label_names(self) -> tuple[str, ...]:
        """Every sub-label, part by part."""
        return tuple(label.name for subs in self.sub_labels.values() for label in subs)

    def describe(self) -> dict:
        """JSON-ready description including the parts and their sub-labels."""
        info = super().describe()
        info["labels"] = [{"name": part.name, "description": part.description, "aliases": list(part.aliases),
                           "children": [{"name": l.name, "description": l.description, "aliases": list(l.aliases)}
                                        for l in self.sub_labels[part.name]]} for part in self.parts]
        return info

    def response_format(self) -> ResponseFormat:
        """One ``part：sub-labels｜summary`` (or ``part：无``) line per part, then ``\n解释：`` + free text."""
        return ResponseFormat(self.kind, parts=tuple((name, tuple(l.name for l in self.sub_labels[name]))
                                                     for name in self.part_names),
                              explanation_prefix=self.explanation_prefix, empty_value=self.empty_values[0],
                              evidence_prefix=self.evidence_prefix)

    def _headers(self) -> dict[str, tuple[str, ...]]:
        headers = {part.name: (part.name, *part.aliases) for part in self.parts}
        headers["explanation"] = (self.explanation_prefix, *EXPLANATION_HEADERS)
        return {**headers, **self._evidence_header()}

    def _is_empty(self, text: str) -> bool:
        key = fold(text).strip(" .。!")
        return not key or any(key == fold(value) for value in self.empty_values)

    def parse(self, text: str, *, strict: bool = False) -> ParsedResponse:
        """Read each part's sub-labels and summary; invalid when the answer names none of the parts.

        Parts are always read from their own header lines, so ``strict`` changes nothing here.
        """
        headed = self._headed_sections(text)
        if headed is None:
            return ParsedResponse((), "", False, "empty response", {})
        norm, sections, explanation = headed
        found = {s.kind: s for s in sections}
        if not found:
            return ParsedResponse((), explanation, False, f"none of the parts {', '.join(self.part_names)} found", {})
        chosen: set[str] = set()
        summaries = {}
        for part, section in found.items():
            bar = norm.text.find("|", section.start, section.end)
            head_end = bar if bar != -1 else section.end
            label_text = norm.text[section.start:head_end]
            summary_span = (bar + 1, section.end) if bar != -1 else (section.start, section.end)
            summary = " ".join(norm.original(*summary_span).split())
            if bar == -1 and self._is_empty(label_text):
                summaries[part] = ""
                continue
            chosen.update(self.matchers[part].labels_in(label_text))
            summaries[part] = "" if self._is_empty(summary) else summary
        labels = tuple(name for name in self.label_names if name in chosen)
        fields = {part: summaries.get(part, "") for part in self.part_names}
        return ParsedResponse(labels, explanation, True, None, fields, label_line=True)

    def gold_from_output(self, output: str) -> dict:
        """Gold sub-labels and summaries from a C-IMHI output; every part must be present (``无`` for none)."""
        parsed = self.parse(output)
        if not parsed.valid:
            raise ValueError(parsed.problem)
        _, sections, _ = self._headed_sections(output)
        missing = [name for name in self.part_names if name not in {s.kind for s in sections}]
        if missing:
            raise ValueError(f"missing parts {', '.join(missing)} (write '{self.empty_values[0]}' for none)")
        return {"labels": parsed.labels, "summaries": dict(parsed.fields)}

    def gold_from_value(self, value: Any) -> dict:
        """Gold from a ``label`` value: sub-labels (a list or a ``、``-joined string), or an object
        mapping each part to ``{"labels": [...], "summary": "..."}``."""
        if isinstance(value, dict):
            unknown = [k for k in value if k not in self.part_names]
            if unknown:
                raise ValueError(f"unknown part {unknown[0]!r} (parts: {', '.join(self.part_names)})")
            labels, summaries = [], {}
            for part in self.part_names:
                entry = value.get(part) or {}
                if not isinstance(entry, dict):
                    raise ValueError(f"part {part!r}: expected an object with 'labels' and 'summary'")
                labels += [self._sub_label(piece, part) for piece in entry.get("labels") or ()]
                summaries[part] = str(entry.get("summary") or "")
            return {"labels": tuple(n for n in self.label_names if n in labels), "summaries": summaries}
        if isinstance(value, str):
            pieces = [p for p in LABEL_SEPARATORS.split(value) if p.strip()]
        elif isinstance(value, list):
            pieces = value
        else:
            raise ValueError(f"expected sub-labels or an object of parts, got {type(value).__name__}")
        chosen = {self._sub_label(piece) for piece in pieces if not self._is_empty(str(piece))}
        return {"labels": tuple(n for n in self.label_names if n in chosen),
                "summaries": {part: "" for part in self.part_names}}

    def _sub_label(self, piece: Any, part: str | None = None) -> str:
        if not isinstance(piece, str):
            raise ValueError(f"expected label strings, got {type(piece).__name__}")
        for name in ([part] if part else self.part_names):
            label = self.matchers[name].lookup(piece)
            if label is not None:
                return label
        where = f"of part '{part}'" if part else f"of task '{self.name}'"
        raise ValueError(f"'{piece.strip()}' is not a sub-label {where} (allowed: {', '.join(self.label_names)})")

    def compute_metrics(self, golds, responses) -> dict:
        """Hierarchical micro-F1 (level 1, level 2, overall) and summary ROUGE-1/2/L; invalid answers score 0."""
        predicted = [r.labels if r.valid else () for r in responses]
        summaries = [dict(r.fields or {}) if r.valid else {} for r in responses]
        return _metrics.hierarchical_metrics([g["labels"] for g in golds], predicted, self.parent_of,
                                             [g["summaries"] for g in golds], summaries, self.part_names,
                                             [not r.valid for r in responses])
