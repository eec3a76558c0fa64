"""Every statistic against an outside reference (statsmodels, scikit-learn, scipy) on seeded random data.

Tolerances: Wilson, κ and the bootstrap are the same closed forms or the same draws as the
references, so they agree to float rounding (1e-12). McNemar's p-value is compared relatively
(1e-9): statsmodels goes through scipy's binomial CDF, we through exact integers.
"""

from __future__ import annotations

import random

import numpy as np
import pytest

from mentalglm.core.task import ExtractionTask, Field, Label, MultiLabelTask, ParsedResponse, SingleLabelTask
from mentalglm.evaluation import statistics as st

statsmodels = pytest.importorskip("statsmodels")
from scipy import stats  # noqa: E402
from sklearn.metrics import cohen_kappa_score  # noqa: E402
from statsmodels.stats.contingency_tables import mcnemar  # noqa: E402
from statsmodels.stats.proportion import proportion_confint  # noqa: E402


# -- Wilson ------------------------------------------------------------------------------------
def test_wilson_equals_statsmodels_on_random_counts():
    rng = random.Random(0)
    cases = [(0, 1), (1, 1), (0, 50), (50, 50), (1, 2)] + [
        (k, n) for n in (rng.randint(1, 5000) for _ in range(200)) for k in [rng.randint(0, n)]]
    for confidence in (0.95, 0.9, 0.99):
        for k, n in cases:
            low, high = st.wilson_interval(k, n, confidence)
            ref_low, ref_high = proportion_confint(k, n, alpha=1 - confidence, method="wilson")
            assert low == pytest.approx(ref_low, abs=1e-12) and high == pytest.approx(ref_high, abs=1e-12), (k, n)
            assert 0 <= low <= k / n <= high <= 1


@pytest.mark.parametrize("k, n", [(-1, 10), (11, 10), (0, 0)])
def test_wilson_refuses_impossible_counts(k, n):
    with pytest.raises(ValueError):
        st.wilson_interval(k, n)


# -- McNemar -----------------------------------------------------------------------------------
def test_mcnemar_exact_equals_statsmodels_on_random_tables():
    rng = random.Random(1)
    tables = [(0, 0), (0, 1), (5, 5), (10, 2), (0, 25)] + [
        (rng.randint(0, 300), rng.randint(0, 300)) for _ in range(150)] + [(900, 1100), (2400, 2600)]
    for b, c in tables:
        reference = mcnemar([[rng.randint(0, 50), b], [c, rng.randint(0, 50)]], exact=True).pvalue
        assert st.mcnemar_exact(b, c) == pytest.approx(reference, rel=1e-9, abs=1e-300), (b, c)


def test_mcnemar_is_symmetric_and_one_without_discordant_posts():
    assert st.mcnemar_exact(0, 0) == 1.0 and st.mcnemar_exact(7, 7) == 1.0
    assert st.mcnemar_exact(3, 12) == st.mcnemar_exact(12, 3)


# -- Cohen's κ ---------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", range(5))
def test_kappa_equals_sklearn_on_random_labels(seed):
    rng = random.Random(seed)
    categories = ["抑郁", "非抑郁", "<invalid>"][: 2 + seed % 2]
    for n in (2, 10, 137, 1000):
        first = [rng.choice(categories) for _ in range(n)]
        # Second rater: agrees with the first most of the time, so κ lands well away from 0.
        second = [x if rng.random() < 0.7 else rng.choice(categories) for x in first]
        if len(set(first)) == 1 and first == second:
            continue
        assert st.cohen_kappa(first, second) == pytest.approx(cohen_kappa_score(first, second), abs=1e-12)


@pytest.mark.parametrize("weights", ["linear", "quadratic"])
@pytest.mark.parametrize("seed", range(3))
def test_weighted_kappa_equals_sklearn_on_random_ratings(seed, weights):
    rng = random.Random(seed)
    first = [rng.randint(1, 5) for _ in range(200)]
    second = [min(5, max(1, x + rng.choice([-1, 0, 0, 1]))) for x in first]
    expected = cohen_kappa_score(first, second, weights=weights, labels=[1, 2, 3, 4, 5])
    assert st.cohen_kappa(first, second, weights=weights, labels=[1, 2, 3, 4, 5]) == pytest.approx(expected, abs=1e-12)


def test_kappa_against_a_count_by_hand():
    # 10 posts: both say a on 4, both b on 3; a/b on 2, b/a on 1. p_o = 7/10;
    # marginals a: 6 and 5, b: 4 and 5 → p_e = (6·5 + 4·5)/100 = 1/2 → κ = (0.7 − 0.5)/(1 − 0.5) = 0.4.
    first = ["a"] * 4 + ["b"] * 3 + ["a"] * 2 + ["b"]
    second = ["a"] * 4 + ["b"] * 3 + ["b"] * 2 + ["a"]
    assert st.cohen_kappa(first, second) == pytest.approx(0.4, abs=1e-12)
    # Ratings 1–3, quadratic weights: pairs (1,1) (2,3) (3,3) (1,2): Σw·O = 0+1+0+1 = 2;
    # marginals (first|second) 1: 2|1, 2: 1|1, 3: 1|2 → Σw·E = Σ (i−j)²·row_i·col_j / 4
    # = (1·2·1 + 4·2·2 + 1·1·1 + 1·1·2 + 4·1·1 + 1·1·1) / 4 = 26/4 → κ_w = 1 − 2 / (26/4) = 9/13.
    assert st.cohen_kappa([1, 2, 3, 1], [1, 3, 3, 2], weights="quadratic", labels=[1, 2, 3]) == pytest.approx(
        9 / 13, abs=1e-12)


def test_kappa_is_one_for_identical_raters_and_undefined_for_one_constant_answer():
    assert st.cohen_kappa(list("aabbc"), list("aabbc")) == pytest.approx(1.0)
    assert st.cohen_kappa(["a"] * 5, ["a"] * 5) is None  # chance agreement is 1: κ is 0/0
    assert st.cohen_kappa([], []) is None
    with pytest.raises(ValueError):
        st.cohen_kappa(["a"], [])


# -- the bootstrap -----------------------------------------------------------------------------
@pytest.mark.parametrize("n, resamples, rows", [(30, 500, None), (200, 1000, 64), (7, 999, 1000)])
def test_percentile_bootstrap_equals_scipy_draw_for_draw(n, resamples, rows):
    data = np.random.default_rng(n).normal(size=n)
    block_rows = rows or st.default_block_rows(n, resamples)
    replicates = np.concatenate([data[block].mean(axis=1)
                                 for block in st.resample_blocks(n, resamples, seed=42, block_rows=rows)])
    reference = stats.bootstrap((data,), np.mean, n_resamples=resamples, batch=block_rows, method="percentile",
                                rng=np.random.default_rng(42))
    np.testing.assert_allclose(replicates, reference.bootstrap_distribution, rtol=0, atol=1e-12)
    low, high = st.percentile_interval(replicates)
    assert low == pytest.approx(reference.confidence_interval.low, abs=1e-12)
    assert high == pytest.approx(reference.confidence_interval.high, abs=1e-12)


def _single_label_run(seed: int, n: int, labels=("高自杀风险", "低自杀风险", "不确定"), report=("高自杀风险",)):
    task = SingleLabelTask(name="risk", instruction="判断风险。", labels=[Label(x) for x in labels],
                           report_label_f1=report)
    rng = random.Random(seed)
    # The last label never occurs as gold: its F1 is 0 and macro F1 must still average over it.
    golds = [(rng.choice(labels[:2]),) for _ in range(n)]
    responses = [ParsedResponse((), "", False, "x") if rng.random() < 0.1 else
                 ParsedResponse((g[0] if rng.random() < 0.7 else rng.choice(labels),), "", True) for g in golds]
    return task, golds, responses


def _multi_label_run(seed: int, n: int):
    labels = ["非此即彼", "以偏概全", "心理过滤", "读心术"]
    task = MultiLabelTask(name="cd", instruction="找出认知歪曲。", labels=[Label(x) for x in labels],
                          none_aliases=("无",))
    rng = random.Random(seed)
    golds = [tuple(x for x in labels if rng.random() < 0.3) for _ in range(n)]
    responses = [ParsedResponse((), "", False, "x") if rng.random() < 0.1 else
                 ParsedResponse(tuple(x for x in labels if (x in g) == (rng.random() < 0.8)), "", True)
                 for g in golds]
    return task, golds, responses


def _extraction_run(seed: int, n: int):
    task = ExtractionTask(name="path", instruction="提取。", fields=[Field("事件"), Field("信念")])
    rng = random.Random(seed)
    words = "我今天考试失败了觉得自己很没用一切都完了"
    golds = [{"事件": "".join(rng.sample(words, 6)), "信念": "".join(rng.sample(words, 5))} for _ in range(n)]
    responses = [ParsedResponse((), "", False, "x", {}) if rng.random() < 0.1 else
                 ParsedResponse(("事件",), "", True, None, {"事件": g["事件"][: rng.randint(0, 6)], "信念": ""})
                 for g in golds]
    return task, golds, responses


def _hierarchical_run(seed: int, n: int):
    from mentalglm.core.plugin_manager import PluginManager

    task = PluginManager(load_entry_points=False).task("cognitive-pathway")
    rng = random.Random(seed)
    leaves, words = list(task.label_names), "我今天考试失败了觉得自己很没用一切都完了"

    def answer():
        labels = tuple(x for x in leaves if rng.random() < 0.15)
        return {"labels": labels, "summaries": {part: "".join(rng.sample(words, rng.randint(0, 5)))
                                                for part in task.part_names}}

    golds = [answer() for _ in range(n)]
    responses = [ParsedResponse((), "", False, "x", {}) if rng.random() < 0.1 else
                 ParsedResponse(a["labels"], "", True, None, a["summaries"]) for a in (answer() for _ in range(n))]
    return task, golds, responses


RUNS = {"single-label": _single_label_run, "multi-label": _multi_label_run, "extraction": _extraction_run,
        "hierarchical": _hierarchical_run}


@pytest.mark.parametrize("kind", RUNS)
@pytest.mark.parametrize("seed", range(3))
def test_vectorised_replicates_equal_the_tasks_own_metrics_on_every_resample(kind, seed):
    task, golds, responses = RUNS[kind](seed, 80)
    metrics = task.compute_metrics(golds, responses)
    names = st.interval_names(metrics)
    fast, how = st.replicate_engine(task, golds, responses, names, metrics)
    assert how == "vectorised"
    slow = st._generic_engine(task, golds, responses, names)
    block = next(st.resample_blocks(len(golds), 40, seed=seed))
    fast_values, slow_values = fast(block), slow(block)
    for name in names:
        np.testing.assert_allclose(fast_values[name], slow_values[name], rtol=0, atol=1e-12, err_msg=name)


def test_metric_bootstrap_equals_scipy_bootstrap_of_compute_metrics():
    """The whole pipeline against scipy: resample post indices, score each resample with the task."""
    task, golds, responses = _single_label_run(5, 60)
    metrics = task.compute_metrics(golds, responses)
    intervals, settings = st.metric_intervals(task, golds, responses, metrics, resamples=100, seed=9)
    assert settings["scoring"] == "vectorised" and settings["resamples"] == 100

    def weighted_f1(indices):
        chosen = [int(i) for i in indices]
        return task.compute_metrics([golds[i] for i in chosen], [responses[i] for i in chosen])["weighted_f1"]

    reference = stats.bootstrap((np.arange(len(golds)),), weighted_f1, vectorized=False, n_resamples=100,
                                batch=st.default_block_rows(len(golds), 100), method="percentile",
                                rng=np.random.default_rng(9))
    assert intervals["weighted_f1"]["low"] == pytest.approx(reference.confidence_interval.low, abs=1e-12)
    assert intervals["weighted_f1"]["high"] == pytest.approx(reference.confidence_interval.high, abs=1e-12)


def test_metric_intervals_methods_determinism_and_point_inside():
    task, golds, responses = _single_label_run(2, 400)
    metrics = task.compute_metrics(golds, responses)
    intervals, settings = st.metric_intervals(task, golds, responses, metrics)
    assert set(intervals) == set(st.interval_names(metrics)) == {
        "invalid_rate", "accuracy", "weighted_f1", "macro_f1", "micro_f1", "f1[高自杀风险]"}
    assert {k: v["method"] for k, v in intervals.items() if v["method"] == "wilson"} == {
        "invalid_rate": "wilson", "accuracy": "wilson"}
    assert intervals["weighted_f1"] | {"low": 0, "high": 0} == {
        "low": 0, "high": 0, "method": "percentile bootstrap", "resamples": 1000, "seed": 0, "confidence": 0.95}
    assert settings | {"seconds": 0} == {"resamples": 1000, "seed": 0, "confidence": 0.95, "unit": "post",
                                         "method": "percentile bootstrap", "scoring": "vectorised", "seconds": 0}
    for name, interval in intervals.items():
        assert interval["low"] <= metrics[name] <= interval["high"], name
    again, _ = st.metric_intervals(task, golds, responses, metrics)
    other, _ = st.metric_intervals(task, golds, responses, metrics, seed=1)
    assert again == intervals
    assert other["weighted_f1"] != intervals["weighted_f1"] and other["accuracy"] == intervals["accuracy"]


def test_bootstrap_off_keeps_the_wilson_intervals():
    task, golds, responses = _multi_label_run(0, 50)
    metrics = task.compute_metrics(golds, responses)
    intervals, settings = st.metric_intervals(task, golds, responses, metrics, resamples=0)
    assert set(intervals) == {"invalid_rate", "exact_match"} and settings["method"] is None


def test_a_task_with_its_own_metrics_is_bootstrapped_by_calling_them():
    class Lenient(SingleLabelTask):
        def compute_metrics(self, golds, responses):  # invalid answers ignored: not what the fast path assumes
            kept = [(g, r) for g, r in zip(golds, responses) if r.valid]
            result = super().compute_metrics([g for g, _ in kept], [r for _, r in kept])
            return {**result, "n": len(golds)}

    base, golds, responses = _single_label_run(3, 60)
    task = Lenient(name="lenient", instruction="判断。", labels=list(base.labels))
    metrics = task.compute_metrics(golds, responses)
    _, how = st.replicate_engine(task, golds, responses, st.interval_names(metrics), metrics)
    assert how == "per resample"
    intervals, settings = st.metric_intervals(task, golds, responses, metrics, resamples=50)
    assert settings["scoring"] == "per resample" and intervals["macro_f1"]["low"] <= metrics["macro_f1"]


def test_percentile_bootstrap_covers_the_true_mean_about_95_percent_of_the_time():
    """Coverage on simulated data: 300 seeded data sets of 200 Bernoulli(0.3) posts.

    The true coverage of a percentile interval for a mean at n = 200 is close to 0.95; with 300
    data sets the observed share has a standard deviation of about 0.013, so [0.90, 0.99] holds
    more than 3.5 of them on either side. Seeds are fixed, so the outcome cannot flake.
    """
    rng = np.random.default_rng(2024)
    hits_bootstrap = hits_wilson = 0
    for trial in range(300):
        data = (rng.random(200) < 0.3).astype(float)
        replicates = np.concatenate([data[b].mean(axis=1) for b in st.resample_blocks(200, 500, seed=trial)])
        low, high = st.percentile_interval(replicates)
        hits_bootstrap += low <= 0.3 <= high
        w_low, w_high = st.wilson_interval(int(data.sum()), 200)
        hits_wilson += w_low <= 0.3 <= w_high
    assert 0.90 <= hits_bootstrap / 300 <= 0.99
    assert 0.90 <= hits_wilson / 300 <= 0.99


def test_a_thousand_resamples_of_a_few_thousand_posts_are_vectorised():
    task, golds, responses = _single_label_run(7, 5000)
    metrics = task.compute_metrics(golds, responses)
    intervals, settings = st.metric_intervals(task, golds, responses, metrics)
    assert settings["scoring"] == "vectorised"  # its speed is benchmarked, not timed here
    assert intervals["macro_f1"]["high"] - intervals["macro_f1"]["low"] < 0.05


def test_interval_names_skip_counts():
    assert st.interval_names({"n": 3, "invalid": 1, "invalid_rate": 1 / 3, "f1": 0.5, "per_label": {}}) == [
        "invalid_rate", "f1"]
