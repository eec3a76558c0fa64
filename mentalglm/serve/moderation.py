"""``POST /v1/moderations`` in OpenAI's shape, from the suicide-risk task's calibrated answer.

The mapping (documented in docs/serve.md):

=========================  =======================================================================
category                   from
=========================  =======================================================================
``self-harm``              suicide-risk: the calibrated probability of ``高自杀风险``
``self-harm/intent``       the same (the task judges the poster's own risk, i.e. intent)
everything else            not assessed: ``false`` / ``0.0``, listed under ``mentalglm.not_assessed``
=========================  =======================================================================

``flagged`` is the calibration's decision at its operating point (the threshold chosen for the
target recall on a dev run); ``mentalglm`` carries what OpenAI's shape has no room for: the labels,
explanation, evidence, the review decision (``pass | review | block``) and the digests of the
model and calibration that made it.
"""

from __future__ import annotations

import uuid

#: OpenAI's 13 moderation categories, in its order.
CATEGORIES = ("harassment", "harassment/threatening", "hate", "hate/threatening", "illicit", "illicit/violent",
              "self-harm", "self-harm/intent", "self-harm/instructions", "sexual", "sexual/minors", "violence",
              "violence/graphic")
#: The categories the suicide-risk task assesses, and the label whose probability scores them.
ASSESSED = ("self-harm", "self-harm/intent")
RISK_TASK, RISK_LABEL = "suicide-risk", "高自杀风险"


def decision(prediction) -> str | None:
    """``review`` (in the review band), ``block`` (the risk label) or ``pass``; None without a calibrated policy."""
    if prediction.probabilities is None:
        return None
    if prediction.needs_review:
        return "review"
    return "block" if RISK_LABEL in prediction.labels else "pass"


def moderation_result(prediction, probability: float, flagged: bool, digests: dict) -> dict:
    """One entry of ``results``: the 13 categories, their scores and input types, and the vendor key."""
    categories = {name: (flagged if name in ASSESSED else False) for name in CATEGORIES}
    scores = {name: (probability if name in ASSESSED else 0.0) for name in CATEGORIES}
    applied = {name: (["text"] if name in ASSESSED else []) for name in CATEGORIES}
    return {"flagged": flagged, "categories": categories, "category_scores": scores,
            "category_applied_input_types": applied,
            "mentalglm": {"task": RISK_TASK, "labels": prediction.labels, "explanation": prediction.explanation,
                          "evidence": prediction.evidence or [], "valid": prediction.valid,
                          "decision": decision(prediction) or ("block" if flagged else "pass"),
                          "needs_review": prediction.needs_review, "probabilities": prediction.probabilities,
                          "not_assessed": [name for name in CATEGORIES if name not in ASSESSED], **digests}}


def moderation_response(model: str, results: list[dict]) -> dict:
    """The whole answer: ``{id, model, results}`` with results in input order."""
    return {"id": f"modr-{uuid.uuid4().hex}", "model": model, "results": results}
