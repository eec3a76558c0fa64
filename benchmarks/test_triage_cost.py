"""What triage adds per post: applying a calibration (probabilities + decision) and grounding the
answer's quotes in the post — both should be negligible next to generating the answer.

Posts and answers: the shipped depression sample (65 posts with C-IMHI-style answers that quote
the posts), repeated to a few thousand. The calibration is a temperature calibration with a
review band, as ``mentalglm calibrate`` writes one. Per-post cost is the median round over the
posts; BENCHMARKS.md sets it beside the measured generation time per post.

    pytest benchmarks/test_triage_cost.py --benchmark-only
"""

from __future__ import annotations

import json
import os
import statistics
import time
from pathlib import Path

import pytest

from mentalglm.analysis.calibration import Calibration, Policy
from mentalglm.analysis.grounding import grounding_of
from mentalglm.core.files import digest
from mentalglm.core.plugin_manager import PluginManager
from mentalglm.data.readers import read_posts

SCALE = os.environ.get("MENTALGLM_BENCH_SCALE", "full")
REPEAT = 40 if SCALE == "full" else 2
SAMPLES = Path(__file__).parents[1] / "mentalglm" / "samples"


@pytest.fixture(scope="module")
def answered():
    posts = {p.id: p.text for p in read_posts("sample:depression")}
    lines = (SAMPLES / "depression.outputs.jsonl").read_text(encoding="utf-8").splitlines()
    rows = [json.loads(line) for line in lines]
    pairs = [(row["output"], posts[row["id"]]) for row in rows if row["id"] in posts]
    return pairs * REPEAT


def _timed(work, rounds: list):
    """``work`` with its own clock: with --benchmark-disable (CI's smoke run) pytest-benchmark keeps no stats."""
    def run():
        started = time.perf_counter()
        result = work()
        rounds.append(time.perf_counter() - started)
        return result

    return run


def test_grounding_cost_per_post(benchmark, answered):
    rounds: list = []
    results = benchmark(_timed(lambda: [grounding_of(output, post) for output, post in answered], rounds))
    assert sum(1 for evidence, _ in results if evidence) > 0
    benchmark.extra_info["posts"] = len(answered)
    benchmark.extra_info["microseconds_per_post"] = statistics.median(rounds) / len(answered) * 1e6


def test_calibration_cost_per_post(benchmark, answered):
    task = PluginManager().task("depression")
    labels = list(task.label_names)
    calibration = Calibration("temperature", {"temperature": 1.7}, task.name, digest(task.describe()), labels,
                              labels[0], Policy(risk_label=labels[0], review_band=(0.2, 0.8)))
    scores = [{labels[0]: -0.1 * (i % 30), labels[1]: -1.0} for i in range(len(answered))]

    def apply():
        return [calibration.decide(calibration.probabilities(s)) for s in scores]

    rounds: list = []
    decided = benchmark(_timed(apply, rounds))
    assert any(review for _, review in decided) and len(decided) == len(scores)
    benchmark.extra_info["microseconds_per_post"] = statistics.median(rounds) / len(scores) * 1e6
