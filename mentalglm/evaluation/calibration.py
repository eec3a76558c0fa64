"""Fitting a calibration (``mentalglm calibrate``) and measuring it: what turns a dev run into calibration.json.

Score mode gives each label's log-likelihood after ``标签：``. A softmax over the task's labels
turns them into probabilities, but a fine-tuned model's log-likelihoods are typically
over-confident, so the probabilities are fitted to a labelled dev run first (``mentalglm
calibrate RUN_DIR``):

- ``temperature`` (default, any number of labels): ``softmax(scores / T)``, T minimising the
  dev run's negative log-likelihood. One parameter, never changes which label is most likely.
- ``platt`` (two labels): logistic regression on the risk label's log-odds.
- ``isotonic`` (two labels): a monotone step function of the risk label's probability; stored as
  its knots and applied by linear interpolation, so applying needs no scikit-learn.

The decision policy sits on top, for one **risk label** (``高自杀风险``): a threshold on its
calibrated probability chosen on the dev run to reach a target recall (a missed high-risk post
costs more than a false alarm, so recall is what is fixed and precision what is paid), and a
review band ``[low, high]``: posts whose probability lies in it get ``needs_review`` — their label
stays visible, flagged, so a reviewer sees what the model would have said.

A calibration is applied in score mode, where its policy decides the label. It can be fitted on
a score-mode run or on a generate-mode run made with ``--confidence`` (the same teacher-forced
label log-likelihoods, scored after the answer was generated).

The fitted :class:`~mentalglm.analysis.calibration.Calibration` is applied by the analysis side.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from mentalglm.analysis.calibration import (
    METHODS,
    NEEDS_SCORE_MODE,
    Calibration,
    Policy,
    check_band,
    risk_log_odds,
    softmax,
)
from mentalglm.core.errors import MentalGLMError
from mentalglm.core.files import digest, file_sha256, read_json

DEFAULT_BINS = 15
#: log T is searched in [log 0.01, log 100]: outside it a model is degenerate (all ties or all certainty).
LOG_T_BOUNDS = (math.log(0.01), math.log(100.0))


# -- the quality of probabilities -----------------------------------------------------------------
def nll(logits: np.ndarray, gold: np.ndarray, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of the gold labels under ``softmax(logits / temperature)``."""
    z = np.asarray(logits, dtype=float) / temperature
    z = z - z.max(axis=1, keepdims=True)
    log_norm = np.log(np.exp(z).sum(axis=1))
    return float(np.mean(log_norm - z[np.arange(len(gold)), gold]))


def golden_section(f, low: float, high: float, tol: float = 1e-8, max_iter: int = 200) -> float:
    """The minimiser of a unimodal ``f`` on ``[low, high]`` by golden-section search.

    Our own because scipy is only a test dependency; the NLL of temperature scaling is convex in
    1/T and unimodal in log T, which is all golden-section search needs.
    """
    ratio = (math.sqrt(5) - 1) / 2
    a, b = low, high
    c, d = b - ratio * (b - a), a + ratio * (b - a)
    fc, fd = f(c), f(d)
    for _ in range(max_iter):
        if b - a < tol:
            break
        if fc < fd:
            b, d, fd = d, c, fc
            c = b - ratio * (b - a)
            fc = f(c)
        else:
            a, c, fc = c, d, fd
            d = a + ratio * (b - a)
            fd = f(d)
    return (a + b) / 2


def fit_temperature(logits: np.ndarray, gold: np.ndarray) -> float:
    """The temperature T minimising the NLL of ``softmax(logits / T)`` on the gold labels."""
    log_t = golden_section(lambda u: nll(logits, gold, math.exp(u)), *LOG_T_BOUNDS)
    return math.exp(log_t)


def expected_calibration_error(probabilities: np.ndarray, gold: np.ndarray, bins: int = DEFAULT_BINS) -> float:
    """Top-label ECE: Σ_bins (n_bin / n) · |accuracy − mean confidence|, equal-width bins on [0, 1].

    A confidence of exactly 1.0 goes into the last bin (bins are ``(lo, hi]``, the first ``[0, hi]``).
    """
    probabilities = np.asarray(probabilities, dtype=float)
    confidence = probabilities.max(axis=1)
    correct = probabilities.argmax(axis=1) == np.asarray(gold)
    index = np.clip(np.ceil(confidence * bins).astype(int) - 1, 0, bins - 1)
    total = 0.0
    for b in range(bins):
        in_bin = index == b
        if in_bin.any():
            total += in_bin.sum() / len(confidence) * abs(correct[in_bin].mean() - confidence[in_bin].mean())
    return float(total)


def brier_score(probabilities: np.ndarray, gold: np.ndarray) -> float:
    """Mean squared error between the probabilities and the one-hot gold, over all posts and labels.

    With two labels both columns carry the same error, so this equals scikit-learn's
    ``brier_score_loss`` on either label.
    """
    probabilities = np.asarray(probabilities, dtype=float)
    onehot = np.eye(probabilities.shape[1])[np.asarray(gold)]
    return float(np.mean((probabilities - onehot) ** 2))


def quality(probabilities: np.ndarray, gold: np.ndarray, bins: int = DEFAULT_BINS) -> dict:
    """ECE, Brier score and NLL of calibrated probabilities against gold label indices."""
    clipped = np.clip(np.asarray(probabilities, dtype=float)[np.arange(len(gold)), gold], 1e-12, 1.0)
    return {"ece": expected_calibration_error(probabilities, gold, bins), "brier": brier_score(probabilities, gold),
            "nll": float(-np.mean(np.log(clipped))), "bins": bins, "n": int(len(gold))}


# -- the calibration and its policy ---------------------------------------------------------------


# -- fitting ------------------------------------------------------------------------------------
def fit(method: str, logits: np.ndarray, gold: np.ndarray, labels: Sequence[str], risk_label: str) -> dict:
    """Fit the parameters of ``method`` on dev log-likelihoods and gold label indices."""
    if method not in METHODS:
        raise MentalGLMError(f"unknown calibration method '{method}'; use {', '.join(METHODS)}")
    if method == "temperature":
        return {"temperature": fit_temperature(logits, gold)}
    if len(labels) != 2:
        raise MentalGLMError(f"--method {method} needs a two-label task; use temperature for {len(labels)} labels")
    risk = list(labels).index(risk_label)
    y = (np.asarray(gold) == risk).astype(int)
    if y.min() == y.max():
        raise MentalGLMError(f"--method {method} needs dev posts of both labels")
    if method == "platt":
        from sklearn.linear_model import LogisticRegression

        # A large C: Platt scaling is a plain maximum-likelihood fit, not a regularised one.
        model = LogisticRegression(C=1e6, max_iter=1000).fit(risk_log_odds(logits, risk).reshape(-1, 1), y)
        return {"coef": float(model.coef_[0, 0]), "intercept": float(model.intercept_[0])}
    from sklearn.isotonic import IsotonicRegression

    model = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip").fit(softmax(logits)[:, risk], y)
    return {"x": [float(v) for v in model.X_thresholds_], "y": [float(v) for v in model.y_thresholds_]}


def recall_threshold(risk_probabilities: np.ndarray, is_risk: np.ndarray, target: float) -> dict:
    """The threshold on the risk label's probability that reaches ``target`` recall on the dev posts.

    Of all thresholds that reach the target, the highest: recall only falls as the threshold
    rises, so the highest one that still reaches it raises the fewest false alarms (the lowest,
    0, would flag every post). Returns the threshold with the recall and precision it gives.

    Raises:
        MentalGLMError: a target outside (0, 1], or no dev post of the risk label.
    """
    if not 0 < target <= 1:
        raise MentalGLMError(f"--target-recall must be in (0, 1], got {target}")
    p, positive = np.asarray(risk_probabilities, dtype=float), np.asarray(is_risk, dtype=bool)
    if not positive.any():
        raise MentalGLMError("--target-recall needs dev posts of the risk label; the dev run has none")
    ranked = np.sort(p[positive])[::-1]
    # Recall ≥ target needs ceil(target · n_pos) risk posts at or above the threshold; a tiny slack
    # keeps 0.95 · 20 = 19.000000000000004 from asking for 20.
    needed = max(1, math.ceil(target * len(ranked) - 1e-9))
    threshold = float(ranked[needed - 1])
    flagged = p >= threshold
    return {"threshold": threshold, "recall": float((flagged & positive).sum() / positive.sum()),
            "precision": float((flagged & positive).sum() / flagged.sum())}


def read_run(run_dir: str | Path, labels: Sequence[str]) -> tuple[np.ndarray, np.ndarray, dict]:
    """A score-mode evaluation folder's log-likelihoods (posts × labels), gold indices and run record.

    Raises:
        MentalGLMError: no predictions, a run without scores (generate mode), or posts without gold.
    """
    import json

    folder = Path(run_dir)
    predictions_path, record_path = folder / "predictions.jsonl", folder / "run.json"
    if not predictions_path.is_file():
        raise MentalGLMError(f"{folder}: no predictions.jsonl; give an evaluate --output-dir made with --mode score")
    record = read_json(record_path, "run record") if record_path.is_file() else {}
    rows, golds = [], []
    with open(predictions_path, encoding="utf-8") as lines:
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            prediction = json.loads(line)
            if not prediction.get("scores"):
                raise MentalGLMError(f"{predictions_path}:{number}: no scores; {NEEDS_SCORE_MODE}")
            gold = prediction.get("gold")
            gold = gold[0] if isinstance(gold, list) and len(gold) == 1 else gold
            if gold not in labels:
                raise MentalGLMError(f"{predictions_path}:{number}: gold {gold!r} is not one of {', '.join(labels)}")
            rows.append([prediction["scores"][label] for label in labels])
            golds.append(list(labels).index(gold))
    if not rows:
        raise MentalGLMError(f"{predictions_path}: no predictions to calibrate on")
    return np.array(rows, dtype=float), np.array(golds), record


def calibrate(run_dir: str | Path, task, *, method: str = "temperature", target_recall: tuple[str, float] | None = None,
              review_band: tuple[float, float] | None = None, risk_label: str | None = None,
              bins: int = DEFAULT_BINS) -> Calibration:
    """Fit a calibration (and its policy) on a labelled score-mode dev run of ``task``.

    Args:
        run_dir: an ``evaluate --mode score`` output folder.
        task: the task the run was made with (its definition must match the run record's digest).
        method: ``temperature``, ``platt`` or ``isotonic``.
        target_recall: ``(risk label, recall)``: choose the threshold on the dev run.
        review_band: ``(low, high)`` probabilities of the risk label that send a post to review.
        risk_label: the label platt/isotonic and the review band are about (default: the target-recall
            label, then the task's first reported label, then its first label).
        bins: equal-width bins of the expected calibration error.

    Raises:
        MentalGLMError: a run of another task, a run without scores, an unknown label, a bad band.
    """
    if bins < 1:
        raise MentalGLMError(f"--bins must be at least 1, got {bins}")
    labels = list(task.label_names)
    logits, gold, record = read_run(run_dir, labels)
    task_sha256 = digest(task.describe())
    if record.get("task") not in (None, task.name) or record.get("task_sha256") not in (None, task_sha256):
        raise MentalGLMError(f"{run_dir} is a run of task '{record.get('task')}' (or of another definition of it), "
                             f"not of '{task.name}'")
    if target_recall is not None:
        risk_label = risk_label or target_recall[0]
        if target_recall[0] != risk_label:
            raise MentalGLMError("--target-recall and the risk label name different labels")
    risk_label = risk_label or (task.report_label_f1[0] if getattr(task, "report_label_f1", ()) else labels[0])
    if risk_label not in labels:
        raise MentalGLMError(f"unknown label '{risk_label}' for task '{task.name}'; its labels: {'、'.join(labels)}")
    check_band(review_band)
    parameters = fit(method, logits, gold, labels, risk_label)
    calibration = Calibration(method=method, parameters=parameters, task=task.name, task_sha256=task_sha256,
                              labels=labels, risk_label=risk_label)
    calibrated = calibration.transform(logits)
    policy = Policy(risk_label=risk_label, review_band=review_band)
    if target_recall is not None:
        chosen = recall_threshold(calibrated[:, labels.index(risk_label)], gold == labels.index(risk_label),
                                  target_recall[1])
        policy.threshold, policy.target_recall = chosen["threshold"], target_recall[1]
        policy.dev_recall, policy.dev_precision = chosen["recall"], chosen["precision"]
    calibration.policy = policy
    predictions = Path(run_dir) / "predictions.jsonl"
    calibration.source = {"dev_run": str(run_dir), "dev_predictions_sha256": file_sha256(predictions),
                          "dev_posts": int(len(gold)),
                          "metrics": {"before": quality(softmax(logits), gold, bins),
                                      "after": quality(calibrated, gold, bins)}}
    calibration.dev_data = {"before": softmax(logits), "after": calibrated, "gold": gold, "bins": bins}
    return calibration



def reliability_diagram(calibration: Calibration, path: str | Path) -> str | None:
    """Draw the dev run's reliability diagram before/after to ``path``; a note instead when matplotlib is missing."""
    data = calibration.dev_data
    if data is None:
        return "no dev data to draw"
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed (it comes with the torch extra); reliability diagram skipped"
    bins = data["bins"]
    edges = np.linspace(0, 1, bins + 1)
    figure, axis = plt.subplots(figsize=(5, 5))
    axis.plot([0, 1], [0, 1], color="grey", linestyle="--", label="perfect")
    for name in ("before", "after"):
        probabilities = data[name]
        confidence = probabilities.max(axis=1)
        correct = probabilities.argmax(axis=1) == data["gold"]
        index = np.clip(np.ceil(confidence * bins).astype(int) - 1, 0, bins - 1)
        xs = [confidence[index == b].mean() for b in range(bins) if (index == b).any()]
        ys = [correct[index == b].mean() for b in range(bins) if (index == b).any()]
        ece = calibration.source["metrics"][name]["ece"]
        axis.plot(xs, ys, marker="o", label=f"{name} (ECE {ece:.3f})")
    axis.set(xlim=(0, 1), ylim=(0, 1), xlabel="confidence (top label)", ylabel="accuracy",
             title=f"{calibration.task}: {calibration.method}", xticks=edges[::3])
    axis.legend(loc="upper left")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return None


def policy_metrics(calibration: Calibration, predictions: Sequence[Mapping[str, Any]],
                   bins: int = DEFAULT_BINS) -> dict:
    """metrics.json's ``policy`` section from saved predictions (with ``probabilities``, ``needs_review``, gold).

    Coverage is the share of posts decided without review; recall and precision of the risk label
    are over the decided posts. ``risk_recall_with_review`` counts a risk post sent to review as
    caught, since a person then looks at it.
    """
    risk = calibration.policy.risk_label
    golds = [g[0] if isinstance(g, list) and len(g) == 1 else g for g in (p.get("gold") for p in predictions)]
    review = [bool(p.get("needs_review")) for p in predictions]
    said_risk = [risk in (p.get("labels") or []) for p in predictions]
    is_risk = [g == risk for g in golds]
    decided = [not r for r in review]

    def ratio(a: int, b: int) -> float | None:
        return a / b if b else None

    tp = sum(d and s and g for d, s, g in zip(decided, said_risk, is_risk))
    document = {
        "policy": {**calibration.policy.to_dict(), "method": calibration.method,
                   "calibration_sha256": calibration.settings()["sha256"],
                   "why": "a missed high-risk post is worse than a false alarm: recall of the risk label is fixed "
                          "on the dev run, precision is what it costs; posts in the review band go to a person"},
        "posts": len(predictions), "decided": sum(decided), "needs_review": sum(review),
        "coverage": ratio(sum(decided), len(predictions)),
        "risk_recall": ratio(tp, sum(d and g for d, g in zip(decided, is_risk))),
        "risk_precision": ratio(tp, sum(d and s for d, s in zip(decided, said_risk))),
        "risk_recall_with_review": ratio(sum(g and (s or r) for g, s, r in zip(is_risk, said_risk, review)),
                                         sum(is_risk)),
    }
    if all(p.get("probabilities") for p in predictions) and all(g in calibration.labels for g in golds) and golds:
        matrix = np.array([[p["probabilities"][label] for label in calibration.labels] for p in predictions])
        document["calibration"] = quality(matrix, np.array([calibration.labels.index(g) for g in golds]), bins)
    return document
