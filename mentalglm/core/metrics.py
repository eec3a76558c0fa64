"""Task metrics: scikit-learn where it has them, character-level ROUGE-L for extraction.

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
