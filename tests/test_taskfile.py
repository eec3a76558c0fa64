"""Tasks as data files: YAML and TOML, and one-line errors for bad definitions."""

from __future__ import annotations

import pytest

from mentalglm import load_task_file
from mentalglm.core.taskfile import TaskFileError

YAML_TASK = """
name: stress
kind: single-label
instruction: "判断压力。\\n标签：有压力 或 无压力"
labels:
  - name: 有压力
    aliases: [stressed]
  - 无压力
primary_metric: macro_f1
"""


def test_yaml_single_label(tmp_path):
    path = tmp_path / "stress.yaml"
    path.write_text(YAML_TASK, encoding="utf-8")
    task = load_task_file(path)
    assert (task.name, task.kind, task.label_names, task.primary_metric) == ("stress", "single-label",
                                                                            ("有压力", "无压力"), "macro_f1")
    assert task.parse("标签：Stressed").labels == ("有压力",)


def test_toml_multi_label_and_extraction(tmp_path):
    multi = tmp_path / "m.toml"
    multi.write_text('name = "m"\nkind = "multi-label"\ninstruction = "多选。"\nlabels = ["甲", "乙"]\n',
                     encoding="utf-8")
    assert load_task_file(multi).multi_label
    extraction = tmp_path / "e.toml"
    extraction.write_text('name = "e"\nkind = "extraction"\ninstruction = "提取。"\nfields = ["事件", "想法"]\n',
                          encoding="utf-8")
    assert load_task_file(extraction).field_names == ("事件", "想法")


@pytest.mark.parametrize("content, message", [
    ("name: x\nkind: single-label\ninstruction: y\nlabels: [a, b]\nlabel_set: [c]\n", "unknown keys label_set"),
    ("name: x\nkind: single-label\nlabels: [a, b]\n", "field 'instruction': missing"),
    ("name: x\nkind: ranking\ninstruction: y\nlabels: [a, b]\n", "field 'kind': 'ranking' is not one of"),
    ("name: x\nkind: single-label\ninstruction: y\nlabels: [a]\n", "needs at least 2 labels"),
    ("name: x\nkind: single-label\ninstruction: y\nlabels: [a, a]\n", "lists a label twice"),
    ("name: x\nkind: single-label\ninstruction: y\nlabels: []\n", "field 'labels': expected a non-empty list"),
    ("name: x y\nkind: single-label\ninstruction: y\nlabels: [a, b]\n", "task name 'x y'"),
    ("name: x\nkind: single-label\ninstruction: y\nlabels: [a, b]\nreport_label_f1: [c]\n", "unknown labels"),
    ("name: x\nkind: [\n", "invalid YAML"),
    ("- just\n- a list\n", "must be a mapping"),
])
def test_bad_task_files_give_one_line_errors(tmp_path, content, message):
    path = tmp_path / "bad.yaml"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(TaskFileError, match=message) as info:
        load_task_file(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)
