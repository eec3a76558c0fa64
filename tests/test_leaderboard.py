"""The model registry and the comparison across models: one column per model, failures reported, --reuse exact."""

from __future__ import annotations

import json
from pathlib import Path
from xml.etree import ElementTree

import pytest

from conftest import run_cli
from mentalglm import MentalGLMError
from mentalglm.data.readers import read_posts
from mentalglm.evaluation.leaderboard import TaskData, run_leaderboard
from mentalglm.evaluation.registry import RegistryError, load_registry
from mentalglm.training.baseline import train_baseline


def _registry(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "models.yaml"
    path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize("text, line, message", [
    ("models:\n  - name: a\n    backend: llamacp\n    model: m.gguf\n", 3,
     "field 'models[0].backend': unknown backend 'llamacp'"),
    ("models:\n  - name: a\n    backend: llamacpp\n    model: m.gguf\n    options:\n      n_gpu: 1\n", 5,
     "field 'models[0].options': backend 'llamacpp' has no option 'n_gpu'"),
    ("models:\n  - name: a\n    backend: replay\n    model: x\n  - name: a\n    backend: replay\n    model: y\n", 5,
     "field 'models[1].name': 'a' is already the name of models[0]"),
    ("models:\n  - name: a\n    backend: llamacpp\n    model: m.gguf\n    calibration: c.json\n", 5,
     "field 'models[0].calibration': a calibration needs mode: score"),
    ("reference: b\nmodels:\n  - name: a\n    backend: replay\n    model: x\n", 1,
     "field 'reference': expected the name of a model (a)"),
    ("models:\n  - name: a\n    backend: replay\n    model: x\n    colour: red\n", 5,
     "field 'models[0].colour': unknown key"),
    ("models:\n  - name: a b\n    backend: replay\n    model: x\n", 2, "field 'models[0].name': expected a name"),
    ("models:\n  - name: a\n    backend: llamacpp\n    prompt: glm5\n    model: m.gguf\n", 4,
     "field 'models[0].prompt': expected a prompt style"),
    ("models:\n  - name: a\n    backend: torch\n", 2, "field 'models[0].model': backend 'torch' needs a model"),
    ("models: []\n", 1, "field 'models': expected a non-empty list of models"),
])
def test_registry_mistakes_are_one_line_with_file_line_and_field(tmp_path, pm, text, line, message):
    path = _registry(tmp_path, text)
    with pytest.raises(RegistryError) as info:
        load_registry(path, plugins=pm)
    assert str(info.value).startswith(f"{path}:{line}: {message}")
    assert "\n" not in str(info.value)


def test_registry_paths_are_relative_to_its_folder_but_served_names_are_not(tmp_path, pm):
    path = _registry(tmp_path, "models:\n  - name: local\n    backend: llamacpp\n    model: m.gguf\n"
                               "  - name: served\n    backend: openai\n    model: qwen2.5\n"
                               "  - name: floor\n    backend: baseline\n    model: {suicide-risk: b/sr}\n")
    registry = load_registry(path, plugins=pm)
    assert [m.model for m in registry.models] == [str(tmp_path / "m.gguf"), "qwen2.5",
                                                  {"suicide-risk": str(tmp_path / "b/sr")}]
    assert registry.reference == "local"
    assert registry.for_task(registry.models[2], "model", "depression") is None
    assert registry.for_task(registry.models[0], "model", "depression") == str(tmp_path / "m.gguf")


@pytest.fixture
def board(tmp_path, pm):
    """A registry of the baseline (trained on the posts not compared), a replayed model and one that cannot load."""
    task = pm.task("suicide-risk")
    posts = read_posts("sample:suicide-risk", task)
    train, test = [p for i, p in enumerate(posts) if i % 3], [p for i, p in enumerate(posts) if not i % 3]
    train_baseline(task, train, tmp_path / "baseline", data=["sample:suicide-risk"])
    data = tmp_path / "test.jsonl"
    data.write_text("".join(json.dumps({"id": p.id, "text": p.text, "label": p.gold[0]}, ensure_ascii=False) + "\n"
                            for p in test), encoding="utf-8")
    registry = _registry(tmp_path, "reference: floor\nmodels:\n"
                                   "  - name: floor\n    backend: baseline\n    model: {suicide-risk: baseline}\n"
                                   "  - name: replayed\n    backend: replay\n    model: sample:suicide-risk.outputs\n"
                                   "  - name: missing\n    backend: llamacpp\n    model: nowhere.gguf\n")
    return load_registry(registry, plugins=pm), [TaskData(task, str(data), read_posts(data, task))]


def test_one_column_per_model_and_a_failure_stays_in_its_column(board, tmp_path, pm):
    from sklearn.metrics import f1_score

    from mentalglm.evaluation.compare import compare_runs

    registry, tasks = board
    document = run_leaderboard(registry, tasks, tmp_path / "out", bootstrap=200, seed=3, plugins=pm)
    [task] = document["tasks"]
    results = task["results"]
    assert document["models"] == ["floor", "replayed", "missing"]
    assert results["missing"]["status"] == "failed" and "nowhere.gguf: no such GGUF file" in results["missing"]["error"]
    assert results["floor"]["status"] == results["replayed"]["status"] == "ok"
    # the primary metric (F1 of the high-risk label) against scikit-learn on the saved predictions
    posts = tasks[0].posts
    saved = {json.loads(line)["id"]: json.loads(line) for line in
             (tmp_path / "out" / "suicide-risk" / "replayed" / "predictions.jsonl").read_text("utf-8").splitlines()}
    gold = [p.gold[0] == "高自杀风险" for p in posts]
    predicted = [saved[p.id]["labels"] == ["高自杀风险"] for p in posts]
    assert results["replayed"]["metrics"]["f1[高自杀风险]"] == pytest.approx(f1_score(gold, predicted), abs=1e-12)
    # the paired comparison is compare's on the same two folders
    paired = compare_runs(tmp_path / "out/suicide-risk/floor", tmp_path / "out/suicide-risk/replayed",
                          task=pm.task("suicide-risk"), resamples=200, seed=3, plugins=pm)
    versus = results["replayed"]["versus_reference"]
    assert (versus["delta"], versus["low"], versus["high"], versus["mcnemar_p"]) == (
        paired["metrics"]["f1[高自杀风险]"]["delta"], paired["metrics"]["f1[高自杀风险]"]["low"],
        paired["metrics"]["f1[高自杀风险]"]["high"], paired["mcnemar"]["p_value"])
    markdown = (tmp_path / "out" / "leaderboard.md").read_text(encoding="utf-8")
    assert markdown.splitlines()[2] == "| task | metric | floor | replayed | missing |"
    assert "- missing on suicide-risk: " in markdown
    csv_header = (tmp_path / "out" / "leaderboard.csv").read_text(encoding="utf-8").splitlines()[0]
    assert csv_header == "task,metric,floor,replayed,missing"
    svg = ElementTree.parse(tmp_path / "out" / "leaderboard.svg").getroot()
    circles = svg.findall("{http://www.w3.org/2000/svg}circle")
    assert len(circles) == 2 and len(svg.findall("{http://www.w3.org/2000/svg}line[@class='interval']")) == 2


def test_reuse_writes_the_same_files_without_loading_a_model(board, tmp_path, pm, monkeypatch):
    import mentalglm.analysis.analyzer as analyzer_module

    registry, tasks = board
    run_leaderboard(registry, tasks, tmp_path / "out", bootstrap=100, seed=1, plugins=pm)
    written = {name: (tmp_path / "out" / name).read_bytes()
               for name in ("leaderboard.md", "leaderboard.csv", "leaderboard.json", "leaderboard.svg")}

    def no_model(*args, **kwargs):
        raise AssertionError("--reuse loaded a model")

    monkeypatch.setattr(analyzer_module.Analyzer, "__init__", no_model)
    run_leaderboard(registry, tasks, tmp_path / "out", reuse=True, bootstrap=100, seed=1, plugins=pm)
    assert {name: (tmp_path / "out" / name).read_bytes() for name in written} == written


def test_a_rerun_resumes_and_keeps_the_speed_of_the_run_that_predicted(board, tmp_path, pm):
    registry, tasks = board
    first = run_leaderboard(registry, tasks, tmp_path / "out", bootstrap=0, plugins=pm)
    second = run_leaderboard(registry, tasks, tmp_path / "out", bootstrap=0, plugins=pm)
    assert second == first
    floor = json.loads((tmp_path / "out/suicide-risk/floor/metrics.json").read_text(encoding="utf-8"))
    assert floor["counts"]["analysed_now"] == 0 and floor["counts"]["resumed"] == len(tasks[0].posts)


def test_a_model_the_registry_gives_no_model_for_the_task_is_absent_and_the_others_run(board, tmp_path, pm):
    registry, tasks = board
    other = TaskData(pm.task("depression"), "sample:depression", read_posts("sample:depression", pm.task("depression")))
    document = run_leaderboard(registry, [other], tmp_path / "out", bootstrap=0, plugins=pm)
    results = document["tasks"][0]["results"]
    assert results["floor"] == {"status": "absent", "error": "the registry names no model for this task"}
    # the others ran (and failed on their own: saved outputs of another task, a missing file)
    assert results["replayed"]["status"] == "failed" and "no saved output for post id" in results["replayed"]["error"]
    assert results["missing"]["status"] == "failed"
    assert not (tmp_path / "out" / "depression" / "floor").exists()


def test_reuse_without_saved_predictions_says_what_is_missing(board, tmp_path, pm):
    registry, tasks = board
    document = run_leaderboard(registry, tasks, tmp_path / "empty", reuse=True, bootstrap=0, plugins=pm)
    result = document["tasks"][0]["results"]["floor"]
    assert result == {"status": "missing",
                      "error": f"0 of {len(tasks[0].posts)} posts have saved predictions in "
                               f"{tmp_path / 'empty' / 'suicide-risk' / 'floor'}"}


def test_unlabelled_posts_are_refused_before_any_model_runs(board, tmp_path, pm):
    from dataclasses import replace

    registry, tasks = board
    posts = [replace(tasks[0].posts[0], gold=None, line=7)]
    with pytest.raises(MentalGLMError, match="^data.jsonl:7: field 'label': missing"):
        run_leaderboard(registry, [TaskData(tasks[0].task, "data.jsonl", posts)], tmp_path / "out", plugins=pm)
    assert not (tmp_path / "out").exists()


def test_cli_validate_and_run(board, tmp_path):
    registry, _ = board
    listed = run_cli("leaderboard", "--models", str(registry.path), "--validate")
    assert listed.returncode == 0 and "3 models, reference floor" in listed.stdout
    unpaired = run_cli("leaderboard", "--models", str(registry.path), "--task", "suicide-risk",
                       "--output-dir", str(tmp_path / "o"))
    assert unpaired.returncode == 1 and "give --task and --data in pairs" in unpaired.stderr
    ran = run_cli("leaderboard", "--models", str(registry.path), "--task", "suicide-risk", "--data",
                  "sample:suicide-risk", "--output-dir", str(tmp_path / "o"), "--bootstrap", "50", "--quiet")
    assert ran.returncode == 0, ran.stderr
    assert "| task | metric | floor | replayed | missing |" in ran.stdout


def test_a_comparison_that_cannot_be_made_stays_in_its_column(board, tmp_path, pm, monkeypatch):
    import mentalglm.evaluation.compare as compare

    registry, tasks = board

    def refuse(*args, **kwargs):
        raise MentalGLMError("the runs hold different post ids")

    monkeypatch.setattr(compare, "compare_runs", refuse)
    document = run_leaderboard(registry, tasks, tmp_path / "out", bootstrap=0, plugins=pm)
    versus = document["tasks"][0]["results"]["replayed"]["versus_reference"]
    assert versus["delta"] is None and versus["error"] == "the runs hold different post ids"
    assert (tmp_path / "out" / "leaderboard.md").is_file()


def test_reuse_refuses_predictions_made_with_other_settings(board, tmp_path, pm):
    from dataclasses import replace

    from mentalglm.evaluation.registry import Registry

    registry, tasks = board
    run_leaderboard(registry, tasks, tmp_path / "out", bootstrap=0, plugins=pm)
    edited = Registry(registry.path, tuple(replace(m, strict_format=True) if m.name == "replayed" else m
                                           for m in registry.models), registry.reference)
    document = run_leaderboard(edited, tasks, tmp_path / "out", reuse=True, bootstrap=0, plugins=pm)
    result = document["tasks"][0]["results"]["replayed"]
    assert result["status"] == "stale" and "strict_format (recorded False, now True)" in result["error"]
    assert document["tasks"][0]["results"]["floor"]["status"] == "ok"
    fewer = [TaskData(tasks[0].task, tasks[0].data, tasks[0].posts[:5])]
    document = run_leaderboard(registry, fewer, tmp_path / "out", reuse=True, bootstrap=0, plugins=pm)
    assert document["tasks"][0]["results"]["floor"]["status"] == "stale"  # other posts than were run
