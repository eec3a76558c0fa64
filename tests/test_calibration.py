"""Calibrated probabilities from score mode, the target-recall threshold and the review band.

Synthetic posts with a known true probability of high risk: each post's gold label is drawn
from that probability with a seeded RNG, and the fake backend's log-likelihoods are the true
log-probabilities times 5 — an over-confident model whose right temperature is 5. Everything
is seeded, so every number below is the same on every run; tolerances only absorb the sampling
noise of the fixed draw.
"""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from conftest import RecordingBackend, run_cli
from mentalglm import Analyzer, MentalGLMError, Post
from mentalglm.core.files import digest, file_sha256
from mentalglm.evaluation import calibration as cal
from mentalglm.evaluation.evaluate import evaluate

HIGH, LOW = "高自杀风险", "低自杀风险"
OVERCONFIDENCE = 5.0


class SyntheticScores(RecordingBackend):
    """Scores each post by the true probability written in its text: ``log q · 5`` and ``log (1 − q) · 5``."""

    factor = OVERCONFIDENCE  # 1.0: a calibrated model

    def score_labels(self, prompt, candidates):
        q = float(re.search(r"q=([0-9.]+)", prompt).group(1))
        logp = {HIGH: np.log(q), LOW: np.log1p(-q)}
        return [self.factor * logp[c] for c in candidates]


def synthetic_posts(n: int, seed: int, prefix: str) -> list[Post]:
    rng = np.random.default_rng(seed)
    q = rng.uniform(0.02, 0.98, n)
    gold = rng.uniform(size=n) < q
    return [Post(id=f"{prefix}{i}", text=f"帖子 q={q[i]:.6f}", gold=(HIGH if g else LOW,))
            for i, g in enumerate(gold)]


def score_analyzer(pm, calibration=None):
    return Analyzer(task="suicide-risk", backend=SyntheticScores(), mode="score", explain=False, plugins=pm,
                    calibration=calibration)


@pytest.fixture
def dev_run(pm, tmp_path):
    folder = tmp_path / "dev"
    evaluate(score_analyzer(pm), synthetic_posts(600, 1, "d"), folder, data="synthetic-dev", bootstrap=0)
    return folder


# -- the pieces, against references -------------------------------------------------------------
def test_ece_matches_a_hand_computation():
    probabilities = np.array([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7], [0.45, 0.55]])
    gold = np.array([0, 1, 1, 1])  # top labels 0, 0, 1, 1: right, wrong, right, right
    # Two bins: all four confidences are in (0.5, 1]: |3/4 − (0.9 + 0.8 + 0.7 + 0.55)/4| = 0.0125.
    assert cal.expected_calibration_error(probabilities, gold, bins=2) == pytest.approx(0.0125)
    # Ten bins: each post alone in its bin: (0.1 + 0.8 + 0.3 + 0.45) / 4.
    assert cal.expected_calibration_error(probabilities, gold, bins=10) == pytest.approx(0.4125)


def test_brier_matches_sklearn_on_two_labels():
    from sklearn.metrics import brier_score_loss

    rng = np.random.default_rng(3)
    p = rng.uniform(size=200)
    gold = (rng.uniform(size=200) < p).astype(int)
    probabilities = np.column_stack([p, 1 - p])  # column 0 is the positive label
    assert cal.brier_score(probabilities, 1 - gold) == pytest.approx(brier_score_loss(gold, p))


def test_temperature_fit_matches_scipy():
    optimize = pytest.importorskip("scipy.optimize")
    rng = np.random.default_rng(7)
    logits = rng.normal(size=(300, 3)) * 4
    gold = np.array([rng.choice(3, p=row) for row in cal.softmax(logits / 3)])
    ours = cal.fit_temperature(logits, gold)
    reference = optimize.minimize_scalar(lambda u: cal.nll(logits, gold, np.exp(u)), bounds=cal.LOG_T_BOUNDS,
                                         method="bounded", options={"xatol": 1e-10})
    # Both minimise the same smooth 1-D function; 1e-4 relative is far above either's tolerance.
    assert ours == pytest.approx(float(np.exp(reference.x)), rel=1e-4)
    assert cal.nll(logits, gold, ours) <= reference.fun + 1e-9


def test_golden_section_finds_a_parabolas_minimum():
    assert cal.golden_section(lambda x: (x - 1.234) ** 2, -5, 5) == pytest.approx(1.234, abs=1e-6)


# -- calibrating a dev run ------------------------------------------------------------------------
def test_temperature_scaling_undoes_overconfidence_and_lowers_ece(pm, dev_run):
    calibration = cal.calibrate(dev_run, pm.task("suicide-risk"))
    # 600 draws: the fitted temperature lands near the true 5 (±20 % is several standard errors).
    assert calibration.parameters["temperature"] == pytest.approx(OVERCONFIDENCE, rel=0.2)
    before, after = calibration.source["metrics"]["before"], calibration.source["metrics"]["after"]
    assert after["ece"] < before["ece"] / 2 and after["brier"] < before["brier"] and after["nll"] < before["nll"]
    assert calibration.source["dev_predictions_sha256"] == file_sha256(dev_run / "predictions.jsonl")


@pytest.mark.parametrize("method", ["platt", "isotonic"])
def test_platt_and_isotonic_also_lower_ece(pm, dev_run, method):
    calibration = cal.calibrate(dev_run, pm.task("suicide-risk"), method=method)
    metrics = calibration.source["metrics"]
    assert metrics["after"]["ece"] < metrics["before"]["ece"] / 2
    probabilities = calibration.probabilities({HIGH: -0.1, LOW: -3.0})
    assert sum(probabilities.values()) == pytest.approx(1.0) and 0 <= probabilities[HIGH] <= 1


def test_saved_platt_and_isotonic_apply_as_scikit_learns_fitted_models(pm, dev_run):
    """The calibration file's parameters, applied by our own formulas, give what scikit-learn's models predict."""
    from sklearn.isotonic import IsotonicRegression
    from sklearn.linear_model import LogisticRegression

    logits, gold, _ = cal.read_run(dev_run, [HIGH, LOW])
    is_high = (gold == 0).astype(int)
    platt = cal.calibrate(dev_run, pm.task("suicide-risk"), method="platt")
    reference = LogisticRegression(C=1e6, max_iter=1000).fit(cal.risk_log_odds(logits, 0).reshape(-1, 1), is_high)
    np.testing.assert_allclose(platt.transform(logits)[:, 0],
                               reference.predict_proba(cal.risk_log_odds(logits, 0).reshape(-1, 1))[:, 1], atol=1e-9)
    isotonic = cal.calibrate(dev_run, pm.task("suicide-risk"), method="isotonic")
    model = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip").fit(cal.softmax(logits)[:, 0], is_high)
    np.testing.assert_allclose(isotonic.transform(logits)[:, 0], model.predict(cal.softmax(logits)[:, 0]), atol=1e-12)


def test_nll_and_brier_equal_scikit_learns(pm, dev_run):
    from sklearn.metrics import brier_score_loss, log_loss

    logits, gold, _ = cal.read_run(dev_run, [HIGH, LOW])
    probabilities = cal.softmax(logits)
    quality = cal.quality(probabilities, gold)
    assert quality["nll"] == pytest.approx(log_loss(gold, probabilities, labels=[0, 1]), abs=1e-12)
    assert quality["brier"] == pytest.approx(brier_score_loss(gold == 0, probabilities[:, 0]), abs=1e-12)


def test_target_recall_threshold_reaches_its_recall_on_dev_and_test_recall_is_reported(pm, dev_run, tmp_path):
    calibration = cal.calibrate(dev_run, pm.task("suicide-risk"), target_recall=(HIGH, 0.95))
    policy = calibration.policy
    logits, gold, _ = cal.read_run(dev_run, [HIGH, LOW])
    p_high, is_high = calibration.transform(logits)[:, 0], gold == 0
    recall = ((p_high >= policy.threshold) & is_high).sum() / is_high.sum()
    assert recall >= 0.95 and policy.dev_recall == pytest.approx(recall)
    # The highest such threshold: just above it, recall falls below the target.
    assert ((p_high > policy.threshold) & is_high).sum() / is_high.sum() < 0.95
    assert 0 < policy.dev_precision < 1
    calibration.save(tmp_path / "calibration.json")
    document = evaluate(score_analyzer(pm, tmp_path / "calibration.json"), synthetic_posts(400, 2, "t"),
                        tmp_path / "test", data="synthetic-test", bootstrap=0)
    section = document["policy"]
    assert section["policy"]["threshold"] == policy.threshold and section["policy"]["target_recall"] == 0.95
    assert section["coverage"] == 1.0 and section["needs_review"] == 0
    # A fresh draw from the same process: recall near the target (0.85 leaves room for the sampling noise).
    assert 0.85 <= section["risk_recall"] <= 1 and section["risk_precision"] is not None
    assert "missed high-risk post is worse" in section["policy"]["why"]
    saved = [json.loads(line) for line in (tmp_path / "test" / "predictions.jsonl").read_text().splitlines()]
    assert all(set(s["probabilities"]) == {HIGH, LOW} for s in saved)
    assert all((s["labels"] == [HIGH]) == (s["probabilities"][HIGH] >= policy.threshold) for s in saved)


def test_the_review_band_marks_exactly_the_posts_in_it(pm, dev_run, tmp_path):
    calibration = cal.calibrate(dev_run, pm.task("suicide-risk"), review_band=(0.2, 0.8))
    posts = synthetic_posts(300, 4, "r")
    document = evaluate(score_analyzer(pm, calibration), posts, tmp_path / "band", data="synthetic", bootstrap=0)
    saved = [json.loads(line) for line in (tmp_path / "band" / "predictions.jsonl").read_text().splitlines()]
    in_band = [0.2 <= s["probabilities"][HIGH] <= 0.8 for s in saved]
    assert [s["needs_review"] for s in saved] == in_band and 0 < sum(in_band) < len(saved)
    assert all(s["labels"] for s in saved)  # the model's label stays visible, flagged
    section = document["policy"]
    assert section["needs_review"] == sum(in_band) and section["coverage"] == pytest.approx(1 - sum(in_band) / 300)
    assert "Decision policy" in (tmp_path / "band" / "report.md").read_text(encoding="utf-8")


# -- refusals -------------------------------------------------------------------------------------
def test_a_rerun_with_another_calibration_is_refused(pm, dev_run, tmp_path):
    task = pm.task("suicide-risk")
    posts = synthetic_posts(20, 5, "x")
    evaluate(score_analyzer(pm, cal.calibrate(dev_run, task)), posts, tmp_path / "run", data="s", bootstrap=0)
    other = cal.calibrate(dev_run, task, review_band=(0.3, 0.7))
    with pytest.raises(MentalGLMError, match="calibration"):
        evaluate(score_analyzer(pm, other), posts, tmp_path / "run", data="s", bootstrap=0)


def test_a_calibration_of_another_task_is_refused_in_one_line(pm, dev_run, tmp_path):
    path = tmp_path / "calibration.json"
    cal.calibrate(dev_run, pm.task("suicide-risk")).save(path)
    with pytest.raises(MentalGLMError, match="fitted for task 'suicide-risk'"):
        Analyzer(task="depression", backend=RecordingBackend(), mode="score", plugins=pm, calibration=path)
    result = run_cli("analyze", "--task", "depression", "--backend", "replay", "--model", "sample:depression.outputs",
                     "--mode", "score", "--calibration", str(path), "帖子")
    assert result.returncode == 1 and len(result.stderr.strip().splitlines()) == 1
    assert "fitted for task 'suicide-risk'" in result.stderr


def test_calibration_needs_score_mode(pm, dev_run, tmp_path):
    path = tmp_path / "calibration.json"
    cal.calibrate(dev_run, pm.task("suicide-risk")).save(path)
    with pytest.raises(MentalGLMError, match="applied in score mode"):
        Analyzer(task="suicide-risk", backend=RecordingBackend(), plugins=pm, calibration=path)


# -- the command ----------------------------------------------------------------------------------
def write_run(folder, pm, predictions, task="suicide-risk"):
    folder.mkdir()
    definition = pm.task(task)
    (folder / "run.json").write_text(json.dumps({"task": task, "task_sha256": digest(definition.describe()),
                                                 "mode": "score"}), encoding="utf-8")
    (folder / "predictions.jsonl").write_text("".join(json.dumps(p, ensure_ascii=False) + "\n" for p in predictions),
                                              encoding="utf-8")


def test_calibrate_command_writes_the_calibration_and_its_diagram(pm, tmp_path):
    rng = np.random.default_rng(11)
    predictions = []
    for i, q in enumerate(rng.uniform(0.02, 0.98, 300)):
        gold = HIGH if rng.uniform() < q else LOW
        scores = {HIGH: OVERCONFIDENCE * float(np.log(q)), LOW: OVERCONFIDENCE * float(np.log1p(-q))}
        predictions.append({"id": str(i), "labels": [HIGH if q >= 0.5 else LOW], "gold": [gold], "scores": scores})
    write_run(tmp_path / "dev", pm, predictions)
    out = tmp_path / "calibration.json"
    result = run_cli("calibrate", str(tmp_path / "dev"), "-o", str(out), "--target-recall", f"{HIGH}=0.9",
                     "--review-band", "0.25:0.75", "--json")
    assert result.returncode == 0, result.stderr
    shown, saved = json.loads(result.stdout), json.loads(out.read_text(encoding="utf-8"))
    assert saved["method"] == "temperature" and saved["task"] == "suicide-risk"
    assert saved["parameters"]["temperature"] == pytest.approx(OVERCONFIDENCE, rel=0.25)
    assert saved["metrics"]["after"]["ece"] < saved["metrics"]["before"]["ece"]
    assert saved["policy"]["target_recall"] == 0.9 and saved["policy"]["dev_recall"] >= 0.9
    assert saved["policy"]["review_band"] == [0.25, 0.75]
    assert saved["dev_predictions_sha256"] == file_sha256(tmp_path / "dev" / "predictions.jsonl")
    assert shown["sha256"] == file_sha256(out)
    if shown["note"] is None:
        assert (tmp_path / "calibration.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_calibrate_refuses_a_generate_mode_run_in_one_line(pm, tmp_path):
    write_run(tmp_path / "gen", pm, [{"id": "1", "labels": [HIGH], "gold": [HIGH], "scores": None}])
    result = run_cli("calibrate", str(tmp_path / "gen"), "-o", str(tmp_path / "c.json"))
    assert result.returncode == 1 and len(result.stderr.strip().splitlines()) == 1
    assert "only with --confidence" in result.stderr


def test_policy_flags_need_a_calibration_and_its_own_target(pm, dev_run, tmp_path):
    path = tmp_path / "calibration.json"
    cal.calibrate(dev_run, pm.task("suicide-risk"), target_recall=(HIGH, 0.95)).save(path)
    base = ("analyze", "--task", "suicide-risk", "--backend", "replay", "--model", "sample:suicide-risk.outputs",
            "--mode", "score", "帖子")
    result = run_cli(*base, "--review-band", "0.2:0.8")
    assert result.returncode == 1 and "need --calibration FILE" in result.stderr
    result = run_cli(*base, "--calibration", str(path), "--target-recall", f"{HIGH}=0.9")
    assert result.returncode == 1 and "target recall 高自杀风险=0.95" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    result = run_cli(*base, "--calibration", str(path), "--review-band", "0.9:0.1")
    assert result.returncode == 2 and "LO:HI" in result.stderr  # argparse: a usage error
