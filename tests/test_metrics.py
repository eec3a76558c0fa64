"""Metrics equal scikit-learn's own on random predictions; ROUGE-L equals an independent LCS."""

from __future__ import annotations

import random
from functools import lru_cache

import pytest
from sklearn.metrics import accuracy_score, f1_score, precision_recall_fscore_support
from sklearn.preprocessing import MultiLabelBinarizer

from mentalglm.core.metrics import INVALID, rouge_l_chars
from mentalglm.core.task import ParsedResponse


def _responses_single(rng, labels, n):
    out = []
    for _ in range(n):
        if rng.random() < 0.15:
            out.append(ParsedResponse((), "", False, "no label"))
        else:
            out.append(ParsedResponse((rng.choice(labels),), "", True))
    return out


@pytest.mark.parametrize("seed", range(5))
def test_single_label_metrics_equal_sklearn(tasks, seed):
    rng = random.Random(seed)
    task = tasks["suicide-risk"]
    labels = list(task.label_names)
    gold = [(rng.choice(labels),) for _ in range(200)]
    responses = _responses_single(rng, labels, 200)
    metrics = task.compute_metrics(gold, responses)
    y_true = [g[0] for g in gold]
    y_pred = [r.labels[0] if r.valid else "INVALID-SENTINEL" for r in responses]
    assert metrics["accuracy"] == pytest.approx(accuracy_score(y_true, y_pred))
    for average in ("weighted", "macro", "micro"):
        expected = f1_score(y_true, y_pred, labels=labels, average=average, zero_division=0)
        assert metrics[f"{average}_f1"] == pytest.approx(expected)
    p, r, f, s = precision_recall_fscore_support(y_true, y_pred, labels=labels, zero_division=0)
    for i, label in enumerate(labels):
        assert metrics["per_label"][label] == pytest.approx(
            {"precision": p[i], "recall": r[i], "f1": f[i], "support": s[i]})
    assert metrics["f1[高自杀风险]"] == pytest.approx(f[labels.index("高自杀风险")])
    assert metrics["invalid"] == sum(not r.valid for r in responses)
    matrix = metrics["confusion_matrix"]
    assert sum(map(sum, matrix["counts"])) == 200
    assert [row[-1] for row in matrix["counts"]] == [
        sum(1 for g, r in zip(y_true, responses) if g == label and not r.valid) for label in labels]


def test_invalid_counts_as_wrong_never_as_a_label(tasks):
    task = tasks["depression"]
    gold = [("抑郁",), ("非抑郁",)]
    responses = [ParsedResponse((), "", False, "x"), ParsedResponse((), "", False, "x")]
    metrics = task.compute_metrics(gold, responses)
    assert metrics["accuracy"] == 0.0 and metrics["weighted_f1"] == 0.0 and metrics["invalid"] == 2
    assert INVALID not in metrics["per_label"]


@pytest.mark.parametrize("seed", range(5))
def test_multi_label_metrics_equal_sklearn(tasks, seed):
    rng = random.Random(seed)
    task = tasks["cognitive-distortion"]
    labels = list(task.label_names)
    gold = [tuple(rng.sample(labels, rng.randint(1, 3))) for _ in range(150)]
    responses = []
    for _ in range(150):
        if rng.random() < 0.1:
            responses.append(ParsedResponse((), "", False, "none"))
        else:
            responses.append(ParsedResponse(tuple(rng.sample(labels, rng.randint(0, 3))), "", True))
    metrics = task.compute_metrics(gold, responses)
    mlb = MultiLabelBinarizer(classes=labels)
    y_true = mlb.fit_transform(gold)
    y_pred = mlb.transform([r.labels if r.valid else () for r in responses])
    for average in ("micro", "macro", "weighted", "samples"):
        assert metrics[f"{average}_f1"] == pytest.approx(f1_score(y_true, y_pred, average=average, zero_division=0))
    assert metrics["exact_match"] == pytest.approx(accuracy_score(y_true, y_pred))
    assert metrics["invalid"] == sum(not r.valid for r in responses)


@lru_cache(maxsize=None)
def _lcs_reference(a: str, b: str) -> int:
    if not a or not b:
        return 0
    if a[0] == b[0]:
        return 1 + _lcs_reference(a[1:], b[1:])
    return max(_lcs_reference(a[1:], b), _lcs_reference(a, b[1:]))


@pytest.mark.parametrize("seed", range(20))
def test_rouge_l_equals_reference_lcs(seed):
    rng = random.Random(seed)
    alphabet = "我你他不想活死累考试失败，。"
    a = "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 14)))
    b = "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 14)))
    lcs = _lcs_reference(a, b)
    expected = 0.0 if lcs == 0 else 2 * (lcs / len(a)) * (lcs / len(b)) / (lcs / len(a) + lcs / len(b))
    assert rouge_l_chars(a, b) == pytest.approx(expected)


def test_rouge_l_known_values():
    assert rouge_l_chars("考试没考好", "考试没考好") == 1.0
    assert rouge_l_chars("", "") == 1.0
    assert rouge_l_chars("无", "") == 0.0
    assert rouge_l_chars("我很差", "我 很 差") == 1.0  # whitespace ignored
    assert rouge_l_chars("好，", "好,") == 1.0  # full- and half-width folded
    # LCS("期末考试没考好", "考试考砸了") = 考试考 (3): P = 3/7, R = 3/5
    assert rouge_l_chars("期末考试没考好", "考试考砸了") == pytest.approx(2 * (3 / 7) * (3 / 5) / (3 / 7 + 3 / 5))


def test_extraction_metrics_average_fields_and_zero_invalid(tasks):
    task = tasks["cognitive-pathway-abcd"]
    gold = [{"诱发事件": "被骂", "信念": "我没用", "结果": "哭", "反驳": "无"}] * 2
    good = task.parse("诱发事件：被骂\n信念：我没用\n结果：哭\n反驳：无")
    bad = task.parse("抱歉")
    metrics = task.compute_metrics(gold, [good, bad])
    assert metrics["rouge_l"] == pytest.approx(0.5)
    assert metrics["per_field"]["信念"]["rouge_l"] == pytest.approx(0.5)
    assert metrics["invalid"] == 1
