"""The expert-review round trip without a server: export, import of hand-made Label Studio exports, agreement."""

from __future__ import annotations

import json
import math
import xml.etree.ElementTree as ET

import numpy as np
import pytest
from sklearn.metrics import cohen_kappa_score

from mentalglm.cli import main
from mentalglm.core.errors import MentalGLMError
from mentalglm.core.plugin_manager import get_plugin_manager
from mentalglm.core.prediction import posts_digest
from mentalglm.data.readers import iter_records, read_posts
from mentalglm.evaluation.statistics import cohen_kappa
from mentalglm.review.agreement import krippendorff_alpha, majority_labels, review_stats
from mentalglm.review.label_studio import (
    DIMENSIONS,
    Scale,
    build_tasks,
    labeling_config,
    place_evidence,
    probabilities_of,
    read_export,
    review_priority,
)

LABELS = ["高自杀风险", "低自杀风险"]
POSTS = [
    {"id": "p1", "text": "今天心情还行，和朋友吃了饭。", "label": "低自杀风险"},
    {"id": "p2", "text": "我不想活了，药已经攒好了。电话 138-1234-5678", "label": "高自杀风险"},
    {"id": "p3", "text": "作业好多，想死😂", "label": "低自杀风险"},
    {"id": "p4", "text": "最近总是失眠，觉得活着没意思。", "label": "高自杀风险"},
]


def _row(post_id, labels, probabilities=None, **extra):
    row = {"id": post_id, "task": "suicide-risk", "labels": labels, "explanation": f"{post_id} 的解释。",
           "valid": bool(labels), "output": "", "problem": None if labels else "no label", "scores": None}
    if probabilities is not None:
        row["probabilities"], row["needs_review"] = probabilities, extra.pop("needs_review", False)
    row.update(extra)
    return row


@pytest.fixture
def run_dir(tmp_path):
    """An evaluation folder made by hand: run.json naming a posts file, and predictions with probabilities."""
    data = tmp_path / "posts.jsonl"
    data.write_text("".join(json.dumps(p, ensure_ascii=False) + "\n" for p in POSTS), encoding="utf-8")
    task = get_plugin_manager().task("suicide-risk")
    run = tmp_path / "run"
    run.mkdir()
    (run / "run.json").write_text(json.dumps({"task": "suicide-risk", "backend": "llamacpp",
                                              "model": "/home/someone/models/m.gguf", "data": str(data),
                                              "posts_sha256": posts_digest(read_posts(data, task))}))
    rows = [_row("p1", ["低自杀风险"], {"高自杀风险": 0.05, "低自杀风险": 0.95}),
            _row("p2", ["高自杀风险"], {"高自杀风险": 0.6, "低自杀风险": 0.4}, needs_review=True,
                 evidence=[{"quote": "药已经攒好了", "start": 6, "end": 12, "grounded": True},
                           {"quote": "我要离开", "start": None, "end": None, "grounded": False}]),
            _row("p3", ["低自杀风险"], {"高自杀风险": 0.3, "低自杀风险": 0.7}),
            _row("p4", [], None)]
    (run / "predictions.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return run


# -- export ---------------------------------------------------------------------------------
def test_scale_parses_and_refuses_nonsense():
    assert Scale.parse("1-5") == Scale(1, 5) and Scale.parse("0-4").values == [0, 1, 2, 3, 4]
    assert Scale.parse("1-5").as_rating and not Scale.parse("0-4").as_rating
    for bad in ("5-1", "1", "a-b", "1-20", "3-3"):
        with pytest.raises(MentalGLMError, match="--scale"):
            Scale.parse(bad)


def test_labeling_config_asks_for_the_label_and_each_dimension():
    root = ET.fromstring(labeling_config(LABELS))
    label = root.find("Choices[@name='label']")
    assert [c.get("value") for c in label.findall("Choice")] == LABELS and label.get("choice") == "single"
    assert {r.get("name"): r.get("maxRating") for r in root.findall("Rating")} == {d: "5" for d in DIMENSIONS}
    other = ET.fromstring(labeling_config(["a", "b", "c"], multiple=True, scale=Scale(0, 4)))
    assert other.find("Choices[@name='label']").get("choice") == "multiple"
    fluency = other.find("Choices[@name='fluency']")
    assert [c.get("value") for c in fluency.findall("Choice")] == ["0", "1", "2", "3", "4"]
    assert not other.findall("Rating")


def test_review_priority_is_risk_times_normalised_entropy():
    p = {"高自杀风险": 0.6, "低自杀风险": 0.4}
    entropy = -(0.6 * math.log(0.6) + 0.4 * math.log(0.4)) / math.log(2)
    assert review_priority(p, "高自杀风险") == pytest.approx(0.6 * entropy)
    assert review_priority({"a": 1.0, "b": 0.0}, "a") == 0
    assert review_priority(p, None) == pytest.approx(entropy)
    assert review_priority(None, "高自杀风险") is None
    # uncalibrated score mode: a softmax of the log-likelihoods
    assert probabilities_of({"scores": {"高自杀风险": math.log(3), "低自杀风险": 0.0}}, LABELS) == pytest.approx(
        {"高自杀风险": 0.75, "低自杀风险": 0.25})
    assert probabilities_of({"scores": None}, LABELS) is None


def test_place_evidence_keeps_right_offsets_finds_moved_quotes_and_reports_the_rest():
    text = "我不想活了，药已经攒好了。"
    spans, missing = place_evidence([{"quote": "药已经攒好了", "start": 6, "end": 12},
                                     {"quote": "不想活了", "start": 0, "end": 3},  # stale offsets: found again
                                     {"quote": "ＡＢ", "start": None, "end": None},
                                     {"quote": "我要离开", "start": 0, "end": 4}], text)
    assert [(s["start"], s["end"], s["text"]) for s in spans] == [(6, 12, "药已经攒好了"), (1, 5, "不想活了")]
    assert missing == ["ＡＢ", "我要离开"]
    assert place_evidence(None, text) == ([], [])


def test_export_orders_by_risk_times_uncertainty_redacts_and_writes_the_config(run_dir, tmp_path, capsys):
    out = tmp_path / "out" / "tasks.json"
    assert main(["review", "export", str(run_dir), "--to", "label-studio", "-o", str(out), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["tasks"] == 4 and summary["evidence_spans"] == 1 and summary["evidence_not_found"] == 1
    assert summary["risk_label"] == "高自杀风险" and summary["redacted_items"] == 1
    tasks = json.loads(out.read_text())
    # p2 (0.6 × H) > p3 (0.3 × H) > p1 (0.05 × H); p4 has no probabilities and comes last
    assert [t["data"]["post_id"] for t in tasks] == ["p2", "p3", "p1", "p4"]
    assert [t["data"]["rank"] for t in tasks] == [1, 2, 3, 4]
    first = tasks[0]
    assert "[PHONE]" in first["data"]["text"] and "138" not in first["data"]["text"]
    assert first["data"]["needs_review"] and first["data"]["evidence_not_found"] == ["我要离开"]
    results = {r["from_name"]: r for r in first["predictions"][0]["result"]}
    assert results["label"]["value"]["choices"] == ["高自杀风险"]
    assert results["explanation_corrected"]["value"]["text"] == ["p2 的解释。"]
    span = results["evidence"]["value"]
    assert first["data"]["text"][span["start"]:span["end"]] == "药已经攒好了" == span["text"]
    assert first["predictions"][0]["model_version"] == "llamacpp:m.gguf"  # no local path leaves the machine
    assert first["predictions"][0]["score"] == pytest.approx(0.6)
    assert tasks[3]["predictions"][0]["result"][0]["from_name"] == "explanation_corrected"  # no label to confirm
    config = ET.fromstring((tmp_path / "out" / "tasks.label_config.xml").read_text())
    assert config.find("Choices[@name='label']") is not None


def test_export_without_redaction_and_with_a_config_path(run_dir, tmp_path, capsys):
    out, config = tmp_path / "t.json", tmp_path / "c.xml"
    assert main(["review", "export", str(run_dir), "-o", str(out), "--no-redact", "--config-out", str(config),
                 "--scale", "0-4"]) == 0
    assert "NOT redacted" in capsys.readouterr().out
    texts = {t["data"]["post_id"]: t["data"]["text"] for t in json.loads(out.read_text())}
    assert "138-1234-5678" in texts["p2"]
    assert ET.fromstring(config.read_text()).find("Choices[@name='overall']") is not None


def test_export_reads_the_posts_the_run_was_made_on(run_dir, tmp_path, capsys):
    other = tmp_path / "other.jsonl"
    other.write_text("".join(json.dumps({**p, "text": p["text"] + "！"}, ensure_ascii=False) + "\n" for p in POSTS))
    assert main(["review", "export", str(run_dir), "-o", str(tmp_path / "t.json"), "--data", str(other)]) == 1
    assert "differ from those the run was made on" in capsys.readouterr().err
    record = json.loads((run_dir / "run.json").read_text())
    moved = tmp_path / "moved.jsonl"
    moved.write_bytes((tmp_path / "posts.jsonl").read_bytes())
    record["data"] = None
    (run_dir / "run.json").write_text(json.dumps(record))
    assert main(["review", "export", str(run_dir), "-o", str(tmp_path / "t.json")]) == 1
    error = capsys.readouterr().err
    assert "give --data" in error and error.count("\n") == 1
    assert main(["review", "export", str(run_dir), "-o", str(tmp_path / "t.json"), "--data", str(moved)]) == 0


def test_build_tasks_refuses_a_prediction_without_its_post():
    with pytest.raises(MentalGLMError, match="no post in the run's data"):
        build_tasks([_row("x", ["低自杀风险"])], {}, task_name="suicide-risk", label_names=LABELS)


# -- import ---------------------------------------------------------------------------------
def _task(post_id, annotations, *, model=("低自杀风险",), explanation="模型解释", drafts=(), task_id=None):
    return {"id": task_id, "annotations": annotations, "drafts": list(drafts),
            "data": {"post_id": post_id, "text": f"{post_id} 的帖子", "task": "suicide-risk", "label_set": LABELS,
                     "scale": "1-5", "model_labels": list(model), "explanation": explanation}}


def _annotation(annotation_id, reviewer, label, ratings=(4, 4, 4, 4), *, explanation=None, cancelled=False,
                extra=()):
    result = [{"from_name": "label", "to_name": "post", "type": "choices", "value": {"choices": [label]}}] \
        if label else []
    result += [{"from_name": name, "to_name": "explanation", "type": "rating", "value": {"rating": value}}
               for name, value in zip(DIMENSIONS, ratings) if value is not None]
    if explanation is not None:
        result.append({"from_name": "explanation_corrected", "to_name": "post", "type": "textarea",
                       "value": {"text": [explanation]}})
    return {"id": annotation_id, "completed_by": reviewer, "result": result + list(extra), "was_cancelled": cancelled}


def _export():
    return [
        _task("p1", [_annotation(1, 1, "低自杀风险", (5, 4, 4, 4)), _annotation(2, 2, "低自杀风险", (4, 4, 3, 4))],
              task_id=11),
        _task("p2", [_annotation(3, 1, "高自杀风险", (3, 2, 2, 2), explanation="改过的解释"),
                     _annotation(4, {"id": 2, "email": "b@example.com"}, "高自杀风险", (3, 3, 2, 2)),
                     _annotation(5, 3, None, (None,) * 4, cancelled=True)], drafts=[{"id": 9}], task_id=12),
        _task("p3", [_annotation(6, 1, "可能有风险"),
                     _annotation(7, 2, "低自杀风险",
                                 extra=[{"from_name": "my_extra", "type": "choices", "value": {"choices": ["x"]}}])],
              task_id=13),
        _task("p4", [], task_id=14),
    ]


def test_import_reads_every_annotation_and_reports_what_it_sets_aside():
    records, summary = read_export(_export(), "export.json")
    assert len(records) == 6 and summary.annotations == 6 and summary.cancelled == 1 and summary.drafts == 1
    assert summary.tasks == 4 and summary.tasks_without_annotations == 1
    assert summary.unknown_labels == [{"task": 3, "post_id": "p3", "reviewer": "user 1", "value": "可能有风险"}]
    assert summary.unrecognised_controls == {"my_extra": 1} and summary.without_label == 1
    by_id = {r["annotation_id"]: r for r in records}
    assert by_id[1]["reviewer"] == "user 1" and by_id[1]["verdict"] == "confirmed"
    assert by_id[1]["ratings"] == {"fluency": 5, "completeness": 4, "reliability": 4, "overall": 4}
    assert by_id[3]["verdict"] == "corrected" and by_id[3]["explanation"] == "改过的解释"
    assert by_id[3]["explanation_edited"] and by_id[3]["ls_task_id"] == 12
    assert by_id[4]["reviewer"] == "b@example.com" and by_id[4]["reviewer_id"] == 2
    assert by_id[6]["labels"] == [] and by_id[6]["unknown_labels"] == ["可能有风险"] and by_id[6]["verdict"] == "none"
    assert by_id[7]["other"] == {"my_extra": [{"choices": ["x"]}]}


@pytest.mark.parametrize("document, message", [
    ({"tasks": []}, "not a Label Studio JSON export"),
    ([{"post_id": "p1", "label": "x"}], "task 1: field 'data': missing: this looks like a JSON_MIN export"),
    ([{"data": {"text": "t"}}], "task 1: field 'data.post_id': missing"),
    ([{"id": 5, "data": {"post_id": "p", "label_set": LABELS}, "annotations": {}}],
     "task 1 (Label Studio id 5): field 'annotations': not a list"),
    ([_task("p", [{"id": 1, "completed_by": 1, "result": "x"}])], "task 1: annotation 1: field 'result'"),
    ([_task("p", [_annotation(1, 1, "低自杀风险", (9, 4, 4, 4))])], "field 'result.fluency': rating 9 is outside"),
    ([_task("p", [{"id": 1, "result": []}])], "field 'completed_by': missing"),
])
def test_import_refuses_a_malformed_export_in_one_line(tmp_path, capsys, document, message):
    path = tmp_path / "export.json"
    path.write_text(json.dumps(document, ensure_ascii=False), encoding="utf-8")
    assert main(["review", "import", str(path), "-o", str(tmp_path / "r.jsonl")]) == 1
    error = capsys.readouterr().err
    assert message in error and str(path) in error and error.count("\n") == 1


def test_import_cli_writes_records_and_training_records(tmp_path, capsys):
    path = tmp_path / "export.json"
    path.write_text(json.dumps(_export(), ensure_ascii=False), encoding="utf-8")
    reviewed, train = tmp_path / "reviewed.jsonl", tmp_path / "train.jsonl"
    assert main(["review", "import", str(path), "-o", str(reviewed), "--records", str(train)]) == 0
    captured = capsys.readouterr()
    assert "6 reviews of 3 of 4 tasks" in captured.out and "1 cancelled" in captured.out
    assert "'可能有风险' is not one of the task's" in captured.err and "my_extra" in captured.err
    assert len(reviewed.read_text().splitlines()) == 6
    task = get_plugin_manager().task("suicide-risk")
    records = {r.id: r for r in iter_records(train, task)}
    # p1: both confirmed the model, its explanation kept; p2: corrected, the reviewer's explanation;
    # p3: tie between an unknown label (no vote) and 低自杀风险 → 低自杀风险
    assert records["p1"].output == "标签：低自杀风险\n解释：模型解释"
    assert records["p2"].output == "标签：高自杀风险\n解释：改过的解释" and records["p2"].input == "p2 的帖子"
    assert records["p3"].output == "标签：低自杀风险\n解释：模型解释"
    assert task.gold_from_output(records["p2"].output) == ("高自杀风险",)


# -- agreement ------------------------------------------------------------------------------
# Krippendorff (2011), "Computing Krippendorff's Alpha-Reliability", the worked example with
# missing data: 4 observers, 12 units; α = 0.743 (nominal), 0.815 (ordinal), 0.849 (interval).
KRIPPENDORFF_2011 = [
    [1, 2, 3, 3, 2, 1, 4, 1, 2, None, None, None],
    [1, 2, 3, 3, 2, 2, 4, 1, 2, 5, None, 3],
    [None, 3, 3, 3, 2, 3, 4, 2, 2, 5, 1, None],
    [1, 2, 3, 3, 2, 4, 4, 1, 2, 5, 1, None],
]


def _units(matrix):
    return {f"u{j}": {f"r{i}": row[j] for i, row in enumerate(matrix) if row[j] is not None}
            for j in range(len(matrix[0]))}


def test_krippendorff_alpha_matches_the_published_worked_example():
    units = _units(KRIPPENDORFF_2011)
    assert krippendorff_alpha(units, level="nominal") == pytest.approx(0.743, abs=5e-4)
    assert krippendorff_alpha(units, level="ordinal", domain=[1, 2, 3, 4, 5]) == pytest.approx(0.815, abs=5e-4)
    assert krippendorff_alpha(units, level="interval") == pytest.approx(0.849, abs=5e-4)
    assert krippendorff_alpha({"u": {"a": 3, "b": 3}}, level="ordinal", domain=[1, 2, 3]) is None


def test_the_hand_count_of_alpha_matches_the_published_worked_example_too():
    """The hand count the Label Studio round trip checks α against is itself checked on the published example."""
    from alpha_by_hand import alpha_by_hand

    units = _units(KRIPPENDORFF_2011)
    assert alpha_by_hand(units, "nominal") == pytest.approx(0.743, abs=5e-4)
    assert alpha_by_hand(units, "ordinal", [1, 2, 3, 4, 5]) == pytest.approx(0.815, abs=5e-4)
    assert alpha_by_hand(units, "interval") == pytest.approx(0.849, abs=5e-4)
    rng = np.random.default_rng(11)  # and on random ratings with gaps, to the package's precision
    for _ in range(20):
        units = {f"u{j}": {f"r{i}": int(rng.integers(1, 6)) for i in range(4) if rng.random() < 0.8}
                 for j in range(15)}
        assert alpha_by_hand(units, "ordinal", [1, 2, 3, 4, 5]) == pytest.approx(
            krippendorff_alpha(units, level="ordinal", domain=[1, 2, 3, 4, 5]), abs=1e-9)


def test_cohen_kappa_is_sklearns():
    rng = np.random.default_rng(3)
    a, b = list(rng.integers(1, 6, 40)), list(rng.integers(1, 6, 40))
    assert cohen_kappa(a, b) == pytest.approx(cohen_kappa_score(a, b))
    assert cohen_kappa(a, b, weights="quadratic", labels=[1, 2, 3, 4, 5]) == pytest.approx(
        cohen_kappa_score(a, b, weights="quadratic", labels=[1, 2, 3, 4, 5]))
    assert cohen_kappa(["x", "x"], ["x", "x"]) is None and cohen_kappa([], []) is None


def _records(matrix, *, dimension="overall"):
    """Review records whose ``dimension`` ratings are the matrix (rater × unit), labels from the rating's parity."""
    records = []
    for i, row in enumerate(matrix):
        for j, value in enumerate(row):
            if value is not None:
                records.append({"post_id": f"u{j}", "reviewer": f"r{i}", "annotation_id": i * 100 + j,
                                "labels": [LABELS[value % 2]], "model_labels": [LABELS[0]],
                                "ratings": {dimension: value}, "scale": [1, 5], "verdict": "confirmed"})
    return records


def test_review_stats_uses_alpha_for_more_than_two_reviewers():
    document = review_stats(_records(KRIPPENDORFF_2011), resamples=200)
    overall = document["agreement"]["overall"]
    assert overall["primary"] == "krippendorff_alpha" and overall["reviewers"] == 4
    assert overall["krippendorff_alpha"] == pytest.approx(0.8154, abs=1e-4)
    assert document["agreement"]["fluency"]["posts"] == 0 and document["agreement"]["fluency"]["krippendorff_alpha"] \
        is None
    values = [v for row in KRIPPENDORFF_2011 for v in row if v is not None]
    rating = document["ratings"]["overall"]
    assert rating["mean"] == pytest.approx(sum(values) / len(values)) and rating["ratings"] == len(values)
    assert rating["interval"]["low"] <= rating["mean"] <= rating["interval"]["high"]


def test_review_stats_for_two_reviewers_matches_sklearn_and_scores_the_model():
    rng = np.random.default_rng(7)
    first, second = rng.integers(1, 6, 30), rng.integers(1, 6, 30)
    records = _records([list(map(int, first)), list(map(int, second))])
    document = review_stats(records, resamples=0)
    overall = document["agreement"]["overall"]
    assert overall["primary"] == "cohen_kappa"
    assert overall["cohen_kappa"] == pytest.approx(cohen_kappa_score(first, second))
    assert overall["cohen_kappa_quadratic"] == pytest.approx(
        cohen_kappa_score(first, second, weights="quadratic", labels=[1, 2, 3, 4, 5]))
    label = document["agreement"]["label"]
    assert label["cohen_kappa"] == pytest.approx(cohen_kappa_score([LABELS[v % 2] for v in first],
                                                                   [LABELS[v % 2] for v in second]))
    versus = document["model_vs_expert"]
    agreeing = [j for j in range(30) if first[j] % 2 == second[j] % 2]
    assert versus["posts"] == len(agreeing) and len(versus["ties"]) == 30 - len(agreeing)
    assert versus["accuracy"] == pytest.approx(sum(first[j] % 2 == 0 for j in agreeing) / len(agreeing))
    assert document["ratings"]["overall"]["interval"] is None  # --bootstrap 0


def test_majority_reports_ties_and_later_reviews_replace_earlier_ones():
    records = [{"post_id": "a", "reviewer": "x", "annotation_id": 1, "labels": ["低自杀风险"]},
               {"post_id": "a", "reviewer": "x", "annotation_id": 2, "labels": ["高自杀风险"]},
               {"post_id": "a", "reviewer": "y", "annotation_id": 3, "labels": ["高自杀风险"]},
               {"post_id": "b", "reviewer": "x", "annotation_id": 4, "labels": ["高自杀风险"]},
               {"post_id": "b", "reviewer": "y", "annotation_id": 5, "labels": ["低自杀风险"]}]
    document = review_stats(records, resamples=0)
    assert document["duplicates"] == 1 and document["reviews"] == 4
    from mentalglm.review.agreement import latest_reviews

    majority, ties = majority_labels(latest_reviews(records)[0])
    assert majority == {"a": ["高自杀风险"]} and ties == ["b"]


def test_stats_cli_from_an_import_and_the_run_predictions(run_dir, tmp_path, capsys):
    export = [_task(p, [_annotation(1, 1, "高自杀风险", (4, 4, 4, 4)), _annotation(2, 2, "高自杀风险", (5, 4, 3, 4))])
              for p in ("p1", "p2")]
    path, reviewed = tmp_path / "export.json", tmp_path / "reviewed.jsonl"
    path.write_text(json.dumps(export, ensure_ascii=False), encoding="utf-8")
    assert main(["review", "import", str(path), "-o", str(reviewed)]) == 0
    capsys.readouterr()
    assert main(["review", "stats", str(reviewed), "--predictions", str(run_dir), "--json"]) == 0
    document = json.loads(capsys.readouterr().out)
    assert document["model_vs_expert"]["posts"] == 2 and document["model_vs_expert"]["accuracy"] == 0.5  # p2 right
    assert document["ratings"]["fluency"]["mean"] == 4.5
    assert main(["review", "stats", str(reviewed)]) == 0
    shown = capsys.readouterr().out
    assert "4 reviews of 2 posts by 2 reviewers" in shown and "fluency" in shown
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"post_id": "p1"}\n')
    assert main(["review", "stats", str(bad)]) == 1
    assert "bad.jsonl:1: field 'reviewer': missing" in capsys.readouterr().err


# -- reviewed labels as gold ----------------------------------------------------------------
def test_evaluate_with_reviewed_gold(tmp_path, capsys):
    reviewed = tmp_path / "reviewed.jsonl"
    rows = [{"post_id": "sui-001", "reviewer": "x", "annotation_id": 1, "labels": ["低自杀风险"]},
            {"post_id": "sui-001", "reviewer": "y", "annotation_id": 2, "labels": ["低自杀风险"]},
            {"post_id": "sui-002", "reviewer": "x", "annotation_id": 3, "labels": ["低自杀风险"]},
            {"post_id": "sui-003", "reviewer": "x", "annotation_id": 4, "labels": ["高自杀风险"]},
            {"post_id": "sui-003", "reviewer": "y", "annotation_id": 5, "labels": ["低自杀风险"]}]
    reviewed.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    out = tmp_path / "run"
    assert main(["evaluate", "--task", "suicide-risk", "--backend", "replay", "--model", "sample:suicide-risk.outputs",
                 "--data", "sample:suicide-risk", "--output-dir", str(out), "--gold", str(reviewed), "--quiet",
                 "--bootstrap", "0", "--json"]) == 0
    captured = capsys.readouterr()
    document = json.loads(captured.out)
    assert document["counts"]["posts"] == 2
    assert "2 reviewed posts (1 relabelled)" in captured.err and "1 tied posts left out: sui-003" in captured.err
    golds = {json.loads(line)["id"]: json.loads(line)["gold"] for line in (out / "predictions.jsonl").open()}
    assert golds == {"sui-001": ["低自杀风险"], "sui-002": ["低自杀风险"]}
    bad = tmp_path / "other.jsonl"
    bad.write_text(json.dumps({"post_id": "sui-001", "reviewer": "x", "labels": ["抑郁"]}, ensure_ascii=False) + "\n")
    assert main(["evaluate", "--task", "suicide-risk", "--backend", "replay", "--model", "sample:suicide-risk.outputs",
                 "--data", "sample:suicide-risk", "--output-dir", str(tmp_path / "run2"), "--gold", str(bad)]) == 1
    assert "not one of the task's" in capsys.readouterr().err


def test_place_evidence_matches_after_nfkc_like_grounding():
    spans, missing = place_evidence([{"quote": "AB很累", "start": 9, "end": 12}], "ＡＢ很累，想睡")
    assert [(s["start"], s["end"], s["text"]) for s in spans] == [(0, 4, "ＡＢ很累")] and missing == []


def test_export_of_an_analyze_output_file_for_a_multi_label_task(tmp_path, capsys):
    output = tmp_path / "distortions.jsonl"
    assert main(["analyze", "--task", "cognitive-distortion", "--backend", "replay", "--model",
                 "sample:cognitive-distortion.outputs", "--input", "sample:cognitive-distortion", "--output",
                 str(output), "--quiet"]) == 0
    capsys.readouterr()
    tasks_path = tmp_path / "tasks.json"
    assert main(["review", "export", str(output), "-o", str(tasks_path), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["risk_label"] is None and summary["with_probabilities"] == 0
    tasks = json.loads(tasks_path.read_text())
    assert len(tasks) == len(output.read_text().splitlines()) and all(t["data"]["multiple"] for t in tasks)
    config = ET.fromstring((tmp_path / "tasks.label_config.xml").read_text())
    assert config.find("Choices[@name='label']").get("choice") == "multiple"
    several = next(t for t in tasks if len(t["data"]["model_labels"]) > 1)
    assert several["predictions"][0]["result"][0]["value"]["choices"] == several["data"]["model_labels"]


@pytest.mark.parametrize("record, message", [
    ({"post_id": "p", "reviewer": "x", "labels": "高自杀风险"}, "field 'labels': not a list of labels"),
    ({"post_id": "p", "reviewer": "x", "labels": [], "ratings": {"overall": 7}, "scale": [1, 5]},
     "field 'ratings.overall': 7 is not a point of the scale 1-5"),
    ({"post_id": "p", "reviewer": "x", "labels": [], "scale": [5, 1]}, "field 'scale'"),
])
def test_stats_refuses_malformed_review_records_in_one_line(tmp_path, capsys, record, message):
    path = tmp_path / "reviewed.jsonl"
    path.write_text("\n" + json.dumps(record, ensure_ascii=False) + "\n", encoding="utf-8")
    assert main(["review", "stats", str(path)]) == 1
    error = capsys.readouterr().err
    assert f"{path}:2: {message}" in error and error.count("\n") == 1
