"""The command line as a user runs it: JSON contracts, exit codes and one-line errors."""

from __future__ import annotations

import json

import pytest

from conftest import run_cli
from mentalglm.cli import main


def test_tasks_json_lists_four_tasks_with_kind_and_labels():
    result = run_cli("tasks", "--json")
    assert result.returncode == 0, result.stderr
    tasks = {t["name"]: t for t in json.loads(result.stdout)["tasks"]}
    assert {n: t["kind"] for n, t in tasks.items()} == {
        "depression": "single-label", "suicide-risk": "single-label",
        "cognitive-distortion": "multi-label", "cognitive-pathway": "hierarchical"}
    assert [l["name"] for l in tasks["suicide-risk"]["labels"]] == ["高自杀风险", "低自杀风险"]
    assert len(tasks["cognitive-distortion"]["labels"]) == 12
    parts = tasks["cognitive-pathway"]["labels"]
    assert [p["name"] for p in parts] == ["触发性事件", "认知歪曲", "情绪反应", "驳斥"]
    assert [len(p["children"]) for p in parts] == [5, 10, 2, 2]  # 19 sub-categories (Jiang et al. 2024)


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
    assert result.returncode == 1 and 'other settings: prompt (was "glm4-chat", now "plain")' in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_analyze_json_single_and_many(tmp_path):
    saved = tmp_path / "saved.jsonl"
    saved.write_text('{"id": "1", "output": "标签：抑郁\\n解释：失眠。"}\n'
                     '{"id": "2", "output": "Label: not depressed"}\n',
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
    (["analyze", "--task", "depression", "--backend", "replya", "hi"],
     "unknown backend 'replya'. Did you mean 'replay'?"),
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


# -- a new user's first hour ----------------------------------------------------------------------
ANXIETY = """\
name: anxiety
kind: single-label
description: anxiety (a task file, no plugin)
instruction: |
  判断帖子发布者是否有焦虑。按以下格式回答：
  标签：焦虑 或 非焦虑
  解释：说明你的判断依据。
labels:
  - name: 焦虑
    aliases: [anxious, anxiety]
  - name: 非焦虑
    aliases: [not anxious]
"""


def test_a_task_file_works_wherever_a_task_name_goes(tmp_path):
    task_file = tmp_path / "anxiety.yaml"
    task_file.write_text(ANXIETY, encoding="utf-8")
    (tmp_path / "posts.jsonl").write_text('{"id": "1", "text": "明天面试，心慌得睡不着。", "label": "焦虑"}\n'
                                          '{"id": "2", "text": "周末去海边玩。", "label": "非焦虑"}\n',
                                          encoding="utf-8")
    (tmp_path / "saved.jsonl").write_text('{"id": "1", "output": "标签：焦虑\\n解释：心慌。"}\n'
                                          '{"id": "2", "output": "标签：焦虑\\n解释：无。"}\n', encoding="utf-8")
    checked = run_cli("tasks", "--validate", str(task_file))
    assert checked.returncode == 0 and "task 'anxiety' (single-label): 焦虑、非焦虑" in checked.stdout
    result = run_cli("evaluate", "--task", str(task_file), "--data", str(tmp_path / "posts.jsonl"), "--backend",
                     "replay", "--model", str(tmp_path / "saved.jsonl"), "--output-dir", str(tmp_path / "run"),
                     "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["metrics"]["accuracy"] == 0.5


def test_validate_names_the_broken_task_file_in_one_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: bad\nkind: single-label\ninstruction: 判断。\nlabels: [只有一个]\n", encoding="utf-8")
    result = run_cli("tasks", "--validate", str(bad))
    assert result.returncode == 1 and str(bad) in result.stderr and "at least 2 labels" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    missing = run_cli("analyze", "--task", str(tmp_path / "nope.yaml"), "帖子")
    assert missing.returncode == 1 and "nope.yaml" in missing.stderr and "Traceback" not in missing.stderr


def test_verbose_is_accepted_after_the_sub_command_too():
    for args in (["-v", "tasks"], ["tasks", "-v"], ["tasks", "-vv", "--json"]):
        assert run_cli(*args).returncode == 0, args


def test_cli_replay_reports_every_missing_id_not_just_the_first_batch(tmp_path):
    posts = tmp_path / "posts.txt"
    posts.write_text("".join(f"帖子{i}\n" for i in range(20)), encoding="utf-8")
    saved = tmp_path / "saved.jsonl"
    saved.write_text('{"id": "1", "output": "标签：抑郁"}\n', encoding="utf-8")
    result = run_cli("analyze", "--task", "depression", "--backend", "replay", "--model", str(saved),
                     "--input", str(posts), "--output", str(tmp_path / "out.jsonl"))
    assert result.returncode == 1 and "no saved output for post id '2' (and 18 more)" in result.stderr
    assert not (tmp_path / "out.jsonl").exists() or not (tmp_path / "out.jsonl").read_text().strip()


def test_strict_format_refuses_answers_without_a_label_line_and_runs_count_them(tmp_path):
    saved = tmp_path / "saved.jsonl"
    saved.write_text('{"id": "1", "output": "我认为是抑郁。"}\n{"id": "2", "output": "标签：非抑郁"}\n',
                     encoding="utf-8")
    posts = tmp_path / "posts.jsonl"
    posts.write_text('{"id": "1", "text": "失眠", "label": "抑郁"}\n{"id": "2", "text": "爬山", "label": "非抑郁"}\n',
                     encoding="utf-8")
    common = ["evaluate", "--task", "depression", "--data", str(posts), "--backend", "replay", "--model", str(saved),
              "--json"]
    lenient = json.loads(run_cli(*common, "--output-dir", str(tmp_path / "a")).stdout)
    strict = json.loads(run_cli(*common, "--output-dir", str(tmp_path / "b"), "--strict-format").stdout)
    assert (lenient["counts"]["invalid"], lenient["counts"]["without_label_line"]) == (0, 1)
    assert (strict["counts"]["invalid"], strict["counts"]["without_label_line"]) == (1, 0)
    assert strict["strict_format"] is True and lenient["strict_format"] is False


def _clashing_and_broken_plugins():
    from mentalglm import Label, SingleLabelTask, hookimpl
    from mentalglm.core.plugin_manager import get_plugin_manager, reset_plugin_manager

    class Clash:
        @hookimpl
        def register_tasks(self, register):
            register(SingleLabelTask(name="depression", instruction="x", labels=[Label("a"), Label("b")]))

    class BrokenHook:
        @hookimpl
        def on_prediction(self, prediction, task):
            raise RuntimeError("queue is down")

    reset_plugin_manager()
    manager = get_plugin_manager()
    manager.register(Clash(), name="clash-plugin")
    manager.register(BrokenHook(), name="broken-hook")
    return reset_plugin_manager


def test_a_duplicate_task_name_breaks_only_that_task_and_plugins_reports_it(capsys, monkeypatch):
    monkeypatch.setenv("MENTALGLM_LOAD_PLUGINS", "")
    reset = _clashing_and_broken_plugins()
    try:
        assert main(["plugins", "--json"]) == 0
        assert json.loads(capsys.readouterr().out)["conflicts"] == [
            "task 'depression' is registered by plugin 'mentalglm.tasks' and plugin 'clash-plugin'"]
        assert main(["tasks", "--json"]) == 0
        assert "suicide-risk" in capsys.readouterr().out
        assert main(["analyze", "--task", "depression", "--backend", "replay", "--model", "sample:depression.outputs",
                     "--input", "sample:depression"]) == 1
        error = capsys.readouterr().err
        assert "clash-plugin" in error and len(error.strip().splitlines()) == 1
    finally:
        reset()


def test_a_raising_on_prediction_hook_warns_and_the_predictions_are_written(capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("MENTALGLM_LOAD_PLUGINS", "")
    reset = _clashing_and_broken_plugins()
    try:
        with pytest.warns(UserWarning, match="broken-hook.*queue is down"):
            code = main(["analyze", "--task", "suicide-risk", "--backend", "replay", "--model",
                         "sample:suicide-risk.outputs", "--input", "sample:suicide-risk", "--output",
                         str(tmp_path / "out.jsonl"), "--quiet"])
        assert code == 0
        assert len((tmp_path / "out.jsonl").read_text(encoding="utf-8").splitlines()) > 50
    finally:
        reset()


def test_analyze_output_keeps_a_run_record_and_refuses_other_settings(tmp_path):
    out = tmp_path / "out.jsonl"
    args = ["analyze", "--task", "depression", "--backend", "replay", "--model", "sample:depression.outputs",
            "--input", "sample:depression", "--output", str(out)]
    assert run_cli(*args).returncode == 0
    assert json.loads((tmp_path / "out.jsonl.run.json").read_text(encoding="utf-8"))["redact"] is False
    result = run_cli(*args, "--redact")
    assert result.returncode == 1 and "redact (was false, now true)" in result.stderr
