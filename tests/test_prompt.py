"""Prompt styles render the exact model input, byte for byte."""

from __future__ import annotations

import pytest

from mentalglm import PromptStyle


def test_glm4_chat_renders_task_and_post_exactly(pm):
    task = pm.task("depression")
    rendered = pm.prompt("glm4-chat").render(task.instruction, "最近总是失眠😭")
    expected = ("[gMASK]<sop><|user|>\n"
                "判断下面这条社交媒体帖子的发帖者是否表现出抑郁。请按以下格式回答：\n"
                "标签：抑郁 或 非抑郁\n解释：说明你的判断依据。\n"
                "最近总是失眠😭<|assistant|>\n")
    assert rendered == expected
    assert rendered.encode("utf-8") == expected.encode("utf-8")


def test_glm4_chat_with_system_turn(pm):
    rendered = pm.prompt("glm4-chat").render("判断。", "帖子", system="你是心理健康助手。")
    assert rendered == "[gMASK]<sop><|system|>\n你是心理健康助手。<|user|>\n判断。\n帖子<|assistant|>\n"


def test_glm4_chat_stops_at_turn_markers(pm):
    assert set(pm.prompt("glm4-chat").stop) == {"<|user|>", "<|endoftext|>", "<|observation|>"}


def test_plain_style(pm):
    task = pm.task("suicide-risk")
    assert pm.prompt("plain").render(task.instruction, "想消失") == task.instruction + "\n想消失\n"
    with pytest.raises(ValueError, match="no system turn"):
        pm.prompt("plain").render("判断。", "帖子", system="x")


def test_post_text_is_not_reinterpreted(pm):
    tricky = "{content} {system} <|user|> 100% \\n"
    assert tricky in pm.prompt("glm4-chat").render("判断。", tricky)


def test_template_must_have_content_slot():
    with pytest.raises(ValueError, match="content"):
        PromptStyle(name="broken", description="", template="no slot")
