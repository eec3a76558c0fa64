"""Label Studio import files from a run, and Label Studio's JSON export read back as reviews.

Export (``mentalglm review export``): one Label Studio task per post, its ``data`` holding the
post (redacted by default: the file leaves the machine), the post id, the model's label,
explanation and probabilities; its ``predictions`` (pre-annotations) holding the model's label
as a ``Choices`` result, its explanation in an editable ``TextArea`` and, when the prediction
rows carry ``evidence``, the quoted spans as ``Labels`` regions on the post. A labelling config
asks the reviewer to confirm or correct the label and to rate the explanation on the IMHI
dimensions (fluency, completeness, reliability, overall) on a scale the user sets.

Import (``mentalglm review import``): every submitted annotation becomes one review record
(post id, reviewer, label, ratings, corrected explanation, evidence spans); cancelled
annotations are skipped and counted, values outside the task's labels are kept aside and
reported, and a malformed export is refused in one line naming the task and field.
"""

from __future__ import annotations

import math
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence
from xml.sax.saxutils import quoteattr

from mentalglm.analysis.calibration import label_probabilities
from mentalglm.core.errors import MentalGLMError

#: The explanation-quality dimensions of the IMHI line of work, with what the reviewer judges.
DIMENSIONS: dict[str, str] = {
    "fluency": "Fluency: is the explanation well-formed, coherent and easy to read?",
    "completeness": "Completeness: does it cover the aspects of the post that the decision rests on?",
    "reliability": "Reliability: is it true to the post (no invented facts) and is its reasoning sound?",
    "overall": "Overall: how good is the explanation as a whole?",
}
#: ``from_name`` of the controls in the labelling config.
LABEL_CONTROL = "label"
EVIDENCE_CONTROL = "evidence"
EXPLANATION_CONTROL = "explanation_corrected"
COMMENT_CONTROL = "comment"
#: The one region label of evidence spans.
EVIDENCE_LABEL = "依据"
#: Written into each task's data so an import knows it reads a mentalglm export.
EXPORT_FORMAT = "mentalglm-review/1"
_RATING_MAX = 10  # Label Studio's Rating draws stars; more than ten is better as a list of choices


@dataclass(frozen=True)
class Scale:
    """The rating scale of the explanation dimensions: whole numbers ``low`` … ``high``."""

    low: int = 1
    high: int = 5

    @classmethod
    def parse(cls, text: str) -> Scale:
        """``"1-5"`` → ``Scale(1, 5)``.

        Raises:
            MentalGLMError: not ``LOW-HIGH`` whole numbers with ``LOW < HIGH`` and at most 11 points.
        """
        low, sep, high = str(text).strip().partition("-")
        try:
            scale = cls(int(low), int(high))
        except ValueError:
            scale = None
        if not sep or scale is None or not scale.low < scale.high or scale.high - scale.low > 10 or scale.low < 0:
            raise MentalGLMError(f"--scale expects LOW-HIGH whole numbers (0 ≤ LOW < HIGH, at most 11 points), "
                                 f"got '{text}'")
        return scale

    def __str__(self) -> str:
        return f"{self.low}-{self.high}"

    @property
    def values(self) -> list[int]:
        """Every point of the scale, in order."""
        return list(range(self.low, self.high + 1))

    @property
    def as_rating(self) -> bool:
        """Whether Label Studio's star ``Rating`` can show it (it counts from 1)."""
        return self.low == 1 and self.high <= _RATING_MAX


# -- the labelling config -------------------------------------------------------------------
def labeling_config(label_names: Sequence[str], *, multiple: bool = False, scale: Scale = Scale()) -> str:
    """The Label Studio labelling config (XML) the exported tasks are made for.

    The reviewer sees the post (evidence spans highlighted), the model's label and explanation,
    confirms or corrects the label (``Choices`` over ``label_names``), may edit the explanation,
    and rates it on each of :data:`DIMENSIONS` (a star ``Rating`` for a 1–N scale, else
    ``Choices`` of the scale's points).

    Args:
        label_names: the task's labels, in order.
        multiple: a multi-label task: the reviewer may tick several labels.
        scale: the rating scale.
    """
    choices = "\n".join(f"    <Choice value={quoteattr(name)}/>" for name in label_names)
    lines = [
        "<View>",
        '  <Header value="$summary" size="5"/>',
        '  <Text name="post" value="$text"/>',
        f'  <Labels name="{EVIDENCE_CONTROL}" toName="post">',
        f'    <Label value="{EVIDENCE_LABEL}" background="#ffd591"/>',
        "  </Labels>",
        '  <Text name="evidence_notes" value="$evidence_notes"/>',
        '  <Header value="Model explanation" size="6"/>',
        '  <Text name="explanation" value="$explanation"/>',
        '  <Header value="Label: confirm the model\'s label or correct it" size="5"/>',
        f'  <Choices name="{LABEL_CONTROL}" toName="post" choice="{"multiple" if multiple else "single"}" '
        'showInline="true" required="true">',
        choices,
        "  </Choices>",
        '  <Header value="Correct the explanation if needed (it starts as the model\'s)" size="6"/>',
        f'  <TextArea name="{EXPLANATION_CONTROL}" toName="post" editable="true" maxSubmissions="1" rows="3"/>',
        f'  <Header value="Rate the model\'s explanation ({scale.low} = worst, {scale.high} = best)" size="5"/>',
    ]
    for name, question in DIMENSIONS.items():
        lines.append(f"  <Header value={quoteattr(question)} size=\"6\"/>")
        if scale.as_rating:
            lines.append(f'  <Rating name="{name}" toName="explanation" maxRating="{scale.high}" required="true"/>')
        else:
            points = "".join(f'<Choice value="{v}"/>' for v in scale.values)
            lines.append(f'  <Choices name="{name}" toName="explanation" choice="single" showInline="true" '
                         f'required="true">{points}</Choices>')
    lines += ['  <Header value="Comment (optional)" size="6"/>',
              f'  <TextArea name="{COMMENT_CONTROL}" toName="post" maxSubmissions="1" rows="2"/>',
              "</View>"]
    return "\n".join(lines) + "\n"


# -- review order ---------------------------------------------------------------------------
def probabilities_of(row: Mapping[str, Any], label_names: Sequence[str]) -> dict[str, float] | None:
    """The prediction's label distribution: calibrated ``probabilities``, else a softmax of score-mode ``scores``.

    Returns None when the row has neither (generate mode without calibration) or they do not
    cover the task's labels.
    """
    for source in ("probabilities", "scores"):
        given = row.get(source)
        if not isinstance(given, dict) or not given:
            continue
        try:
            values = {label: float(given[label]) for label in label_names}
        except (KeyError, TypeError, ValueError):
            return None
        if not all(math.isfinite(v) for v in values.values()):
            return None
        if source == "scores":
            return label_probabilities(values)
        return values if all(v >= 0 for v in values.values()) else None
    return None


def review_priority(probabilities: Mapping[str, float] | None, risk_label: str | None) -> float | None:
    """Risk × uncertainty: ``p(risk label) · H(p) / ln K``, in [0, 1]; None without probabilities.

    ``H(p) = −Σ p_k ln p_k`` is the entropy of the label distribution over its ``K`` labels, so
    ``H / ln K`` is 0 for a certain answer and 1 for a uniform one. Multiplying by the risk
    label's probability puts the uncertain posts that may well be high-risk first; a post the
    model is sure about (either way) and a post unlikely to be at risk come later. Without a
    risk label the priority is the uncertainty alone.
    """
    if not probabilities or len(probabilities) < 2:
        return None
    entropy = -sum(p * math.log(p) for p in probabilities.values() if p > 0)
    uncertainty = min(1.0, max(0.0, entropy / math.log(len(probabilities))))
    risk = probabilities.get(risk_label, 1.0) if risk_label is not None else 1.0
    return risk * uncertainty


# -- evidence -------------------------------------------------------------------------------
def _nfkc(text: str) -> str:
    return unicodedata.normalize("NFKC", text)


def _folded(text: str) -> tuple[str, list[int]]:
    """NFKC of each character on its own, with the index of the original character of every folded one
    (as grounding matches), so a match in the folded text maps back to offsets in ``text``."""
    chars, origin = [], []
    for index, char in enumerate(text):
        folded = _nfkc(char)
        chars.append(folded)
        origin.extend([index] * len(folded))
    return "".join(chars), origin


def place_evidence(evidence: Any, text: str) -> tuple[list[dict], list[str]]:
    """Evidence quotes of a prediction as spans of ``text``, and the quotes that have none.

    A quote keeps its own ``start``/``end`` when they point at it in ``text`` (compared after
    NFKC normalisation, as grounding is); otherwise (the exported text is not the one the model
    saw: ``--no-redact`` of a redacted run, a truncated post) it is looked for in ``text``, first
    occurrence, NFKC on both sides. Quotes found nowhere, and entries that are not quotes, are
    returned apart so they can be shown to the reviewer rather than silently dropped.
    """
    spans: list[dict] = []
    missing: list[str] = []
    if not isinstance(evidence, list):
        return spans, missing
    folded_text, origin = _folded(text)
    for item in evidence:
        quote = item.get("quote") if isinstance(item, dict) else item if isinstance(item, str) else None
        if not isinstance(quote, str) or not quote.strip():
            missing.append(str(quote) if quote is not None else repr(item))
            continue
        start, end = (item.get("start"), item.get("end")) if isinstance(item, dict) else (None, None)
        if not (isinstance(start, int) and isinstance(end, int) and 0 <= start < end <= len(text)
                and _nfkc(text[start:end]) == _nfkc(quote)):
            needle = _folded(quote)[0]
            at = folded_text.find(needle)
            if at < 0:
                missing.append(quote)
                continue
            start, end = origin[at], origin[at + len(needle) - 1] + 1
        spans.append({"start": start, "end": end, "text": text[start:end],
                      "grounded": item.get("grounded") if isinstance(item, dict) else None})
    return spans, missing


# -- export ---------------------------------------------------------------------------------
@dataclass
class ExportSummary:
    """What an export wrote: counts a user checks before sending the file out."""

    tasks: int = 0
    with_probabilities: int = 0
    needs_review: int = 0
    invalid: int = 0
    evidence_spans: int = 0
    evidence_not_found: int = 0
    redacted_items: int = 0
    redacted: bool = True
    risk_label: str | None = None
    scale: str = "1-5"

    def to_dict(self) -> dict:
        """A JSON-ready dict."""
        return dict(self.__dict__)


def _model_summary(labels: Sequence[str], valid: bool, probabilities: Mapping[str, float] | None,
                   needs_review: bool, rank: int, post_id: str) -> str:
    shown = "、".join(labels) if valid and labels else "no readable label"
    parts = [f"#{rank} · post {post_id} · model: {shown}"]
    if probabilities:
        parts.append("p: " + ", ".join(f"{label} {p:.2f}" for label, p in probabilities.items()))
    if needs_review:
        parts.append("in the review band")
    return " · ".join(parts)


def build_tasks(rows: Iterable[Mapping[str, Any]], texts: Mapping[str, str], *, task_name: str,
                label_names: Sequence[str], multiple: bool = False, scale: Scale = Scale(), redact: bool = True,
                risk_label: str | None = None, model_version: str = "mentalglm") -> tuple[list[dict], ExportSummary]:
    """Label Studio tasks for predictions, most urgent first (see :func:`review_priority`).

    Args:
        rows: prediction rows as in ``predictions.jsonl``.
        texts: post id → post text as read from the run's data (redacted here when ``redact``).
        task_name: the task the predictions are of.
        label_names: the task's labels.
        multiple: a multi-label task.
        scale: the rating scale (recorded in each task, so an import can check ratings).
        redact: replace phone numbers, e-mails, URLs, @mentions and ID numbers in the post.
        risk_label: the label whose probability weighs the priority (None: uncertainty alone).
        model_version: shown by Label Studio on the pre-annotation.

    Order: by priority, highest first; posts without probabilities come after those with, and
    among them those in the review band, then unreadable answers, then those given the risk
    label, then the rest, each group in the run's order.

    Raises:
        MentalGLMError: a prediction whose post is not in ``texts``.
    """
    from mentalglm.analysis.redaction import redact as redact_text

    summary = ExportSummary(redacted=redact, risk_label=risk_label, scale=str(scale))
    prepared = []
    for index, row in enumerate(rows):
        post_id = str(row.get("id"))
        if post_id not in texts:
            raise MentalGLMError(f"prediction '{post_id}' has no post in the run's data; give --data with the "
                                 "posts the run was made on")
        text = texts[post_id]
        if redact:
            redacted = redact_text(text)
            text = redacted.text
            summary.redacted_items += redacted.total
        valid = bool(row.get("valid", True))
        labels = [str(label) for label in row.get("labels") or ()] if valid else []
        probabilities = probabilities_of(row, label_names)
        priority = review_priority(probabilities, risk_label)
        needs_review = bool(row.get("needs_review"))
        order = (priority is None, -(priority or 0.0), not needs_review, valid,
                 not (risk_label is not None and risk_label in labels), index)
        prepared.append((order, post_id, row, text, valid, labels, probabilities, priority, needs_review))
    prepared.sort(key=lambda item: item[0])
    tasks = []
    for rank, (_, post_id, row, text, valid, labels, probabilities, priority, needs_review) in enumerate(prepared, 1):
        spans, missing = place_evidence(row.get("evidence"), text)
        explanation = str(row.get("explanation") or "")
        data = {
            "text": text, "post_id": post_id, "task": task_name, "label_set": list(label_names),
            "multiple": multiple, "scale": str(scale), "format": EXPORT_FORMAT,
            "model_label": "、".join(labels), "model_labels": labels, "model_valid": valid,
            "model_problem": row.get("problem"), "explanation": explanation,
            "probabilities": probabilities, "needs_review": needs_review, "priority": priority, "rank": rank,
            "redacted": redact, "truncated": bool(row.get("truncated")),
            "evidence": spans, "evidence_not_found": missing,
            "evidence_notes": ("Quoted as evidence but not found in the post: " + "; ".join(f"“{q}”" for q in missing))
            if missing else "",
            "summary": _model_summary(labels, valid, probabilities, needs_review, rank, post_id),
        }
        result: list[dict] = []
        if labels:
            result.append({"id": "label", "from_name": LABEL_CONTROL, "to_name": "post", "type": "choices",
                           "value": {"choices": labels}})
        if explanation:
            result.append({"id": "explanation", "from_name": EXPLANATION_CONTROL, "to_name": "post",
                           "type": "textarea", "value": {"text": [explanation]}})
        for number, span in enumerate(spans, 1):
            result.append({"id": f"evidence-{number}", "from_name": EVIDENCE_CONTROL, "to_name": "post",
                           "type": "labels", "value": {"start": span["start"], "end": span["end"],
                                                       "text": span["text"], "labels": [EVIDENCE_LABEL]}})
        prediction: dict = {"model_version": model_version, "result": result}
        if probabilities and labels:
            prediction["score"] = round(max(probabilities.get(label, 0.0) for label in labels), 6)
        tasks.append({"data": data, "predictions": [prediction]})
        summary.tasks += 1
        summary.with_probabilities += probabilities is not None
        summary.needs_review += needs_review
        summary.invalid += not valid
        summary.evidence_spans += len(spans)
        summary.evidence_not_found += len(missing)
    return tasks, summary


# -- import ---------------------------------------------------------------------------------
@dataclass
class ImportSummary:
    """What an import read, so that nothing is dropped unseen.

    Attributes:
        tasks: tasks in the export.
        tasks_without_annotations: tasks nobody submitted (kept out of the records, counted here).
        annotations: submitted annotations (one record each).
        cancelled: annotations the reviewer skipped (``was_cancelled``), not made records.
        drafts: unsubmitted drafts, not made records.
        without_label: records whose reviewer chose no label.
        unknown_labels: label values outside the task's labels: ``{task, post_id, reviewer, value}``.
        unrecognised_controls: ``from_name`` → results of controls the config does not have (kept
            in each record's ``other``).
        missing_ratings: dimension → records without that rating.
    """

    tasks: int = 0
    tasks_without_annotations: int = 0
    annotations: int = 0
    cancelled: int = 0
    drafts: int = 0
    without_label: int = 0
    unknown_labels: list[dict] = field(default_factory=list)
    unrecognised_controls: dict[str, int] = field(default_factory=dict)
    missing_ratings: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict:
        """A JSON-ready dict."""
        return {**self.__dict__, "unknown_labels": list(self.unknown_labels),
                "unrecognised_controls": dict(self.unrecognised_controls),
                "missing_ratings": dict(self.missing_ratings)}


def _reviewer(completed_by: Any) -> tuple[str, Any]:
    """The reviewer's name (e-mail where the export has it) and Label Studio user id."""
    if isinstance(completed_by, dict):
        name = completed_by.get("email") or completed_by.get("username") or f"user {completed_by.get('id')}"
        return str(name), completed_by.get("id")
    if isinstance(completed_by, (int, str)) and not isinstance(completed_by, bool):
        return f"user {completed_by}", completed_by
    return "", None


class _Where:
    """Builds the one-line location of a problem in an export: file, task, annotation, field."""

    def __init__(self, path: str | Path):
        self.path, self.task, self.task_id, self.annotation = str(path), None, None, None

    def error(self, field_name: str, message: str) -> MentalGLMError:
        where = [self.path]
        if self.task is not None:
            where.append(f"task {self.task}" + (f" (Label Studio id {self.task_id})" if self.task_id is not None
                                                 else ""))
        if self.annotation is not None:
            where.append(f"annotation {self.annotation}")
        return MentalGLMError(": ".join(where) + f": field '{field_name}': {message}")


def _rating(where: _Where, name: str, item: dict, scale: Scale) -> int:
    value = item.get("value") if isinstance(item.get("value"), dict) else {}
    raw = value.get("rating")
    if raw is None and isinstance(value.get("choices"), list) and len(value["choices"]) == 1:
        raw = value["choices"][0]
    try:
        number = float(raw)
    except (TypeError, ValueError):
        raise where.error(f"result.{name}", f"not a rating: {raw!r}") from None
    if number != int(number) or not scale.low <= number <= scale.high:
        raise where.error(f"result.{name}", f"rating {raw!r} is outside the scale {scale}")
    return int(number)


def _texts(value: Any) -> str:
    if isinstance(value, dict):
        value = value.get("text")
    if isinstance(value, list):
        return "\n".join(str(v) for v in value)
    return "" if value is None else str(value)


def read_export(document: Any, path: str | Path = "export") -> tuple[list[dict], ImportSummary]:
    """Label Studio's JSON export of a mentalglm review project → one review record per submitted annotation.

    A record: ``post_id``, ``task``, ``reviewer`` (e-mail where the export has it, else
    ``user N``), ``reviewer_id``, ``annotation_id``, ``ls_task_id``, ``labels`` (those in the
    task's label set), ``unknown_labels``, ``model_labels``, ``verdict`` (``confirmed``,
    ``corrected`` or ``none``), ``ratings`` (dimension → point or None), ``scale``,
    ``explanation`` (the reviewer's version), ``explanation_edited``, ``evidence`` (the spans
    the reviewer kept or marked: offsets into the exported post, no text), ``comment``,
    ``other`` (results of controls the config does not have), ``lead_time``.

    Raises:
        MentalGLMError: not a JSON export of tasks (a JSON_MIN or CSV export, or another
            project's), or a task or annotation of the wrong shape, naming task and field.
    """
    where = _Where(path)
    if isinstance(document, dict) and "data" in document:
        document = [document]
    if not isinstance(document, list):
        raise MentalGLMError(f"{path}: not a Label Studio JSON export (expected a list of tasks; export the project "
                             "as JSON, not JSON_MIN or CSV)")
    summary = ImportSummary(tasks=len(document), missing_ratings={name: 0 for name in DIMENSIONS})
    records: list[dict] = []
    for number, task in enumerate(document, 1):
        where.task, where.task_id, where.annotation = number, None, None
        if not isinstance(task, dict):
            raise where.error("task", "not a JSON object")
        where.task_id = task.get("id")
        data = task.get("data")
        if not isinstance(data, dict):
            if "annotations" not in task and "post_id" in task:
                raise where.error("data", "missing: this looks like a JSON_MIN export; export the project as JSON")
            raise where.error("data", "missing or not an object")
        if data.get("post_id") in (None, ""):
            raise where.error("data.post_id", "missing: the task was not made by mentalglm review export")
        label_set = data.get("label_set")
        if not isinstance(label_set, list) or not label_set:
            raise where.error("data.label_set", "missing: the task was not made by mentalglm review export")
        try:
            scale = Scale.parse(data.get("scale") or "1-5")
        except MentalGLMError:
            raise where.error("data.scale", f"not a scale: {data.get('scale')!r}") from None
        annotations = task.get("annotations", [])
        if not isinstance(annotations, list):
            raise where.error("annotations", "not a list")
        drafts = task.get("drafts")
        summary.drafts += len(drafts) if isinstance(drafts, list) else 0
        submitted = 0
        for position, annotation in enumerate(annotations, 1):
            where.annotation = position
            if not isinstance(annotation, dict):
                raise where.error("annotations", "not a JSON object")
            if annotation.get("was_cancelled"):
                summary.cancelled += 1
                continue
            record = _record(where, annotation, data, [str(v) for v in label_set], scale, task.get("id"), summary)
            records.append(record)
            submitted += 1
        summary.annotations += submitted
        summary.tasks_without_annotations += not submitted
    return records, summary


def _record(where: _Where, annotation: dict, data: dict, label_set: list[str], scale: Scale, task_id: Any,
            summary: ImportSummary) -> dict:
    reviewer, reviewer_id = _reviewer(annotation.get("completed_by"))
    if not reviewer:
        raise where.error("completed_by", "missing: who made the annotation is not in the export")
    results = annotation.get("result")
    if not isinstance(results, list):
        raise where.error("result", "missing or not a list")
    chosen: list[str] = []
    ratings: dict[str, int | None] = {name: None for name in DIMENSIONS}
    explanation: str | None = None
    comment = ""
    evidence: list[dict] = []
    other: dict[str, list] = {}
    for item in results:
        if not isinstance(item, dict) or not isinstance(item.get("from_name"), str):
            raise where.error("result", "an item without 'from_name'")
        name, value = item["from_name"], item.get("value")
        if name == LABEL_CONTROL:
            values = value.get("choices") if isinstance(value, dict) else None
            if not isinstance(values, list):
                raise where.error(f"result.{name}", "no 'choices' list")
            chosen.extend(str(v) for v in values)
        elif name in DIMENSIONS:
            ratings[name] = _rating(where, name, item, scale)
        elif name == EXPLANATION_CONTROL:
            explanation = _texts(value)
        elif name == COMMENT_CONTROL:
            comment = _texts(value)
        elif name == EVIDENCE_CONTROL and isinstance(value, dict):
            # offsets only: the span's text is the post's, and review records hold no post text
            evidence.append({"start": value.get("start"), "end": value.get("end"), "labels": value.get("labels")})
        else:
            other.setdefault(name, []).append(value)
            summary.unrecognised_controls[name] = summary.unrecognised_controls.get(name, 0) + 1
    known = [label for label in dict.fromkeys(chosen) if label in label_set]
    unknown = [label for label in dict.fromkeys(chosen) if label not in label_set]
    for value in unknown:
        summary.unknown_labels.append({"task": where.task, "post_id": str(data["post_id"]), "reviewer": reviewer,
                                       "value": value})
    if not known:
        summary.without_label += 1
    for name, rating in ratings.items():
        summary.missing_ratings[name] += rating is None
    model_labels = [str(v) for v in data["model_labels"]] if isinstance(data.get("model_labels"), list) else []
    ordered = [label for label in label_set if label in known]  # the task's order, so sets compare as lists
    verdict = "none" if not ordered else "confirmed" if set(ordered) == set(model_labels) else "corrected"
    model_explanation = str(data.get("explanation") or "")
    return {"post_id": str(data["post_id"]), "task": data.get("task"), "reviewer": reviewer,
            "reviewer_id": reviewer_id, "annotation_id": annotation.get("id"), "ls_task_id": task_id,
            "labels": ordered, "unknown_labels": unknown, "model_labels": model_labels, "verdict": verdict,
            "ratings": ratings, "scale": [scale.low, scale.high],
            "explanation": explanation, "explanation_edited": explanation is not None and explanation.strip()
            != model_explanation.strip(), "evidence": evidence, "comment": comment, "other": other,
            "lead_time": annotation.get("lead_time")}
