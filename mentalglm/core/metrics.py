"""Task metrics: scikit-learn where it has them; ROUGE from rouge-score (character level) for
pathway summaries, and our own character-level ROUGE-L for extraction fields.

scikit-learn is imported inside the functions so that the CLI starts fast.
Invalid predictions always count as wrong: in single-label scoring they become the
:data:`INVALID` class, which is outside the label set (a miss for the gold label, never a
hit for another label).
"""

from __future__ import annotations

import unicodedata
from typing import Mapping, Sequence

#: Stand-in class for an invalid single-label prediction.
INVALID = "<invalid>"


def _per_label(precision, recall, f1, support, labels) -> dict:
    return {label: {"precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
            for label, p, r, f, s in zip(labels, precision, recall, f1, support)}


def single_label_metrics(gold: Sequence[str], predicted: Sequence[str], labels: Sequence[str],
                         report_label_f1: Sequence[str] = ()) -> dict:
    """Accuracy, weighted/macro/micro F1, per-label scores and the confusion matrix.

    Args:
        gold: one gold label per post.
        predicted: one predicted label per post, :data:`INVALID` for invalid responses.
        labels: the task's label set (fixes the order of tables and the averaging set).
        report_label_f1: labels whose own F1 is also reported as ``f1[label]``.
    """
    from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, precision_recall_fscore_support

    labels = list(labels)
    n = len(gold)
    invalid = sum(p == INVALID for p in predicted)
    result: dict = {"n": n, "invalid": invalid, "invalid_rate": invalid / n if n else 0.0}
    if not n:
        return result
    result["accuracy"] = float(accuracy_score(gold, predicted))
    for average in ("weighted", "macro", "micro"):
        result[f"{average}_f1"] = float(f1_score(gold, predicted, labels=labels, average=average, zero_division=0))
    p, r, f, s = precision_recall_fscore_support(gold, predicted, labels=labels, zero_division=0)
    result["per_label"] = _per_label(p, r, f, s, labels)
    for label in report_label_f1:
        result[f"f1[{label}]"] = result["per_label"][label]["f1"]
    columns = labels + [INVALID]
    matrix = confusion_matrix(gold, predicted, labels=columns)[: len(labels)]
    result["confusion_matrix"] = {"gold": labels, "predicted": columns, "counts": matrix.tolist()}
    return result


def multi_label_metrics(gold: Sequence[Sequence[str]], predicted: Sequence[Sequence[str]],
                        labels: Sequence[str], invalid: Sequence[bool]) -> dict:
    """Micro, macro, weighted and samples F1, exact match, Hamming loss and per-label scores.

    Invalid responses are scored as predicting no label.
    """
    from sklearn.metrics import (
        accuracy_score,
        f1_score,
        hamming_loss,
        multilabel_confusion_matrix,
        precision_recall_fscore_support,
    )
    from sklearn.preprocessing import MultiLabelBinarizer

    labels = list(labels)
    n = len(gold)
    n_invalid = sum(bool(x) for x in invalid)
    result: dict = {"n": n, "invalid": n_invalid, "invalid_rate": n_invalid / n if n else 0.0}
    if not n:
        return result
    binarizer = MultiLabelBinarizer(classes=labels)
    y_true = binarizer.fit_transform([list(g) for g in gold])
    y_pred = binarizer.transform([list(p) for p in predicted])
    for average in ("micro", "macro", "weighted", "samples"):
        result[f"{average}_f1"] = float(f1_score(y_true, y_pred, average=average, zero_division=0))
    result["exact_match"] = float(accuracy_score(y_true, y_pred))
    result["hamming_loss"] = float(hamming_loss(y_true, y_pred))
    p, r, f, s = precision_recall_fscore_support(y_true, y_pred, zero_division=0)
    result["per_label"] = _per_label(p, r, f, s, labels)
    matrices = multilabel_confusion_matrix(y_true, y_pred)
    result["confusion_matrix"] = {label: {"tn": int(m[0, 0]), "fp": int(m[0, 1]), "fn": int(m[1, 0]),
                                          "tp": int(m[1, 1])} for label, m in zip(labels, matrices)}
    return result


def _lcs_length(a: str, b: str) -> int:
    if len(a) < len(b):
        a, b = b, a
    previous = [0] * (len(b) + 1)
    for ch in a:
        current = [0]
        for j, other in enumerate(b, 1):
            current.append(previous[j - 1] + 1 if ch == other else max(previous[j], current[j - 1]))
        previous = current
    return previous[-1]


def rouge_l_chars(prediction: str, reference: str) -> float:
    """Character-level ROUGE-L F1 (β = 1) of two texts, ignoring whitespace.

    Chinese has no spaces between words, so characters are the tokens; both texts are NFKC
    folded so full- and half-width punctuation compare equal. Two empty texts score 1.
    """
    pred = "".join(unicodedata.normalize("NFKC", prediction).split())
    ref = "".join(unicodedata.normalize("NFKC", reference).split())
    if not pred and not ref:
        return 1.0
    if not pred or not ref:
        return 0.0
    lcs = _lcs_length(pred, ref)
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(pred), lcs / len(ref)
    return 2 * precision * recall / (precision + recall)


def extraction_metrics(gold: Sequence[Mapping[str, str]], predicted: Sequence[Mapping[str, str]],
                       fields: Sequence[str], invalid: Sequence[bool]) -> dict:
    """Mean character-level ROUGE-L F1 over posts, per field and over all fields.

    Invalid responses score 0 on every field; a field the model left out scores as empty text.
    """
    n = len(gold)
    n_invalid = sum(bool(x) for x in invalid)
    result: dict = {"n": n, "invalid": n_invalid, "invalid_rate": n_invalid / n if n else 0.0}
    if not n:
        return result
    per_field = {}
    for name in fields:
        scores = [0.0 if bad else rouge_l_chars(pred.get(name, ""), g[name])
                  for g, pred, bad in zip(gold, predicted, invalid)]
        per_field[name] = sum(scores) / n
    result["rouge_l"] = sum(per_field.values()) / len(fields)
    result["per_field"] = {name: {"rouge_l": value} for name, value in per_field.items()}
    return result


class _Characters:
    """rouge-score tokenizer for Chinese: every non-space character is a token (character-level ROUGE)."""

    def tokenize(self, text: str) -> list[str]:
        return [ch for ch in unicodedata.normalize("NFKC", text or "") if not ch.isspace()]


def summary_rouge(predicted: Sequence[str], reference: Sequence[str], invalid: Sequence[bool] = ()) -> dict[str, float]:
    """Mean character-level ROUGE-1/2/L F1 over aligned summaries, computed by rouge-score.

    Two empty summaries agree (1.0); one empty and one not share nothing (0.0); a summary from
    an invalid answer scores 0.
    """
    invalid = list(invalid) or [False] * len(reference)
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], tokenizer=_Characters())
    totals = {"rouge1": 0.0, "rouge2": 0.0, "rougeL": 0.0}
    for pred, ref, bad in zip(predicted, reference, invalid):
        if bad:
            scores = dict.fromkeys(totals, 0.0)
        elif not pred.strip() and not ref.strip():
            scores = dict.fromkeys(totals, 1.0)
        else:
            scores = {name: score.fmeasure for name, score in scorer.score(ref, pred).items()}
        for name in totals:
            totals[name] += scores[name]
    return {name: total / len(reference) if reference else 0.0 for name, total in totals.items()}


def hierarchical_metrics(gold: Sequence[Sequence[str]], predicted: Sequence[Sequence[str]],
                         parent_of: Mapping[str, str], gold_summaries: Sequence[Mapping[str, str]],
                         predicted_summaries: Sequence[Mapping[str, str]], parts: Sequence[str],
                         invalid: Sequence[bool]) -> dict:
    """The cognitive-pathway protocol (Jiang et al. 2024): hierarchical micro-F1 and summary ROUGE.

    Level 2 is the sub-labels; level 1 the parts they imply (a part counts as named when any of
    its sub-labels is); ``hierarchical_f1`` pools the true positives, false positives and false
    negatives of both levels (micro-F1 over the two levels' label columns side by side).
    scikit-learn computes every F1; rouge-score the ROUGE of each part's summary.

    Invalid responses are scored as naming nothing and summarising nothing.
    """
    import numpy as np
    from sklearn.metrics import f1_score, precision_score, recall_score
    from sklearn.preprocessing import MultiLabelBinarizer

    n = len(gold)
    n_invalid = sum(bool(x) for x in invalid)
    result: dict = {"n": n, "invalid": n_invalid, "invalid_rate": n_invalid / n if n else 0.0}
    if not n:
        return result
    leaves = list(parent_of)
    level2 = MultiLabelBinarizer(classes=leaves)
    level1 = MultiLabelBinarizer(classes=list(parts))
    columns = {
        "level2": (level2.fit_transform(gold), level2.fit_transform(predicted)),
        "level1": (level1.fit_transform([{parent_of[l] for l in g} for g in gold]),
                   level1.fit_transform([{parent_of[l] for l in p} for p in predicted])),
    }
    columns["overall"] = tuple(np.hstack([columns["level1"][i], columns["level2"][i]]) for i in (0, 1))
    names = {"level1": "level1_micro_f1", "level2": "level2_micro_f1", "overall": "hierarchical_f1"}
    for level, (truth, guess) in columns.items():
        result[names[level]] = float(f1_score(truth, guess, average="micro", zero_division=0))
        result[f"{level}_precision"] = float(precision_score(truth, guess, average="micro", zero_division=0))
        result[f"{level}_recall"] = float(recall_score(truth, guess, average="micro", zero_division=0))
    per_part = {}
    for part in parts:
        per_part[part] = summary_rouge([s.get(part, "") for s in predicted_summaries],
                                       [s.get(part, "") for s in gold_summaries], invalid)
    for name in ("rouge1", "rouge2", "rougeL"):
        result[name] = sum(scores[name] for scores in per_part.values()) / len(parts)
    result["per_part"] = per_part
    return result
