"""The constrained answer format: the byte-prefix test and the GBNF grammar describe one language."""

from __future__ import annotations

import pytest


@pytest.mark.parametrize("task_name, text, allowed, free", [
    ("depression", "", True, False),
    ("depression", "标", True, False),
    ("depression", "标签：", True, False),
    ("depression", "标签：非", True, False),
    ("depression", "标签：抑郁", True, False),
    ("depression", "标签：抑郁\n解", True, False),
    ("depression", "标签：抑郁\n解释：", True, True),
    ("depression", "标签：非抑郁\n解释：长期失眠。\n第二行也行<|", True, True),
    ("depression", "标签：焦虑", False, False),
    ("depression", "标签：抑郁、非抑郁", False, False),
    ("depression", "Label: depressed", False, False),
    ("cognitive-distortion", "标签：读心术、先", True, False),
    ("cognitive-distortion", "标签：读心术、先知错误\n解释：猜测。", True, True),
    ("cognitive-distortion", "标签：无\n解释：客观陈述。", True, True),
    ("cognitive-distortion", "标签：无、读心术", False, False),
    ("cognitive-distortion", "标签：读心术，", False, False),
    ("cognitive-distortion", "标签：" + "、".join(["放大"] * 12), True, False),
    ("cognitive-distortion", "标签：" + "、".join(["放大"] * 13), False, False),
    ("cognitive-pathway-abcd", "诱发事件：考试没考好\n信念：我完了\n结果：失眠\n反驳：无\n解释：x", True, True),
    ("cognitive-pathway-abcd", "诱发事件：考试没考好\n信", True, False),
    ("cognitive-pathway-abcd", "诱发事件：\n", False, False),
    ("cognitive-pathway-abcd", "信念：我完了", False, False),
    ("cognitive-pathway", "触发性事件：学习工作｜考试没考好\n认知歪曲：以偏概全、乱贴标签｜我完了\n情绪反应：无\n"
                          "驳斥：有效驳斥｜只是一次\n解释：x", True, True),
    ("cognitive-pathway", "触发性事件：学习工作｜考试没考好\n认知歪曲：以偏", True, False),
    ("cognitive-pathway", "触发性事件：无\n认知歪曲：无\n情绪反应：无\n驳斥：无\n解释：", True, True),
    ("cognitive-pathway", "触发性事件：学习工作\n", False, False),  # sub-labels need a summary
    ("cognitive-pathway", "触发性事件：以偏概全｜x", False, False),  # a sub-label of another part
    ("cognitive-pathway", "认知歪曲：无", False, False),  # parts come in order
    ("cognitive-pathway", "触发性事件：" + "、".join(["生活"] * 6), False, False),
])
def test_prefix_language(tasks, task_name, text, allowed, free):
    fmt = tasks[task_name].response_format()
    assert fmt.allows(text.encode()) is allowed
    assert fmt.in_free_text(text.encode()) is free


def test_half_characters_are_allowed_prefixes(tasks):
    fmt = tasks["suicide-risk"].response_format()
    whole = "标签：高自杀风险".encode()
    for cut in range(len(whole) + 1):
        assert fmt.allows(whole[:cut])
    assert not fmt.allows("标签：中".encode()[:-1])  # 中 starts e4 b8; 低 starts e4 bd
    assert fmt.allows("标签：低".encode()[:-2])


def test_constrained_answers_parse_back(tasks):
    for name, answer in (("depression", "标签：非抑郁\n解释：x"),
                         ("cognitive-distortion", "标签：读心术、放大\n解释：x"),
                         ("cognitive-pathway-abcd", "诱发事件：a\n信念：b\n结果：c\n反驳：无\n解释：x"),
                         ("cognitive-pathway",
                          "触发性事件：生活｜a\n认知歪曲：无\n情绪反应：行为效应｜c\n驳斥：无\n解释：x")):
        task = tasks[name]
        assert task.response_format().in_free_text(answer.encode())
        assert task.parse(answer).valid


def test_gbnf_mentions_every_label_and_the_shape(tasks):
    grammar = tasks["cognitive-distortion"].response_format().gbnf()
    assert grammar.startswith('root ::= "标签：" (label ("、" label){0,11} | "无") "\\n解释：" free')
    for label in tasks["cognitive-distortion"].label_names:
        assert f'"{label}"' in grammar
    abcd = tasks["cognitive-pathway-abcd"].response_format().gbnf()
    assert 'root ::= "诱发事件：" line "\\n信念：" line' in abcd
    pathway = tasks["cognitive-pathway"].response_format().gbnf()
    assert pathway.startswith('root ::= "触发性事件：" (part1 ("、" part1){0,4} "｜" line | "无") '
                              '"\\n认知歪曲：" (part2')
    assert 'part4 ::= "习惯性驳斥" | "有效驳斥"' in pathway
