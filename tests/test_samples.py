"""The shipped synthetic samples: marked synthetic, valid for their task, with the hard cases."""

from __future__ import annotations

import json

import pytest

from mentalglm.data.readers import read_posts, resolve_path, sample_names

TASKS = ("depression", "suicide-risk", "cognitive-distortion", "cognitive-pathway")


def lines(name):
    return [json.loads(line) for line in resolve_path(f"sample:{name}").read_text(encoding="utf-8").splitlines()]


@pytest.mark.parametrize("task_name", TASKS)
def test_each_task_has_60_synthetic_records_with_valid_gold(tasks, task_name):
    records = lines(task_name)
    assert len(records) >= 60
    assert all(r["synthetic"] is True for r in records)
    task = tasks[task_name]
    assert all(r["instruction"] == task.instruction for r in records)
    posts = read_posts(f"sample:{task_name}", task)  # validates every gold output against the task
    assert all(p.gold for p in posts)


@pytest.mark.parametrize("task_name", TASKS)
def test_saved_outputs_cover_the_same_ids(task_name):
    outputs = lines(f"{task_name}.outputs")
    assert [o["id"] for o in outputs] == [r["id"] for r in lines(task_name)]
    assert all(o["synthetic"] is True for o in outputs)


def test_samples_listed():
    assert set(sample_names()) >= set(TASKS) | {f"{t}.outputs" for t in TASKS}


def test_hard_cases_are_present():
    texts = "\n".join(r["input"] for t in TASKS for r in lines(t))
    for needle in ("我不想死了", "我不想活了", "“", "depressed", "😭"):
        assert needle in texts, needle
    lengths = [len(r["input"]) for t in TASKS for r in lines(t)]
    assert min(lengths) <= 5 and max(lengths) >= 400


def test_single_label_samples_are_roughly_balanced(tasks):
    for name in ("depression", "suicide-risk"):
        golds = [p.gold[0] for p in read_posts(f"sample:{name}", tasks[name])]
        share = golds.count(tasks[name].label_names[0]) / len(golds)
        assert 0.35 <= share <= 0.65


def test_every_distortion_appears(tasks):
    task = tasks["cognitive-distortion"]
    seen = {label for p in read_posts("sample:cognitive-distortion", task) for label in p.gold}
    assert seen == set(task.label_names)
