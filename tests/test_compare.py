"""`evaluate` intervals and `mentalglm compare` through the command line, with the replay backend and the samples.

References: the deltas are checked against the two runs' own metrics.json, McNemar against
statsmodels and κ against scikit-learn, all computed here from predictions.jsonl.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from sklearn.metrics import cohen_kappa_score

from conftest import run_cli
from mentalglm.cli import main

SAMPLES = Path(__file__).resolve().parent.parent / "mentalglm" / "samples"
FLIP = {"高自杀风险": "低自杀风险", "低自杀风险": "高自杀风险"}


def _evaluate(out: Path, task: str = "suicide-risk", model: str | None = None, data: str | None = None, *extra):
    result = run_cli("evaluate", "--task", task, "--data", data or f"sample:{task}", "--backend", "replay",
                     "--model", model or f"sample:{task}.outputs", "--output-dir", str(out), "--json", *extra)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def _compare(a: Path, b: Path, *extra) -> dict:
    result = run_cli("compare", str(a), str(b), "--json", *extra)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Run A: the sample outputs. Run B: the same with labels flipped on some posts and one answer made invalid."""
    root = tmp_path_factory.mktemp("compare")
    outputs = _lines(SAMPLES / "suicide-risk.outputs.jsonl")
    changed = []
    for number, record in enumerate(outputs):
        text = record["output"]
        if number % 6 == 0 and text.startswith("标签："):
            label = text[3:].split("\n", 1)[0]
            if label in FLIP:
                record["output"] = text.replace(label, FLIP[label], 1)
                changed.append(record["id"])
        elif number == 7:
            record["output"] = "我不太确定。"
            changed.append(record["id"])
    modified = root / "modified.outputs.jsonl"
    modified.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in outputs), encoding="utf-8")
    a = _evaluate(root / "a")
    b = _evaluate(root / "b", model=str(modified))
    return {"root": root, "a": root / "a", "b": root / "b", "metrics_a": a, "metrics_b": b, "changed": changed}


def test_metrics_json_gives_every_real_valued_headline_metric_an_interval(runs):
    document = runs["metrics_a"]
    metrics, intervals = document["metrics"], document["intervals"]
    assert set(intervals) == {k for k, v in metrics.items() if isinstance(v, float)}
    assert {k: i["method"] for k, i in intervals.items()} == {
        "invalid_rate": "wilson", "accuracy": "wilson", "weighted_f1": "percentile bootstrap",
        "macro_f1": "percentile bootstrap", "micro_f1": "percentile bootstrap",
        "f1[高自杀风险]": "percentile bootstrap"}
    for name, interval in intervals.items():
        assert interval["low"] <= metrics[name] <= interval["high"] and interval["confidence"] == 0.95
    assert document["bootstrap"]["resamples"] == 1000 and document["bootstrap"]["seed"] == 0
    assert document["primary_interval"] == intervals["f1[高自杀风险]"]
    record = json.loads((runs["a"] / "run.json").read_text(encoding="utf-8"))
    assert not {"bootstrap", "seed", "intervals"} & set(record)  # they change no prediction
    report = (runs["a"] / "report.md").read_text(encoding="utf-8")
    weighted = intervals["weighted_f1"]
    assert f"| weighted_f1 | {metrics['weighted_f1']:.4f} | [{weighted['low']:.4f}, {weighted['high']:.4f}] |" in report
    assert "1,000 resamples, seed 0" in report and "Wilson score interval for invalid_rate, accuracy" in report


def test_bootstrap_and_seed_options_rescore_without_touching_the_run(tmp_path, capsys):
    out = tmp_path / "run"
    common = ["evaluate", "--task", "suicide-risk", "--data", "sample:suicide-risk", "--backend", "replay",
              "--model", "sample:suicide-risk.outputs", "--output-dir", str(out), "--quiet"]

    def evaluate(*extra) -> dict:  # in-process: these checks need no fresh interpreter
        assert main([*common, "--json", *extra]) == 0
        return json.loads(capsys.readouterr().out)

    first = evaluate()
    off = evaluate("--bootstrap", "0")  # same folder: it resumes, bootstrap settings are not run settings
    assert off["counts"]["resumed"] == off["counts"]["posts"] and off["metrics"] == first["metrics"]
    assert set(off["intervals"]) == {"invalid_rate", "accuracy"} and off["bootstrap"]["resamples"] == 0
    seeded = evaluate("--bootstrap", "200", "--seed", "3")
    assert seeded["intervals"]["weighted_f1"]["seed"] == 3 and seeded["intervals"]["weighted_f1"]["resamples"] == 200
    assert seeded["intervals"]["weighted_f1"] != first["intervals"]["weighted_f1"]
    assert seeded["intervals"]["accuracy"] == first["intervals"]["accuracy"]  # Wilson: no resampling
    human = run_cli(*common)
    weighted = first["intervals"]["weighted_f1"]
    assert f"{first['metrics']['weighted_f1']:.4f} [{weighted['low']:.4f}, {weighted['high']:.4f}]" in human.stdout
    assert "percentile bootstrap over posts (1,000 resamples, seed 0)" in human.stdout
    bad = run_cli(*common, "--bootstrap", "-5")
    assert bad.returncode != 0 and "expected 0 or more, got -5" in bad.stderr


def test_a_run_compared_with_itself_differs_in_nothing(runs):
    document = _compare(runs["a"], runs["a"])
    assert document["posts"] == runs["metrics_a"]["counts"]["posts"] and document["settings_differ"] == []
    for name, row in document["metrics"].items():
        assert row["delta"] == 0 and row["low"] == 0 and row["high"] == 0, name
    assert document["kappa"]["value"] == pytest.approx(1.0)
    assert document["mcnemar"]["p_value"] == 1.0 and document["mcnemar"]["a_only_correct"] == 0
    assert document["disagreements"] == {"count": 0, "ids": []}
    assert all(row["delta"] == 0 for row in document["per_label"]["labels"].values())


def test_compare_against_a_modified_run_matches_outside_references(runs):
    from statsmodels.stats.contingency_tables import mcnemar

    document = _compare(runs["a"], runs["b"])
    saved_a, saved_b = runs["metrics_a"]["metrics"], runs["metrics_b"]["metrics"]
    for name, row in document["metrics"].items():
        assert row["a"] == saved_a[name] and row["b"] == saved_b[name]  # re-scored exactly as evaluate scored
        assert row["delta"] == pytest.approx(saved_b[name] - saved_a[name], abs=1e-12)
        assert row["low"] <= row["high"]
    assert document["metrics"]["weighted_f1"]["delta"] != 0
    assert document["settings_differ"] and document["settings_differ"][0].startswith("model ")

    a = {p["id"]: p for p in _lines(runs["a"] / "predictions.jsonl")}
    b = {p["id"]: p for p in _lines(runs["b"] / "predictions.jsonl")}
    ids = sorted(a)

    def answer(p):
        return p["labels"][0] if p["valid"] else "<invalid>"

    right_a = [answer(a[i]) == a[i]["gold"][0] for i in ids]
    right_b = [answer(b[i]) == b[i]["gold"][0] for i in ids]
    only_a = sum(x and not y for x, y in zip(right_a, right_b))
    only_b = sum(y and not x for x, y in zip(right_a, right_b))
    test = document["mcnemar"]
    assert (test["a_only_correct"], test["b_only_correct"]) == (only_a, only_b) and only_a + only_b > 0
    table = [[sum(x and y for x, y in zip(right_a, right_b)), only_a],
             [only_b, sum(not x and not y for x, y in zip(right_a, right_b))]]
    assert test["p_value"] == pytest.approx(mcnemar(table, exact=True).pvalue, rel=1e-9)
    kappa = cohen_kappa_score([answer(a[i]) for i in ids], [answer(b[i]) for i in ids])
    assert document["kappa"]["value"] == pytest.approx(kappa, abs=1e-12)
    assert set(document["disagreements"]["ids"]) == {i for i in ids if answer(a[i]) != answer(b[i])}
    assert set(document["disagreements"]["ids"]) <= set(runs["changed"])
    assert set(test["a_only_correct_ids"]) | set(test["b_only_correct_ids"]) <= set(document["disagreements"]["ids"])
    # Never post text: the document holds ids and numbers, not the posts.
    texts = [json.loads(line)["input"] for line in (SAMPLES / "suicide-risk.jsonl").read_text().splitlines()]
    dumped = json.dumps(document, ensure_ascii=False)
    assert not any(text in dumped for text in texts)


def test_compare_b_against_a_mirrors_a_against_b(runs):
    forward, backward = _compare(runs["a"], runs["b"]), _compare(runs["b"], runs["a"])
    for name, row in forward["metrics"].items():
        mirrored = backward["metrics"][name]
        assert mirrored["delta"] == -row["delta"]
        # Same resamples (ids are sorted before resampling), so the interval is the mirror image.
        assert mirrored["low"] == pytest.approx(-row["high"], abs=1e-12)
        assert mirrored["high"] == pytest.approx(-row["low"], abs=1e-12)
    assert backward["mcnemar"]["p_value"] == forward["mcnemar"]["p_value"]


def test_compare_human_output_is_a_table(runs):
    result = run_cli("compare", str(runs["a"]), str(runs["b"]), "--bootstrap", "200", "--seed", "1")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "B − A" in out and "95 % CI" in out and "McNemar (exact)" in out and "Cohen's κ" in out
    assert "weighted_f1" in out and "paired percentile bootstrap over posts, 200 resamples, seed 1" in out
    assert "answers differ on" in out and "高自杀风险" in out


@pytest.mark.parametrize("task", ["cognitive-distortion", "cognitive-pathway", "cognitive-pathway-abcd"])
def test_compare_multi_label_hierarchical_and_extraction_runs_with_themselves(tmp_path, capsys, task):
    abcd = Path(__file__).resolve().parents[1] / "examples" / "tasks" / "cognitive-pathway-abcd.yaml"
    if task == "cognitive-pathway-abcd":
        return _compare_extraction_run_with_itself(tmp_path, capsys, abcd)
    out = tmp_path / task
    code = main(["evaluate", "--task", task, "--data", f"sample:{task}", "--backend", "replay", "--model",
                 f"sample:{task}.outputs", "--output-dir", str(out), "--quiet", "--bootstrap", "200"])
    assert code == 0
    capsys.readouterr()
    assert main(["compare", str(out), str(out), "--json", "--bootstrap", "200"]) == 0
    document = json.loads(capsys.readouterr().out)
    assert document["kind"] == ("multi-label" if task == "cognitive-distortion" else "hierarchical")
    assert all(row["delta"] == 0 and row["low"] == row["high"] == 0 for row in document["metrics"].values())
    assert document["disagreements"]["count"] == 0
    assert document["mcnemar"]["p_value"] == 1.0
    assert all(k is None or k == pytest.approx(1.0) for k in document["kappa"]["per_label"].values())
    assert document["kappa"]["value"] == pytest.approx(1.0)
    if task == "cognitive-pathway":
        assert set(document["per_label"]["labels"]) == {"触发性事件", "认知歪曲", "情绪反应", "驳斥"}


def _compare_extraction_run_with_itself(tmp_path, capsys, abcd):
    data = tmp_path / "abcd.jsonl"
    outputs = tmp_path / "abcd.outputs.jsonl"
    gold = {"诱发事件": "被骂", "信念": "我没用", "结果": "哭", "反驳": "无"}
    data.write_text("".join(json.dumps({"id": str(i), "text": "帖子", "label": gold}, ensure_ascii=False) + "\n"
                            for i in range(6)), encoding="utf-8")
    outputs.write_text("".join(json.dumps({"id": str(i), "output": "诱发事件：被骂\n信念：我没用\n结果：哭\n反驳：无"
                                           if i % 2 else "诱发事件：被骂\n信念：我很好"}, ensure_ascii=False) + "\n"
                               for i in range(6)), encoding="utf-8")
    out = tmp_path / "abcd-run"
    assert main(["evaluate", "--task", str(abcd), "--data", str(data), "--backend", "replay", "--model",
                 str(outputs), "--output-dir", str(out), "--quiet", "--bootstrap", "200"]) == 0
    capsys.readouterr()
    assert main(["compare", str(out), str(out), "--task", str(abcd), "--json", "--bootstrap", "200"]) == 0
    document = json.loads(capsys.readouterr().out)
    assert document["kind"] == "extraction"
    assert all(row["delta"] == 0 and row["low"] == row["high"] == 0 for row in document["metrics"].values())
    assert document["mcnemar"]["p_value"] is None and "skipped" in document["mcnemar"]["note"]
    assert document["kappa"]["value"] is None and set(document["per_label"]["labels"]) == {
        "诱发事件", "信念", "结果", "反驳"}


def _one_line_error(result, *words):
    assert result.returncode == 1 and result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mentalglm: error: "), result.stderr
    for word in words:
        assert word in lines[0]


def test_compare_refuses_runs_that_are_not_on_the_same_data(runs, tmp_path):
    other_task = tmp_path / "depression"
    _evaluate(other_task, "depression", None, None, "--bootstrap", "0")
    _one_line_error(run_cli("compare", str(runs["a"]), str(other_task)), "different tasks")

    posts = _lines(SAMPLES / "suicide-risk.jsonl")
    subset = tmp_path / "subset.jsonl"
    subset.write_text("".join(json.dumps(p, ensure_ascii=False) + "\n" for p in posts[:-3]), encoding="utf-8")
    fewer = tmp_path / "fewer"
    _evaluate(fewer, "suicide-risk", None, str(subset), "--bootstrap", "0")
    _one_line_error(run_cli("compare", str(runs["a"]), str(fewer)), "different posts", "3 only in")

    regolded = tmp_path / "regolded"
    shutil.copytree(runs["a"], regolded)
    predictions = _lines(regolded / "predictions.jsonl")
    predictions[0]["gold"] = [FLIP[predictions[0]["gold"][0]]]
    (regolded / "predictions.jsonl").write_text(
        "".join(json.dumps(p, ensure_ascii=False) + "\n" for p in predictions), encoding="utf-8")
    _one_line_error(run_cli("compare", str(runs["a"]), str(regolded)), "different gold answers", predictions[0]["id"])

    _one_line_error(run_cli("compare", str(runs["a"]), str(tmp_path / "missing")), "not an evaluation folder")


def test_runs_made_with_a_task_file_need_it_again(tmp_path, capsys):
    example = Path(__file__).resolve().parent.parent / "examples" / "mentalglm-loneliness" / "mentalglm_loneliness"
    if not example.is_dir():
        pytest.skip("the example plugin is not in this checkout")
    task_file = str(example / "loneliness.yaml")
    out = tmp_path / "run"
    assert main(["evaluate", "--task", task_file, "--data", str(example / "data" / "posts.jsonl"), "--backend",
                 "replay", "--model", str(example / "data" / "outputs.jsonl"), "--output-dir", str(out),
                 "--quiet", "--bootstrap", "100"]) == 0
    capsys.readouterr()
    assert main(["compare", str(out), str(out)]) == 1
    assert "give it with --task FILE" in capsys.readouterr().err
    assert main(["compare", str(out), str(out), "--task", task_file, "--json", "--bootstrap", "100"]) == 0
    document = json.loads(capsys.readouterr().out)
    assert document["disagreements"]["count"] == 0 and document["mcnemar"]["p_value"] == 1.0
