"""The tolerant response parser: formats models really produce, and what must stay invalid."""

from __future__ import annotations

import pytest


@pytest.mark.parametrize("text, labels", [
    ("标签：抑郁\n解释：持续低落。", ("抑郁",)),
    ("标签：非抑郁\n解释：帖子提到抑郁科普，但本人没有抑郁。", ("非抑郁",)),
    ("标签: 非抑郁", ("非抑郁",)),
    ("  标签：\u3000非抑郁\u3000 \n解释：一时情绪。", ("非抑郁",)),
    ("**标签**：抑郁\n**解释**：失眠。", ("抑郁",)),
    ("## 标签\n抑郁\n\n## 解释\n无望感。", ("抑郁",)),
    ("【标签】抑郁", ("抑郁",)),
    ("【标签】：抑郁", ("抑郁",)),
    ("Label: depressed\nExplanation: anhedonia.", ("抑郁",)),
    ("label: not depressed", ("非抑郁",)),
    ("LABEL: Non-Depressed", ("非抑郁",)),
    ("根据帖子内容分析如下。\n标签：抑郁\n解释：……", ("抑郁",)),
    ("抑郁。发帖者长期失眠。", ("抑郁",)),
    ("非抑郁", ("非抑郁",)),
    ("标签：没有抑郁\n解释：只是累。", ("非抑郁",)),
    ("判断结果：抑郁", ("抑郁",)),
    ("Label: depressed. Explanation: the poster says nothing matters.", ("抑郁",)),
])
def test_depression_label_formats(tasks, text, labels):
    parsed = tasks["depression"].parse(text)
    assert parsed.valid, parsed.problem
    assert parsed.labels == labels


@pytest.mark.parametrize("text, problem", [
    ("", "empty"),
    ("   \n ", "empty"),
    ("抱歉，我无法对此做出判断。", "no label"),
    ("标签：焦虑\n解释：紧张。", "焦虑"),
    ("标签：抑郁/非抑郁\n解释：难以确定。", "ambiguous"),
    ("标签：\n解释：打工人的自嘲。", "no label"),
    ("I cannot help with that.", "no label"),
])
def test_depression_invalid_is_never_defaulted(tasks, text, problem):
    parsed = tasks["depression"].parse(text)
    assert not parsed.valid
    assert parsed.labels == ()
    assert problem in parsed.problem


def test_label_line_decides_not_the_explanation(tasks):
    parsed = tasks["suicide-risk"].parse("标签：低自杀风险\n解释：没有高自杀风险的计划或时间表。")
    assert parsed.labels == ("低自杀风险",)
    assert parsed.explanation == "没有高自杀风险的计划或时间表。"


@pytest.mark.parametrize("text, labels", [
    ("标签：高自杀风险\n解释：有计划。", ("高自杀风险",)),
    ("Label: high suicide risk", ("高自杀风险",)),
    ("Label: low risk", ("低自杀风险",)),
    ("标签：无自杀风险", ("低自杀风险",)),
    ("标签：存在自杀风险", ("高自杀风险",)),
    ("标签：不存在自杀风险", ("低自杀风险",)),
])
def test_suicide_risk_aliases_and_negations(tasks, text, labels):
    assert tasks["suicide-risk"].parse(text).labels == labels


@pytest.mark.parametrize("text, labels", [
    ("标签：读心术、先知错误\n解释：……", ("读心术", "先知错误")),
    ("标签：读心术，先知错误", ("读心术", "先知错误")),
    ("标签: 读心术; 先知错误", ("读心术", "先知错误")),
    ("标签：读心术/先知错误", ("读心术", "先知错误")),
    ("标签：读心术和先知错误", ("读心术", "先知错误")),
    ("标签：\n- 读心术\n- 先知错误\n解释：猜测别人想法并预言失败。", ("读心术", "先知错误")),
    ("**标签**：放大", ("放大",)),
    ("Labels: mind reading, fortune telling", ("读心术", "先知错误")),
    ("Labels: all-or-nothing thinking and overgeneralization", ("非此即彼", "以偏概全")),
    ("labels: catastrophizing; should statements", ("放大", "应该式")),
    ("分析如下\n标签：罪责归己、罪责归他", ("罪责归己", "罪责归他")),
])
def test_multi_label_separators_and_aliases(tasks, text, labels):
    parsed = tasks["cognitive-distortion"].parse(text)
    assert parsed.valid, parsed.problem
    assert parsed.labels == labels


def test_multi_label_line_list_stops_at_prose(tasks):
    parsed = tasks["cognitive-distortion"].parse("标签：\n读心术\n放大\n他觉得同事都讨厌他，这属于读心术。")
    assert parsed.labels == ("读心术", "放大")
    assert parsed.explanation == "他觉得同事都讨厌他，这属于读心术。"


def test_multi_label_unknown_labels_are_reported_not_invented(tasks):
    task = tasks["cognitive-distortion"]
    parsed = task.parse("标签：读心术、悲观主义")
    assert parsed.valid and parsed.labels == ("读心术",)
    assert "悲观主义" in parsed.problem
    only_unknown = task.parse("标签：悲观主义")
    assert not only_unknown.valid and only_unknown.labels == ()


def test_multi_label_explicit_none_is_valid_and_empty(tasks):
    parsed = tasks["cognitive-distortion"].parse("标签：无\n解释：帖子是客观陈述。")
    assert parsed.valid and parsed.labels == ()


def test_extraction_fields(tasks):
    task = tasks["cognitive-pathway-abcd"]
    parsed = task.parse("诱发事件：期末考试没考好\n**信念**: 我什么都做不好\n"
                        "结果：整晚失眠\n反驳：无\n解释：典型的以偏概全。")
    assert parsed.valid
    assert parsed.fields == {"诱发事件": "期末考试没考好", "信念": "我什么都做不好", "结果": "整晚失眠", "反驳": "无"}
    assert parsed.explanation == "典型的以偏概全。"
    partial = task.parse("信念：我没用\n事件：被骂")
    assert partial.valid and partial.fields["结果"] == "" and partial.fields["诱发事件"] == "被骂"
    assert not task.parse("我觉得这个帖子很难过。").valid


def test_explanation_without_header_is_the_rest(tasks):
    parsed = tasks["depression"].parse("标签：抑郁\n帖子提到长期失眠和无望感。")
    assert parsed.labels == ("抑郁",)
    assert parsed.explanation == "帖子提到长期失眠和无望感。"


def test_alias_that_names_two_labels_is_rejected():
    from mentalglm import Label, SingleLabelTask

    with pytest.raises(ValueError, match="names two labels"):
        SingleLabelTask(name="x", instruction="判断。", labels=[Label("是", ("yes",)), Label("否", ("Yes",))])


def test_response_format_render_round_trips(tasks):
    for name in ("depression", "cognitive-distortion"):
        task = tasks[name]
        answer = task.label_names[:2] if task.multi_label else task.label_names[:1]
        text = task.response_format().render(answer, "因为……")
        parsed = task.parse(text)
        assert parsed.labels == tuple(answer) and parsed.explanation == "因为……"
    pathway = tasks["cognitive-pathway-abcd"]
    fields = {"诱发事件": "被批评", "信念": "我很差", "结果": "哭了", "反驳": ""}
    assert pathway.gold_from_output(pathway.response_format().render(fields)) == {**fields, "反驳": "无"}


@pytest.mark.parametrize("task_name, text, labels", [
    ("suicide-risk", "标签：不属于高自杀风险\n解释：没有计划。", ("低自杀风险",)),
    ("suicide-risk", "Label: not high risk", ("低自杀风险",)),
    ("suicide-risk", "标签：并非低自杀风险", ("高自杀风险",)),
    ("depression", "标签：无明显抑郁", ("非抑郁",)),
    ("depression", "标签：不存在抑郁", ("非抑郁",)),
    ("depression", "标签：并非抑郁", ("非抑郁",)),
    ("depression", "标签：轻度抑郁", ("抑郁",)),
    ("cognitive-distortion", "标签：不是读心术，而是先知错误", ("先知错误",)),
])
def test_negated_mentions_are_not_labels(tasks, task_name, text, labels):
    parsed = tasks[task_name].parse(text)
    assert parsed.valid and parsed.labels == labels


def test_negation_does_not_leak_across_clauses(tasks):
    assert tasks["depression"].parse("标签：抑郁").labels == ("抑郁",)
    assert tasks["depression"].parse("标签：非抑郁").labels == ("非抑郁",)
    assert tasks["suicide-risk"].parse("标签：高自杀风险（不容忽视）").labels == ("高自杀风险",)
