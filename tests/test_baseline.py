"""The supervised floor: its saved model answers as scikit-learn's own fitted pipeline does, without pickles."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import run_cli
from mentalglm import Analyzer, MentalGLMError
from mentalglm.backends.baseline_model import BaselineModel, fit_baseline
from mentalglm.data.readers import read_posts
from mentalglm.training.baseline import train_baseline


def _split(task, name):
    """The sample's posts, split by position (every fourth post held out): no test post is seen in training."""
    posts = read_posts(f"sample:{name}", task)
    return [p for i, p in enumerate(posts) if i % 4], [p for i, p in enumerate(posts) if not i % 4]


def _sklearn_pipeline(model: BaselineModel, texts, answers, labels):
    """scikit-learn's own pipeline with the hyper-parameters cross-validation chose, fitted on the same posts."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.multiclass import OneVsRestClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import MultiLabelBinarizer

    linear = LogisticRegression(C=model.c, max_iter=5000, solver=model.cross_validation["solver"])
    pipeline = make_pipeline(TfidfVectorizer(analyzer="char", lowercase=False, sublinear_tf=True, dtype=np.float64,
                                             ngram_range=(1, model.ngram_max)),
                             OneVsRestClassifier(linear) if model.kind == "multi-label" else linear)
    if model.kind == "multi-label":
        return pipeline.fit(texts, MultiLabelBinarizer(classes=list(labels)).fit_transform(answers))
    return pipeline.fit(texts, [list(labels).index(a[0]) for a in answers])


@pytest.mark.parametrize("name", ["suicide-risk", "depression", "cognitive-distortion"])
def test_saved_model_answers_as_sklearns_pipeline_does(pm, tmp_path, name):
    task = pm.task(name)
    train, test = _split(task, name)
    train_baseline(task, train, tmp_path / "model", data=[f"sample:{name}"])
    model = BaselineModel.load(tmp_path / "model")
    texts, answers = [p.text for p in train], [tuple(p.gold) for p in train]
    reference = _sklearn_pipeline(model, texts, answers, task.label_names)
    ours = model.probabilities([p.text for p in test])
    np.testing.assert_allclose(ours, reference.predict_proba([p.text for p in test]), rtol=1e-9, atol=1e-12)
    assert model.predict([p.text for p in test]) == (
        [[task.label_names[i] for i in np.flatnonzero(row)] for row in reference.predict([p.text for p in test])]
        if task.kind == "multi-label" else [[task.label_names[i]] for i in reference.predict([p.text for p in test])])


def test_evaluate_metrics_equal_sklearns_on_the_held_out_posts(pm, tmp_path):
    from sklearn.metrics import f1_score

    from mentalglm.evaluation.evaluate import evaluate

    task = pm.task("suicide-risk")
    train, test = _split(task, "suicide-risk")
    train_baseline(task, train, tmp_path / "model", data=["sample:suicide-risk"])
    model = BaselineModel.load(tmp_path / "model")
    reference = _sklearn_pipeline(model, [p.text for p in train], [tuple(p.gold) for p in train], task.label_names)
    with Analyzer(task, backend="baseline", model=str(tmp_path / "model"), plugins=pm) as analyzer:
        document = evaluate(analyzer, test, tmp_path / "run", data="held-out", progress=False, bootstrap=0)
    gold = [task.label_names.index(p.gold[0]) for p in test]
    expected = f1_score(gold, reference.predict([p.text for p in test]), average="weighted")
    assert document["metrics"]["weighted_f1"] == pytest.approx(expected, abs=1e-12)
    assert document["counts"]["invalid"] == 0


def test_explanations_quote_the_post_and_every_quote_is_grounded(pm, tmp_path):
    task = pm.task("depression")
    train, test = _split(task, "depression")
    train_baseline(task, train, tmp_path / "model", data=["sample:depression"])
    with Analyzer(task, backend="baseline", model=str(tmp_path / "model"), plugins=pm) as analyzer:
        predictions = list(analyzer.analyze_many(test))
    assert all(p.valid and p.label_line for p in predictions)
    quoted = [e for p in predictions for e in (p.evidence or [])]
    assert quoted and all(e["grounded"] for e in quoted)
    for prediction, post in zip(predictions, test):
        for e in prediction.evidence or []:
            assert post.text[e["start"]:e["end"]] == e["quote"]


def test_score_mode_gives_the_models_log_probabilities_and_explains_the_chosen_label(pm, tmp_path):
    task = pm.task("suicide-risk")
    train, test = _split(task, "suicide-risk")
    train_baseline(task, train, tmp_path / "model", data=["sample:suicide-risk"])
    model = BaselineModel.load(tmp_path / "model")
    with Analyzer(task, backend="baseline", model=str(tmp_path / "model"), mode="score", plugins=pm) as analyzer:
        predictions = list(analyzer.analyze_many(test[:5]))
    probabilities = model.probabilities([p.text for p in test[:5]])
    for prediction, row in zip(predictions, probabilities):
        assert [np.exp(prediction.scores[label]) for label in task.label_names] == pytest.approx(list(row))
        assert prediction.labels == [task.label_names[int(np.argmax(row))]]
        assert prediction.output.startswith(f"标签：{prediction.labels[0]}\n解释：字符 n-gram 逻辑回归基线：判为"
                                            f"{prediction.labels[0]}")


def test_the_model_folder_holds_no_pickle_and_a_pickled_array_is_refused(pm, tmp_path):
    task = pm.task("suicide-risk")
    train, _ = _split(task, "suicide-risk")
    train_baseline(task, train, tmp_path / "model", data=["sample:suicide-risk"])
    assert sorted(p.name for p in (tmp_path / "model").iterdir()) == ["baseline.json", "train.json", "weights.npz"]
    with np.load(tmp_path / "model" / "weights.npz", allow_pickle=False) as weights:
        assert {k: weights[k].dtype.kind for k in weights.files} == {"idf": "f", "coef": "f", "intercept": "f"}
    np.savez(tmp_path / "model" / "weights.npz", idf=np.array([object()], dtype=object), coef=np.zeros((1, 1)),
             intercept=np.zeros(1))
    with pytest.raises(MentalGLMError, match="cannot read the baseline model"):
        BaselineModel.load(tmp_path / "model")


def test_a_run_of_another_task_is_refused(pm, tmp_path):
    task = pm.task("suicide-risk")
    train, test = _split(task, "suicide-risk")
    train_baseline(task, train, tmp_path / "model", data=["sample:suicide-risk"])
    with Analyzer("depression", backend="baseline", model=str(tmp_path / "model"), plugins=pm) as analyzer:
        with pytest.raises(MentalGLMError, match="the baseline was trained for task 'suicide-risk'"):
            analyzer.analyze("好累")


def test_fit_refuses_what_it_cannot_model():
    with pytest.raises(MentalGLMError, match="single-label and multi-label tasks; 'p' is extraction"):
        fit_baseline(["a"], [("x",)], task="p", kind="extraction", labels=["x"])
    with pytest.raises(MentalGLMError, match="at least 2 training posts of every label.*乙: 1"):
        fit_baseline(["一二", "三四", "五六"], [("甲",), ("甲",), ("乙",)], task="t", kind="single-label",
                     labels=["甲", "乙"])


def test_cli_trains_and_refuses_lora_settings(tmp_path):
    out = tmp_path / "model"
    result = run_cli("train", "--backend", "baseline", "--task", "suicide-risk", "--data", "sample:suicide-risk",
                     "-o", str(out), "--json")
    assert result.returncode == 0, result.stderr
    record = json.loads(result.stdout)
    assert record["posts"] == 67 and record["cv_scorer"] == "f1[高自杀风险]"
    assert record["C"] in (0.1, 1.0, 10.0, 100.0, 1000.0)
    assert json.loads((out / "train.json").read_text(encoding="utf-8")) == record
    refused = run_cli("train", "--backend", "baseline", "--task", "suicide-risk", "--data", "sample:suicide-risk",
                      "-o", str(out), "--lora-r", "8")
    assert refused.returncode == 1
    assert refused.stderr.strip() == ("mentalglm: error: --lora-r does not apply to --backend baseline (it takes "
                                      "--task, --data, --output and --seed)")
    unlabelled = tmp_path / "posts.jsonl"
    unlabelled.write_text('{"id": "1", "text": "好累", "label": "高自杀风险"}\n{"id": "2", "text": "好累"}\n',
                          encoding="utf-8")
    missing = run_cli("train", "--backend", "baseline", "--task", "suicide-risk", "--data", str(unlabelled),
                      "-o", str(out))
    assert missing.returncode == 1
    assert missing.stderr.strip() == (f"mentalglm: error: {unlabelled}:2: field 'label': missing; the baseline "
                                      "trains on labelled posts")
