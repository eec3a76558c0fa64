"""The command line as a user runs it: JSON contracts, exit codes and one-line errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from mentalglm.cli import main


def run_cli(*args, env_extra=None, cwd=None):
    """Run ``python -m mentalglm`` in a subprocess (the real entry point, real stdout/stderr)."""
    env = {**os.environ, "MENTALGLM_LOAD_PLUGINS": "", **(env_extra or {})}
    return subprocess.run([sys.executable, "-m", "mentalglm", *args], capture_output=True, text=True,
                          env=env, cwd=cwd, timeout=120)


def test_help_imports_no_heavy_library():
    result = subprocess.run([sys.executable, "-X", "importtime", "-m", "mentalglm", "--help"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and "analyze" in result.stdout
    imported = {line.split("|")[-1].strip().split(".")[0] for line in result.stderr.splitlines() if "|" in line}
    assert not imported & {"torch", "transformers", "llama_cpp", "peft", "sklearn", "gguf"}


def test_tasks_json_lists_four_tasks_with_kind_and_labels():
    result = run_cli("tasks", "--json")
    assert result.returncode == 0, result.stderr
    tasks = {t["name"]: t for t in json.loads(result.stdout)["tasks"]}
    assert {n: t["kind"] for n, t in tasks.items()} == {
        "depression": "single-label", "suicide-risk": "single-label",
        "cognitive-distortion": "multi-label", "cognitive-pathway": "extraction"}
    assert [l["name"] for l in tasks["suicide-risk"]["labels"]] == ["高自杀风险", "低自杀风险"]
    assert len(tasks["cognitive-distortion"]["labels"]) == 12
    assert [f["name"] for f in tasks["cognitive-pathway"]["fields"]] == ["诱发事件", "信念", "结果", "反驳"]


def test_plugins_json():
    result = run_cli("plugins", "--json")
    document = json.loads(result.stdout)
    by_name = {p["name"]: p for p in document["plugins"]}
    assert "depression" in by_name["mentalglm.tasks"]["tasks"]
    assert {"replay", "llamacpp"} <= set(by_name["mentalglm.backends"]["backends"])
    assert document["failures"] == []


def test_backends_describes_options():
    document = json.loads(run_cli("backends", "--json").stdout)
    replay = next(b for b in document["backends"] if b["name"] == "replay")
    assert {o["name"] for o in replay["options"]} >= {"output_field", "max_new_tokens"}


def test_evaluate_replay_writes_run_folder(tmp_path):
    out = tmp_path / "run"
    result = run_cli("evaluate", "--task", "suicide-risk", "--data", "sample:suicide-risk", "--backend", "replay",
                     "--model", "sample:suicide-risk.outputs", "--output-dir", str(out), "--json")
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    saved = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    assert document == saved
    for key in ("task", "backend", "model", "prompt", "counts", "metrics", "versions", "time"):
        assert key in saved
    assert saved["counts"]["invalid"] == saved["metrics"]["invalid"] > 0
    assert "f1[高自杀风险]" in saved["metrics"] and saved["primary_metric"] == "f1[高自杀风险]"
    predictions = [json.loads(line) for line in (out / "predictions.jsonl").read_text(encoding="utf-8").splitlines()]
    assert len(predictions) == saved["counts"]["posts"] and len({p["id"] for p in predictions}) == len(predictions)
    report = (out / "report.md").read_text(encoding="utf-8")
    assert "| 高自杀风险 |" in report and "Confusion matrix" in report
    # A rerun resumes: nothing analysed twice, same metrics.
    again = json.loads(run_cli("evaluate", "--task", "suicide-risk", "--data", "sample:suicide-risk", "--backend",
                               "replay", "--model", "sample:suicide-risk.outputs", "--output-dir", str(out),
                               "--json").stdout)
    assert again["counts"]["resumed"] == saved["counts"]["posts"] and again["metrics"] == saved["metrics"]
    # Re-scoring the predictions file itself with the replay backend gives the same metrics.
    rescored = json.loads(run_cli("evaluate", "--task", "suicide-risk", "--data", "sample:suicide-risk", "--backend",
                                  "replay", "--model", str(out / "predictions.jsonl"), "--output-dir",
                                  str(tmp_path / "rescored"), "--json").stdout)
    assert rescored["metrics"] == saved["metrics"]


def test_run_folder_with_other_settings_is_refused(tmp_path):
    args = ["evaluate", "--task", "depression", "--data", "sample:depression", "--backend", "replay",
            "--model", "sample:depression.outputs", "--output-dir", str(tmp_path)]
    assert run_cli(*args).returncode == 0
    result = run_cli(*args[:-1], str(tmp_path), "--prompt", "plain")
    assert result.returncode == 1 and "other settings (prompt)" in result.stderr


def test_analyze_json_single_and_many(tmp_path):
    saved = tmp_path / "saved.jsonl"
    saved.write_text('{"id": "1", "output": "标签：抑郁\\n解释：失眠。"}\n{"id": "2", "output": "Label: not depressed"}\n',
                     encoding="utf-8")
    one = run_cli("analyze", "--task", "depression", "--backend", "replay", "--model", str(saved), "--json", "最近失眠")
    assert one.returncode == 0, one.stderr
    document = json.loads(one.stdout)
    assert document["labels"] == ["抑郁"] and document["explanation"] == "失眠。" and "text" not in document
    many = run_cli("analyze", "--task", "depression", "--backend", "replay", "--model", str(saved), "--json", "a", "b")
    assert [json.loads(line)["labels"] for line in many.stdout.splitlines()] == [["抑郁"], ["非抑郁"]]


def test_analyze_output_file_appends_and_resumes(tmp_path):
    out = tmp_path / "pred.jsonl"
    args = ["analyze", "--task", "depression", "--backend", "replay", "--model", "sample:depression.outputs",
            "--input", "sample:depression", "--output", str(out), "--json"]
    first = json.loads(run_cli(*args).stdout)
    assert first["analysed"] == first["posts"] and first["skipped"] == 0
    lines = out.read_text(encoding="utf-8").splitlines()
    out.write_text("\n".join(lines[:10]) + "\n" + lines[10][:15], encoding="utf-8")  # killed mid-write
    second = json.loads(run_cli(*args).stdout)
    assert second["skipped"] == 10 and second["analysed"] == first["posts"] - 10
    ids = [json.loads(line)["id"] for line in out.read_text(encoding="utf-8").splitlines()]
    assert sorted(ids) == sorted(json.loads(l)["id"] for l in lines) and len(ids) == len(set(ids))


@pytest.mark.parametrize("args, message", [
    (["evaluate", "--task", "depresion", "--data", "x.jsonl", "--backend", "replay", "--output-dir", "o"],
     "unknown task 'depresion'. Did you mean 'depression'?"),
    (["analyze", "--task", "depression", "--backend", "replya", "hi"], "unknown backend 'replya'. Did you mean 'replay'?"),
    (["analyze", "--task", "depression", "--backend", "replay", "--model", "sample:depression.outputs",
      "--option", "output_feild=x", "hi"], "no option 'output_feild'. Did you mean 'output_field'?"),
    (["analyze", "--task", "depression", "--backend", "replay", "--model", "sample:depression.outputs",
      "--option", "max_new_tokens=lots", "hi"], "option 'max_new_tokens'"),
    (["analyze", "--task", "depression", "--backend", "replay", "hi"], "needs a model"),
    (["analyze", "--task", "depression", "--backend", "replay", "--model", "sample:depression.outputs"], "no posts"),
    (["analyze", "--task", "depression", "--backend", "replay", "--model", "sample:depression.outputs",
      "--input", "missing.jsonl"], "missing.jsonl: no such file"),
    (["analyze", "--task", "depression", "--backend", "replay", "--model", "sample:depression.outputs", "unknown id"],
     "no saved output for post id '1'"),
])
def test_user_mistakes_give_one_line_and_nonzero_exit(tmp_path, args, message):
    result = run_cli(*args, cwd=tmp_path)
    assert result.returncode == 1
    assert message in result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert result.stdout == ""


def test_malformed_data_file_error(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "好", "label": "抑郁"}\n{"text": "坏", "label": "焦虑"}\n', encoding="utf-8")
    result = run_cli("evaluate", "--task", "depression", "--data", str(bad), "--backend", "replay",
                     "--model", "sample:depression.outputs", "--output-dir", str(tmp_path / "o"))
    assert result.returncode == 1
    assert result.stderr.strip() == (f"mentalglm: error: {bad}:2: field 'label': '焦虑' is not a label of task "
                                     "'depression' (allowed: 抑郁, 非抑郁)")


def test_evaluate_needs_gold_for_every_post(tmp_path, capsys):
    data = tmp_path / "posts.txt"
    data.write_text("一条帖子\n", encoding="utf-8")
    code = main(["evaluate", "--task", "depression", "--data", str(data), "--backend", "replay",
                 "--model", "sample:depression.outputs", "--output-dir", str(tmp_path / "o")])
    assert code == 1 and "needs a gold answer" in capsys.readouterr().err


def test_human_output_shows_label_and_explanation(capsys):
    code = main(["analyze", "--task", "cognitive-distortion", "--backend", "replay",
                 "--model", "sample:cognitive-distortion.outputs", "--input", "sample:cognitive-distortion"])
    out = capsys.readouterr().out
    assert code == 0 and "[cd-001] 标签：" in out and "解释：" in out
