"""The ``baseline`` backend: a trained character n-gram logistic regression answers in the task's format.

It reads the post itself, not a prompt (``reads_posts``): no instruction, no template. Its answer is
the label line, then an explanation that names the n-grams of the post that weighed most for the
label, quoted (so grounding finds each in the post: evidence with offsets, grounded by
construction); a task with an evidence part gets them there too. ``score_labels`` gives each
label's log-probability, so ``--mode score``, ``--confidence`` and ``calibrate`` work as with a
language model.
"""

from __future__ import annotations

import math
from typing import Iterable, Sequence

from pydantic import Field

from mentalglm.backends.baseline_model import BaselineModel
from mentalglm.core.backend import Backend, BackendOptions, Completion, GenerationRequest
from mentalglm.core.errors import MentalGLMError


class BaselineOptions(BackendOptions):
    """Options of the baseline backend."""

    evidence_ngrams: int = Field(3, ge=1, le=10, description="n-grams quoted as the evidence of each label")


class BaselineBackend(Backend):
    """The supervised floor: ``mentalglm train --backend baseline`` writes the model folder it loads.

    Raises:
        MentalGLMError: the folder holds no baseline model, or (at :meth:`preflight` / :meth:`generate`)
            the run's task has other labels than the model was trained for.
    """

    name = "baseline"
    description = ("Supervised floor: character n-gram TF-IDF + logistic regression "
                   "(mentalglm train --backend baseline); explains with the n-grams that weighed most")
    Options = BaselineOptions
    capabilities = frozenset({"generate", "score_labels"})
    reads_posts = True

    def __init__(self, model: str | None = None, options=None):
        super().__init__(model, options)
        self.baseline = BaselineModel.load(model)

    def preflight(self, post_ids: Iterable[str], response_format=None) -> None:
        """Refuse a run whose task's labels are not the model's."""
        if response_format is not None:
            self._check(response_format)

    def _check(self, response_format) -> None:
        if response_format.kind != self.baseline.kind or tuple(response_format.labels) != self.baseline.labels:
            raise MentalGLMError(f"{self.model}: the baseline was trained for task '{self.baseline.task}' "
                                 f"({self.baseline.kind}: {', '.join(self.baseline.labels)}); this run's task is "
                                 f"{response_format.kind} with labels {', '.join(response_format.labels) or '(none)'}")

    def generate(self, requests: Sequence[GenerationRequest]) -> list[Completion]:
        """The answer for each post (``prompt`` is the post): labels, evidence and explanation in the task's format.

        A request with ``answer_labels`` (score mode chose them) gets only what follows the
        explanation lead: the evidence and explanation of those labels.
        """
        if not requests:
            return []
        for fmt in {r.response_format for r in requests if r.response_format is not None}:
            self._check(fmt)
        predicted = self.baseline.predict([r.prompt for r in requests])
        completions = []
        for request, labels in zip(requests, predicted):
            fmt = request.response_format
            if fmt is None:
                raise MentalGLMError("baseline backend: a request without the task's answer format")
            labels = list(request.answer_labels) if request.answer_labels is not None else labels
            quotes = {label: self.baseline.evidence(request.prompt, label, self.options.evidence_ngrams)
                      for label in labels}
            evidence = list(dict.fromkeys(q for label in labels for q in quotes[label]))
            text = fmt.render(labels, self._explanation(labels, quotes), evidence)
            if request.answer_labels is not None:
                lead = fmt.explanation_lead(labels)
                text = text[len(lead):] if text.startswith(lead) else text
            completions.append(Completion(request.id, text, finish_reason="stop"))
        return completions

    @staticmethod
    def _explanation(labels: Sequence[str], quotes: dict[str, list[str]]) -> str:
        if not labels:
            return "字符 n-gram 逻辑回归基线：没有标签的概率达到 0.5。"
        parts = []
        for label in labels:
            grams = "".join(f"「{q}」" for q in quotes[label])
            parts.append(f"判为{label}，权重最高的片段是{grams}" if grams else f"判为{label}，帖子中没有权重为正的片段")
        return "字符 n-gram 逻辑回归基线：" + "；".join(parts) + "。"

    def score_labels(self, prompt: str, candidates: Sequence[str]) -> list[float]:
        """Each candidate label's log-probability for the post ``prompt``."""
        return self.score_labels_batch([prompt], candidates)[0]

    def score_labels_batch(self, prompts: Sequence[str], candidates: Sequence[str]) -> list[list[float]]:
        """Log-probabilities of the candidate labels, one row per post."""
        unknown = [c for c in candidates if c not in self.baseline.labels]
        if unknown:
            raise MentalGLMError(f"{self.model}: the baseline has no label {unknown[0]!r} "
                                 f"(it has: {', '.join(self.baseline.labels)})")
        columns = [self.baseline.labels.index(c) for c in candidates]
        return [[math.log(max(float(row[i]), 1e-300)) for i in columns]
                for row in self.baseline.probabilities(list(prompts))]
