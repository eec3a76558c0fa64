"""The cognitive-pathway task as Jiang et al. (2024) define it: 4 parts, 19 sub-categories, a
summary per part; hierarchical micro-F1 at level 1, level 2 and overall, and summary ROUGE."""

from __future__ import annotations

import random

import pytest

from mentalglm.core.metrics import rouge_l_chars, summary_rouge

ANSWER = ("触发性事件：学习工作｜期末考试没考好\n认知歪曲：以偏概全、乱贴标签｜我什么都做不好\n"
          "情绪反应：情感效应｜整晚失眠\n驳斥：无\n解释：典型的以偏概全。")


def test_the_builtin_task_has_the_papers_label_set(tasks):
    task = tasks["cognitive-pathway"]
    assert task.kind == "hierarchical" and task.primary_metric == "hierarchical_f1"
    assert task.part_names == ("触发性事件", "认知歪曲", "情绪反应", "驳斥")
    assert {part: len(subs) for part, subs in task.sub_labels.items()} == {
        "触发性事件": 5, "认知歪曲": 10, "情绪反应": 2, "驳斥": 2}
    assert task.instruction.startswith("考虑以下这个帖子，帖子体现了什么认知路径？")  # the model card's question


def test_parse_reads_sub_labels_and_summaries_part_by_part(tasks):
    parsed = tasks["cognitive-pathway"].parse(ANSWER)
    assert parsed.valid and parsed.labels == ("学习工作", "以偏概全", "乱贴标签", "情感效应")
    assert parsed.fields == {"触发性事件": "期末考试没考好", "认知歪曲": "我什么都做不好", "情绪反应": "整晚失眠",
                             "驳斥": ""}
    assert parsed.explanation == "典型的以偏概全。"


def test_parse_is_tolerant_of_headers_bars_aliases_and_missing_parts(tasks):
    task = tasks["cognitive-pathway"]
    messy = task.parse("**诱发事件**: study | 考试没考好\n信念：overgeneralization、贴标签 | 我很差\n解释：x")
    assert messy.valid and messy.labels == ("学习工作", "以偏概全", "乱贴标签")
    assert messy.fields["触发性事件"] == "考试没考好" and messy.fields["情绪反应"] == ""
    # A sub-label of another part on a part's line is not read there.
    assert task.parse("触发性事件：以偏概全｜x").labels == ()
    assert not task.parse("我觉得这个帖子很难过。").valid


def test_gold_needs_every_part_and_values_may_be_lists_or_objects(tasks):
    task = tasks["cognitive-pathway"]
    assert task.gold_from_output(ANSWER)["labels"] == ("学习工作", "以偏概全", "乱贴标签", "情感效应")
    with pytest.raises(ValueError, match="missing parts 驳斥"):
        task.gold_from_output("触发性事件：生活｜x\n认知歪曲：无\n情绪反应：无")
    assert task.gold_from_value(["读心术", "情感效应"])["labels"] == ("妄下结论", "情感效应")  # aliases
    value = {"触发性事件": {"labels": ["情感"], "summary": "分手"}, "驳斥": {"labels": ["有效驳斥"], "summary": "还好"}}
    assert task.gold_from_value(value) == {"labels": ("情感", "有效驳斥"), "summaries": {
        "触发性事件": "分手", "认知歪曲": "", "情绪反应": "", "驳斥": "还好"}}
    with pytest.raises(ValueError, match="not a sub-label of part '驳斥'"):
        task.gold_from_value({"驳斥": {"labels": ["情感"]}})


def test_rendered_answers_parse_back_and_fit_the_grammar(tasks):
    task = tasks["cognitive-pathway"]
    fmt = task.response_format()
    answer = {"labels": ("社会关系", "妄下结论", "行为效应", "习惯性驳斥"),
              "summaries": {"触发性事件": "朋友没回消息", "认知歪曲": "她讨厌我", "情绪反应": "删了好友",
                            "驳斥": "也许她忙"}}
    text = fmt.render(answer, "x")
    assert fmt.in_free_text(text.encode()) and task.gold_from_output(text) == {
        "labels": answer["labels"], "summaries": answer["summaries"]}


def _counts(gold, predicted):
    tp = sum(len(set(g) & set(p)) for g, p in zip(gold, predicted))
    fp = sum(len(set(p) - set(g)) for g, p in zip(gold, predicted))
    fn = sum(len(set(g) - set(p)) for g, p in zip(gold, predicted))
    return tp, fp, fn


def _f1(tp, fp, fn):
    return 2 * tp / (2 * tp + fp + fn) if tp else 0.0


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_hierarchical_micro_f1_pools_both_levels(tasks, seed):
    # An independent count of TP/FP/FN per level (not scikit-learn) must give the same F1s.
    task = tasks["cognitive-pathway"]
    rng = random.Random(seed)
    leaves = list(task.label_names)
    gold = [tuple(rng.sample(leaves, rng.randint(1, 4))) for _ in range(40)]
    predicted = [tuple(rng.sample(leaves, rng.randint(0, 4))) for _ in range(40)]
    invalid = [rng.random() < 0.1 for _ in range(40)]
    responses = [task.parse(task.response_format().render({"labels": () if bad else p, "summaries": {}}))
                 if not bad else task.parse("抱歉") for p, bad in zip(predicted, invalid)]
    golds = [{"labels": tuple(sorted(g, key=leaves.index)), "summaries": {}} for g in gold]
    metrics = task.compute_metrics(golds, responses)
    scored = [() if bad else p for p, bad in zip(predicted, invalid)]
    parents = [[{task.parent_of[l] for l in g} for g in gold], [{task.parent_of[l] for l in p} for p in scored]]
    level1, level2 = _counts(*parents), _counts(gold, scored)
    assert metrics["level2_micro_f1"] == pytest.approx(_f1(*level2))
    assert metrics["level1_micro_f1"] == pytest.approx(_f1(*level1))
    assert metrics["hierarchical_f1"] == pytest.approx(_f1(*(a + b for a, b in zip(level1, level2))))
    assert metrics["invalid"] == sum(invalid)


def test_summary_rouge_is_character_level_and_agrees_with_our_lcs():
    # rouge-score's ROUGE-L with character tokens equals an independent LCS computation.
    pairs = [("期末考试没考好", "考试考砸了"), ("我什么都做不好", "我做什么都不行"), ("哭了", "哭了")]
    for pred, ref in pairs:
        assert summary_rouge([pred], [ref])["rougeL"] == pytest.approx(rouge_l_chars(pred, ref))
    # ROUGE-1 by hand: 考,试,考 shared unigrams of 考试考砸了 (5) and 期末考试没考好 (7): P=3/7, R=3/5.
    assert summary_rouge(["期末考试没考好"], ["考试考砸了"])["rouge1"] == pytest.approx(2 * 3 / (7 + 5))
    assert summary_rouge(["", "x"], ["", "y"], [False, False])["rouge1"] == pytest.approx(0.5)  # empty pair agrees
    assert summary_rouge(["哭了"], ["哭了"], [True])["rougeL"] == 0.0  # invalid answers score 0


def test_a_hierarchical_task_file_with_parents(tmp_path):
    from mentalglm.core.taskfile import TaskFileError, load_task_file

    path = tmp_path / "h.yaml"
    path.write_text("name: h\nkind: hierarchical\ninstruction: 判断。\nlabels:\n  - 甲\n  - 乙\n"
                    "  - {name: 甲一, parent: 甲}\n  - {name: 乙一, parent: 乙}\n  - {name: 乙二, parent: 乙}\n",
                    encoding="utf-8")
    task = load_task_file(path)
    assert task.part_names == ("甲", "乙") and task.parent_of == {"甲一": "甲", "乙一": "乙", "乙二": "乙"}
    path.write_text("name: h\nkind: single-label\ninstruction: 判断。\nlabels:\n  - 甲\n  - {name: 乙, parent: 甲}\n",
                    encoding="utf-8")
    with pytest.raises(TaskFileError, match="'parent' needs kind: hierarchical"):
        load_task_file(path)
    path.write_text("name: h\nkind: hierarchical\ninstruction: 判断。\nlabels:\n  - 甲\n  - {name: 乙, parent: 丙}\n",
                    encoding="utf-8")
    with pytest.raises(TaskFileError, match="parent '丙' is not a top-level label"):
        load_task_file(path)


def test_sample_evaluation_reports_the_papers_metrics(tmp_path):
    import json

    from conftest import run_cli

    result = run_cli("evaluate", "--task", "cognitive-pathway", "--data", "sample:cognitive-pathway", "--backend",
                     "replay", "--model", "sample:cognitive-pathway.outputs", "--output-dir", str(tmp_path), "--json")
    assert result.returncode == 0, result.stderr
    metrics = json.loads(result.stdout)["metrics"]
    for key in ("level1_micro_f1", "level2_micro_f1", "hierarchical_f1", "rouge1", "rouge2", "rougeL"):
        assert 0.0 < metrics[key] <= 1.0, key
    assert metrics["invalid"] == 6 and set(metrics["per_part"]) == {"触发性事件", "认知歪曲", "情绪反应", "驳斥"}
