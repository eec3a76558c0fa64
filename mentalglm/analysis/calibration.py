"""Applying a fitted calibration: calibrated label probabilities and the decision policy for risk labels.

Score mode gives each label's log-likelihood after ``标签：``; a calibration fitted on a labelled
dev run (``mentalglm calibrate``, :mod:`mentalglm.evaluation.calibration`) turns them into
probabilities — ``temperature``: ``softmax(scores / T)``; ``platt``: a logistic function of the
risk label's log-odds; ``isotonic``: a monotone step function stored as its knots and applied by
linear interpolation, so applying needs no scikit-learn.

The decision policy sits on top, for one **risk label** (``高自杀风险``): a threshold on its
calibrated probability chosen on the dev run to reach a target recall, and a review band
``[low, high]``: posts whose probability lies in it get ``needs_review`` — their label stays
visible, flagged, so a reviewer sees what the model would have said.

numpy is imported when a calibration is applied, not when this module is: ``import mentalglm``
stays light.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

from mentalglm.core.errors import MentalGLMError
from mentalglm.core.files import digest, file_sha256, read_json, write_json

if TYPE_CHECKING:
    import numpy as np

METHODS = ("temperature", "platt", "isotonic")
NEEDS_SCORE_MODE = ("calibration is applied in score mode (--mode score), where the policy decides the label; "
                    "a generate-mode run has per-label scores to fit one on only with --confidence")


# -- probabilities ------------------------------------------------------------------------------
def label_probabilities(scores: Mapping[str, float]) -> dict[str, float]:
    """Uncalibrated probabilities: the softmax of each label's log-likelihood (label → probability)."""
    import numpy as np

    labels = list(scores)
    return dict(zip(labels, (float(p) for p in softmax(np.array([scores[label] for label in labels])))))


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax, shifted by the row maximum so large log-likelihoods cannot overflow."""
    import numpy as np

    logits = np.asarray(logits, dtype=float)
    shifted = logits - logits.max(axis=-1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=-1, keepdims=True)



def risk_log_odds(logits: np.ndarray, risk: int) -> np.ndarray:
    """log p(risk) − log p(not risk) under the softmax: for two labels, the difference of their scores."""
    import numpy as np

    log_p = np.log(np.clip(softmax(logits), 1e-300, 1.0))
    return log_p[:, risk] - np.log(np.clip(1.0 - np.exp(log_p[:, risk]), 1e-300, 1.0))



@dataclass
class Policy:
    """The decision policy for one risk label.

    Attributes:
        risk_label: the label the policy is about (``高自杀风险``).
        threshold: predict ``risk_label`` when its calibrated probability is ≥ this; None: most probable label.
        target_recall: the dev-set recall the threshold was chosen for.
        dev_recall: the recall the threshold reached on the dev run.
        dev_precision: the precision it cost there.
        review_band: ``(low, high)``: a probability in ``[low, high]`` (both ends included) means ``needs_review``.
    """

    risk_label: str | None = None
    threshold: float | None = None
    target_recall: float | None = None
    dev_recall: float | None = None
    dev_precision: float | None = None
    review_band: tuple[float, float] | None = None

    def to_dict(self) -> dict:
        """JSON-ready."""
        return {"risk_label": self.risk_label, "threshold": self.threshold, "target_recall": self.target_recall,
                "dev_recall": self.dev_recall, "dev_precision": self.dev_precision,
                "review_band": list(self.review_band) if self.review_band else None}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> "Policy":
        data = dict(data or {})
        band = data.get("review_band")
        return cls(risk_label=data.get("risk_label"), threshold=data.get("threshold"),
                   target_recall=data.get("target_recall"), dev_recall=data.get("dev_recall"),
                   dev_precision=data.get("dev_precision"), review_band=tuple(band) if band else None)


@dataclass
class Calibration:
    """A fitted calibration of one task's score-mode log-likelihoods, with its decision policy.

    Attributes:
        method: ``temperature``, ``platt`` or ``isotonic``.
        parameters: the fitted parameters (``temperature``; ``coef``/``intercept``; ``x``/``y`` knots).
        task: the task name; task_sha256: the digest of its definition (a calibration of another
            task, or of an edited one, is refused).
        labels: the task's labels, in score order.
        risk_label: the label ``platt`` and ``isotonic`` model (the first label by default).
        policy: the decision policy.
        source: where it was fitted (dev run path, sha256 of its predictions) and the metrics before/after.
        sha256: the calibration file's SHA-256 once read or written (what a run record keeps).
    """

    method: str
    parameters: dict
    task: str
    task_sha256: str
    labels: list[str]
    risk_label: str
    policy: Policy = field(default_factory=Policy)
    source: dict = field(default_factory=dict)
    sha256: str | None = None
    #: the dev run's probabilities before/after and gold, for the reliability diagram (never saved).
    dev_data: dict | None = field(default=None, repr=False, compare=False)

    # -- applying
    def probabilities(self, scores: Mapping[str, float]) -> dict[str, float]:
        """Calibrated probability of each label from its log-likelihood (label → probability)."""
        import numpy as np

        logits = np.array([[scores[label] for label in self.labels]], dtype=float)
        return dict(zip(self.labels, (float(p) for p in self.transform(logits)[0])))

    def transform(self, logits: np.ndarray) -> np.ndarray:
        """Calibrated probabilities of a matrix of log-likelihoods (posts × labels, in ``labels`` order)."""
        import numpy as np

        logits = np.asarray(logits, dtype=float)
        if self.method == "temperature":
            return softmax(logits / self.parameters["temperature"])
        risk = self.labels.index(self.risk_label)
        log_odds = risk_log_odds(logits, risk)
        if self.method == "platt":
            p = 1.0 / (1.0 + np.exp(-(self.parameters["coef"] * log_odds + self.parameters["intercept"])))
        else:  # isotonic with out_of_bounds="clip" is exactly this interpolation of its knots
            p = np.interp(softmax(logits)[:, risk], self.parameters["x"], self.parameters["y"])
        out = np.empty_like(logits)
        out[:, risk], out[:, 1 - risk] = p, 1.0 - p
        return out

    def decide(self, probabilities: Mapping[str, float]) -> tuple[str, bool]:
        """The label the policy gives, and whether the post needs review.

        With a threshold, the risk label wins at or above it, otherwise the most probable other
        label; without one, the most probable label.
        """
        policy = self.policy
        if policy.threshold is not None and policy.risk_label is not None:
            if probabilities[policy.risk_label] >= policy.threshold:
                label = policy.risk_label
            else:
                label = max((k for k in self.labels if k != policy.risk_label), key=probabilities.get)
        else:
            label = max(self.labels, key=probabilities.get)
        return label, self.in_review_band(probabilities)

    def in_review_band(self, probabilities: Mapping[str, float]) -> bool:
        """Whether the risk label's probability lies in the review band (ends included)."""
        band, risk = self.policy.review_band, self.policy.risk_label
        return bool(band and risk is not None and band[0] <= probabilities[risk] <= band[1])

    def check_task(self, task) -> None:
        """Refuse a calibration of another task (or of another definition of it), in one line."""
        if task.name != self.task or digest(task.describe()) != self.task_sha256:
            what = f"task '{self.task}'" if task.name != self.task else f"another definition of '{task.name}'"
            raise MentalGLMError(f"the calibration was fitted for {what}, not for this task '{task.name}'; "
                                 f"run mentalglm calibrate on a dev run of this task")

    def settings(self) -> dict:
        """What a run record keeps: it changes predictions, so a rerun with another one is refused."""
        # An in-memory calibration (Python API, never saved) is fingerprinted by its content.
        return {"sha256": self.sha256 or digest(self.to_dict()), "method": self.method,
                "policy": self.policy.to_dict()}

    # -- storing
    def to_dict(self) -> dict:
        """The calibration.json document."""
        return {"method": self.method, "parameters": self.parameters, "task": self.task,
                "task_sha256": self.task_sha256, "labels": self.labels, "risk_label": self.risk_label,
                "policy": self.policy.to_dict(), **self.source}

    def save(self, path: str | Path) -> None:
        """Write calibration.json (and remember its SHA-256)."""
        write_json(path, self.to_dict())
        self.sha256 = file_sha256(Path(path))

    @classmethod
    def load(cls, path: str | Path) -> "Calibration":
        """Read a calibration.json written by :meth:`save`.

        Raises:
            MentalGLMError: the file is missing or not a calibration.
        """
        path = Path(path)
        data = read_json(path, "calibration")
        required = ("method", "parameters", "task", "task_sha256", "labels", "risk_label")
        if not isinstance(data, dict) or any(key not in data for key in required) or data["method"] not in METHODS:
            raise MentalGLMError(f"{path}: not a calibration file (write one with mentalglm calibrate)")
        source = {k: v for k, v in data.items() if k not in (*required, "policy")}
        return cls(method=data["method"], parameters=data["parameters"], task=data["task"],
                   task_sha256=data["task_sha256"], labels=list(data["labels"]), risk_label=data["risk_label"],
                   policy=Policy.from_dict(data.get("policy")), source=source, sha256=file_sha256(path))



def check_band(band: tuple[float, float] | None) -> None:
    """Refuse a review band that is not ``0 ≤ low ≤ high ≤ 1``."""
    if band is not None and not 0 <= band[0] <= band[1] <= 1:
        raise MentalGLMError(f"--review-band LOW:HIGH needs 0 ≤ LOW ≤ HIGH ≤ 1, got {band[0]}:{band[1]}")

