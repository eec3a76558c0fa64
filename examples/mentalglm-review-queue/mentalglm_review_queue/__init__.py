"""A third-party mentalglm plugin with Python in it: a task with its own parsing, and a review queue.

- ``risk-level``: suicide risk on a four-level scale (无 / 低 / 中 / 高). Models often answer with
  the level's number (``风险等级：3``) instead of its name, so the task reads digits too — the
  kind of logic a YAML task file cannot hold.
- ``on_prediction``: every post whose label is high-risk (``高自杀风险`` of the built-in task,
  ``高`` or ``中`` here), whose calibrated probability fell in the review band (``needs_review``), or
  that could not be read is appended to a review-queue JSONL file for a human to look at. The
  queue lives where ``MENTALGLM_REVIEW_QUEUE`` says (default ``review-queue.jsonl``); it holds
  ids, labels and the reason, never the post text.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import mentalglm
from mentalglm import Label, SingleLabelTask

#: Labels that send a post to review, by task.
RISKY = {"suicide-risk": {"高自杀风险"}, "risk-level": {"高", "中"}}
_DIGIT = re.compile(r"(?:风险等级|等级|level)\s*[:：]?\s*([0-3])\b", re.IGNORECASE)


class RiskLevelTask(SingleLabelTask):
    """Four-level suicide risk; reads ``风险等级：N`` (0–3) as well as the level names."""

    def __init__(self):
        super().__init__(
            name="risk-level",
            instruction=("判断帖子发布者的自杀风险等级（无、低、中、高），按以下格式回答：\n"
                         "标签：无 或 低 或 中 或 高\n解释：说明判断依据。"),
            description="suicide risk on four levels (example plugin)",
            labels=[Label("无", ("无风险", "none")), Label("低", ("低风险", "low")),
                    Label("中", ("中风险", "medium")), Label("高", ("高风险", "high"))],
            report_label_f1=["高"], source=__name__)

    def parse(self, text: str, *, strict: bool = False):
        """The base parser first; then a ``风险等级：N`` answer read as the N-th level."""
        parsed = super().parse(text, strict=strict)
        match = None if parsed.valid or strict else _DIGIT.search(text or "")
        if match is None:
            return parsed
        level = self.label_names[int(match.group(1))]
        return type(parsed)((level,), parsed.explanation, True, f"read from risk level {match.group(1)}")


@mentalglm.hookimpl
def register_tasks(register):
    """Register the risk-level task (a Task object, since its parsing is code)."""
    register(RiskLevelTask())


def queue_path() -> Path:
    """Where the review queue is written (``MENTALGLM_REVIEW_QUEUE``, default ``review-queue.jsonl``)."""
    return Path(os.environ.get("MENTALGLM_REVIEW_QUEUE", "review-queue.jsonl"))


def _queued(path: Path) -> set[str]:
    if not path.exists():
        return set()
    return {json.loads(line)["id"] for line in path.read_text(encoding="utf-8").splitlines() if line.strip()}


def _reason(prediction, task) -> str | None:
    """Why a prediction goes to review, or None.

    A post in the calibrated review band (``needs_review``, runs with ``--calibration``) comes
    first: its label is only the model's uncertain guess, and the reviewer should see how unsure
    it was. ``getattr`` keeps the plugin working with mentalglm versions before calibration.
    """
    if getattr(prediction, "needs_review", False):
        probabilities = getattr(prediction, "probabilities", None) or {}
        risky = [probabilities[label] for label in RISKY.get(task.name, ()) if label in probabilities]
        p = max(risky or probabilities.values() or [float("nan")])
        return f"needs review: p={p:.2f}"
    risky = set(prediction.labels) & RISKY.get(task.name, set())
    if risky:
        return f"high risk: {'、'.join(sorted(risky))}"
    return None if prediction.valid else f"unreadable: {prediction.problem}"


@mentalglm.hookimpl
def on_prediction(prediction, task):
    """Queue a risky, uncertain (``needs_review``) or unreadable prediction, once per id (reruns add none)."""
    reason = _reason(prediction, task)
    if reason is None:
        return
    path = queue_path()
    if prediction.id in _queued(path):
        return
    entry = {"id": prediction.id, "task": task.name, "labels": prediction.labels, "reason": reason}
    with open(path, "a", encoding="utf-8") as queue:
        queue.write(json.dumps(entry, ensure_ascii=False) + "\n")
