"""The plugin guide's example packages, pip-installed for real, work end to end."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
EXAMPLE = EXAMPLES / "mentalglm-loneliness"
REVIEW_QUEUE = EXAMPLES / "mentalglm-review-queue"


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """The examples installed with pip into their own folder, put on PYTHONPATH like site-packages."""
    target = tmp_path_factory.mktemp("site")
    build = tmp_path_factory.mktemp("build")
    result = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                             "--no-index", "--target", str(target), str(EXAMPLE), str(REVIEW_QUEUE)],
                            capture_output=True, text=True, timeout=300, cwd=build)
    assert result.returncode == 0, result.stderr
    env = {k: v for k, v in os.environ.items() if k != "MENTALGLM_LOAD_PLUGINS"}
    # The review-queue example writes its queue in the working directory unless told otherwise.
    env["MENTALGLM_REVIEW_QUEUE"] = str(tmp_path_factory.mktemp("queue") / "review-queue.jsonl")
    env["PYTHONPATH"] = os.pathsep.join([str(target), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


def mentalglm(env, *args, cwd=None):
    return subprocess.run([sys.executable, "-m", "mentalglm", *args], capture_output=True, text=True, env=env,
                          timeout=120, cwd=cwd)


def test_installed_plugin_shows_in_plugins_json(installed):
    result = mentalglm(installed, "plugins", "--json")
    assert result.returncode == 0, result.stderr
    plugins = {p["name"]: p for p in json.loads(result.stdout)["plugins"]}
    assert plugins["loneliness"]["tasks"] == ["loneliness"]
    assert plugins["loneliness"]["version"] == "0.1.0" and not plugins["loneliness"]["builtin"]


def test_installed_plugin_task_evaluates_with_replay(installed, tmp_path):
    data = EXAMPLE / "mentalglm_loneliness" / "data"
    result = mentalglm(installed, "evaluate", "--task", "loneliness", "--data", str(data / "posts.jsonl"),
                       "--backend", "replay", "--model", str(data / "outputs.jsonl"),
                       "--output-dir", str(tmp_path / "run"), "--json")
    assert result.returncode == 0, result.stderr
    metrics = json.loads(result.stdout)["metrics"]
    # 4 of 6 right (lo-4 wrong, lo-6 invalid), computed by hand.
    assert metrics["accuracy"] == pytest.approx(4 / 6) and metrics["invalid"] == 1


def test_env_var_keeps_installed_plugins_out(installed):
    env = {**installed, "MENTALGLM_LOAD_PLUGINS": ""}
    names = {p["name"] for p in json.loads(mentalglm(env, "plugins", "--json").stdout)["plugins"]}
    assert "loneliness" not in names and "review-queue" not in names


def test_python_task_reads_numbered_levels_and_the_hook_queues_risky_posts_once(installed, tmp_path):
    plugins = {p["name"]: p for p in json.loads(mentalglm(installed, "plugins", "--json").stdout)["plugins"]}
    assert plugins["review-queue"]["tasks"] == ["risk-level"] and plugins["review-queue"]["hooks"] == [
        "on_prediction", "register_tasks"]
    data = REVIEW_QUEUE / "mentalglm_review_queue" / "data"
    env = {**installed, "MENTALGLM_REVIEW_QUEUE": str(tmp_path / "queue.jsonl")}
    args = ("evaluate", "--task", "risk-level", "--data", str(data / "posts.jsonl"), "--backend", "replay",
            "--model", str(data / "outputs.jsonl"), "--output-dir", str(tmp_path / "run"), "--json")
    result = mentalglm(env, *args)
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    # r-2 answered "风险等级：3" (read as 高 by the task's own parser), r-5 is unreadable: 4 of 5 right.
    assert document["metrics"]["accuracy"] == pytest.approx(4 / 5) and document["counts"]["invalid"] == 1
    queue = [json.loads(line) for line in (tmp_path / "queue.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [(q["id"], q["labels"]) for q in queue] == [("r-2", ["高"]), ("r-4", ["中"]), ("r-5", [])]
    assert all("text" not in q for q in queue)
    assert mentalglm(env, *args).returncode == 0  # a rerun resumes: nothing is queued twice
    assert len((tmp_path / "queue.jsonl").read_text(encoding="utf-8").splitlines()) == 3


def test_review_queue_hook_also_queues_posts_in_the_calibrated_review_band(pm, tmp_path, monkeypatch):
    """Score mode with a calibration and a review band: the example's hook queues the band's posts with their p."""
    import importlib

    from test_calibration import SyntheticScores

    from mentalglm import Analyzer, Post
    from mentalglm.analysis import calibration as cal
    from mentalglm.core.files import digest

    monkeypatch.syspath_prepend(str(REVIEW_QUEUE))
    plugin = importlib.import_module("mentalglm_review_queue")
    monkeypatch.setenv("MENTALGLM_REVIEW_QUEUE", str(tmp_path / "queue.jsonl"))
    pm.register(plugin, name="review-queue")
    task = pm.task("suicide-risk")
    # Temperature 1 on log-likelihoods that are true log-probabilities: p(高自杀风险) is the q in the text.
    calibration = cal.Calibration(method="temperature", parameters={"temperature": 1.0}, task=task.name,
                                  task_sha256=digest(task.describe()), labels=list(task.label_names),
                                  risk_label="高自杀风险",
                                  policy=cal.Policy(risk_label="高自杀风险", review_band=(0.3, 0.6)))
    backend = SyntheticScores()
    backend.factor = 1.0
    posts = [Post(id="low", text="q=0.1"), Post(id="unsure", text="q=0.47"), Post(id="high", text="q=0.9")]
    analyzer = Analyzer(task=task, backend=backend, mode="score", explain=False, plugins=pm,
                        calibration=calibration)
    analyzer.run(posts, tmp_path / "p.jsonl")
    queue = [json.loads(line) for line in (tmp_path / "queue.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [(q["id"], q["reason"]) for q in queue] == [("unsure", "needs review: p=0.47"),
                                                       ("high", "high risk: 高自杀风险")]
    assert queue[0]["labels"] == ["低自杀风险"]  # the model's label is kept, flagged by the reason
