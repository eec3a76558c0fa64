"""Posts in, predictions out: the records that move through an analysis."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from typing import Any, Sequence


@dataclass
class Post:
    """One social-media post to analyse.

    Attributes:
        id: unique within its file; predictions and resumed runs are keyed by it.
        text: the post itself (never logged at default verbosity).
        gold: the gold answer when the file has one (labels tuple, or fields for extraction).
        instruction: the record's own instruction (C-IMHI files), used instead of the task's.
        line: where the post is in its file, for error messages.
        gold_explanation: the explanation of the record's own answer (C-IMHI ``output``, an
            assistant turn), when it has one: what evaluation scores explanations against.
    """

    id: str
    text: str
    gold: Any = None
    instruction: str | None = None
    line: int | None = None
    gold_explanation: str | None = None


@dataclass
class Prediction:
    """A model's answer for one post: labels, explanation, validity and the raw output.

    Attributes:
        id: the post's id.
        task: the task name.
        labels: canonical labels (empty when invalid).
        explanation: the model's explanation of its decision.
        valid: False when no usable answer could be read from ``output``.
        output: the raw model text, kept so a run can be re-scored (replay backend).
        problem: why the answer is invalid, or a note on a valid one.
        fields: extraction tasks: field name → text.
        gold: the gold answer, when known.
        truncated: the post was cut to fit the model's context.
        usage: token counts reported by the backend.
        scores: score mode: each label's log-likelihood.
        redactions: how many phone numbers, e-mails, … were redacted before the backend saw the post.
        label_line: the labels were read from a label line (``标签：…``) rather than from prose.
        probabilities: with a calibration (``--calibration``): label → calibrated probability.
        needs_review: the risk label's calibrated probability is in the review band: ``labels``
            still holds the label the policy gives (visible to the reviewer), flagged rather than
            confident.
        evidence: the spans the answer quotes (evidence part and explanation), each with its
            offsets in the post the backend saw (redacted, possibly truncated) and whether the
            post contains it (see :mod:`~mentalglm.analysis.grounding`); None when it quotes nothing.
        grounding: the share of those spans the post contains, or None without quotes.
        confidence: single-label tasks in score mode, or generate mode with ``confidence``: the
            softmax probability, over the task's labels, of the label given (uncalibrated; see
            ``probabilities`` for calibrated ones); None otherwise.
    """

    id: str
    task: str
    labels: list[str]
    explanation: str
    valid: bool
    output: str
    problem: str | None = None
    fields: dict[str, str] | None = None
    gold: Any = None
    truncated: bool = False
    usage: dict[str, int] = field(default_factory=dict)
    scores: dict[str, float] | None = None
    redactions: dict[str, int] = field(default_factory=dict)
    label_line: bool = False
    probabilities: dict[str, float] | None = None
    needs_review: bool = False
    evidence: list[dict] | None = None
    grounding: float | None = None
    confidence: float | None = None

    def to_dict(self) -> dict:
        """A JSON-ready dict; the post text is deliberately not included.

        Uncalibrated predictions leave out ``probabilities`` and ``needs_review``, and answers
        that quote nothing leave out ``evidence`` and ``grounding``, so their records stay as
        they were before calibration and grounding existed.
        """
        data = asdict(self)
        if self.probabilities is None:
            del data["probabilities"], data["needs_review"]
        if self.evidence is None:
            del data["evidence"], data["grounding"]
        if self.confidence is None:
            del data["confidence"]
        if isinstance(self.gold, tuple):
            data["gold"] = list(self.gold)
        return data

def posts_digest(posts: Sequence[Post]) -> str:
    """SHA-256 of the posts as read (ids, texts, instructions, gold answers), in order."""
    hasher = hashlib.sha256()
    for post in posts:
        gold = list(post.gold) if isinstance(post.gold, tuple) else post.gold
        hasher.update(json.dumps([post.id, post.text, post.instruction, gold], ensure_ascii=False,
                                 sort_keys=True).encode("utf-8"))
        hasher.update(b"\n")
    return hasher.hexdigest()
