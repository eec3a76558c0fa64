"""Block files of a distributed run, without Ray: atomic parts, resume by id, merge each id once in input order."""

from __future__ import annotations

import json
import sys

import pytest

from conftest import RecordingBackend
from mentalglm.analysis import run_record
from mentalglm.cli import main
from mentalglm.core.errors import MentalGLMError
from mentalglm.core.prediction import Post, posts_digest
from mentalglm.executors.blocks import BlockWriter, Fingerprint, OutputLayout, done_ids, merge, write_errors


def _line(post_id: str, label: str = "抑郁") -> str:
    return json.dumps({"id": post_id, "labels": [label], "output": f"标签：{label}"}, ensure_ascii=False)


def _ids(path) -> list[str]:
    return [json.loads(line)["id"] for line in path.read_text(encoding="utf-8").splitlines()]


def test_layouts_follow_the_local_executor(tmp_path):
    by_file = OutputLayout.for_file(tmp_path / "p.jsonl")
    assert by_file.record == run_record.sidecar_path(tmp_path / "p.jsonl")
    assert (by_file.parts.name, by_file.errors.name) == ("p.jsonl.parts", "p.jsonl.errors.jsonl")
    by_dir = OutputLayout.for_dir(tmp_path / "run")
    names = (by_dir.predictions.name, by_dir.record.name, by_dir.parts.name)
    assert names == ("predictions.jsonl", "run.json", "parts")


def test_a_block_is_published_whole_and_only_then(tmp_path):
    layout = OutputLayout.for_dir(tmp_path)
    writer = BlockWriter(layout.parts)
    assert writer.write([]) is None and not layout.parts.exists()
    first = writer.write([_line("a"), _line("b")])
    second = writer.write([_line("c")])
    assert [p.name for p in layout.part_files()] == sorted([first.name, second.name])
    assert not list(layout.parts.glob(".*"))  # no temporary left behind
    # A writer killed mid-block leaves only its hidden temporary: those posts are not done.
    (layout.parts / f".part-{writer.run_id}-000002.jsonl.tmp").write_text(_line("d") + "\n", encoding="utf-8")
    assert done_ids(layout) == {"a", "b", "c"}


def test_done_ids_join_the_merged_file_and_the_parts_and_skip_a_torn_tail(tmp_path):
    layout = OutputLayout.for_file(tmp_path / "p.jsonl")
    layout.predictions.write_text("\ufeff" + _line("a") + "\n" + _line("b") + "\n" + '{"id": "c", "lab',
                                  encoding="utf-8")
    BlockWriter(layout.parts).write([_line("d")])
    assert done_ids(layout) == {"a", "b", "d"}


def test_merge_keeps_each_id_once_in_input_order_and_removes_the_parts(tmp_path):
    layout = OutputLayout.for_dir(tmp_path)
    layout.predictions.write_text(_line("p2") + "\n" + '{"id": "p9", "lab', encoding="utf-8")  # torn: redone
    writer = BlockWriter(layout.parts)
    writer.write([_line("p4"), _line("p3")])
    writer.write([_line("p0"), _line("p1")])
    retried = BlockWriter(layout.parts)  # a retried block written a second time
    retried.write([_line("p0", "非抑郁"), _line("p1", "非抑郁")])
    (layout.parts / ".part-dead-000000.jsonl.tmp").write_text(_line("p5") + "\n", encoding="utf-8")

    result = merge(layout, {f"p{i}": i for i in range(6)})

    assert _ids(layout.predictions) == ["p0", "p1", "p2", "p3", "p4"]
    assert (result.predictions, result.duplicates, result.parts) == (5, 2, 3)
    assert not layout.parts.exists()
    records = [json.loads(line) for line in layout.predictions.read_text(encoding="utf-8").splitlines()]
    labels = {record["id"]: record["labels"] for record in records}
    assert labels["p0"] == ["抑郁"]  # the first copy found wins (the second came from a retry)
    again = merge(layout, {f"p{i}": i for i in range(6)})  # nothing new: the file is left as it is
    assert (again.predictions, again.parts) == (5, 0) and _ids(layout.predictions)[0] == "p0"


def test_merge_without_positions_keeps_the_order_found_and_puts_unknown_ids_last(tmp_path):
    layout = OutputLayout.for_dir(tmp_path)
    BlockWriter(layout.parts).write([_line("x"), _line("b"), _line("a")])
    merge(layout)
    assert _ids(layout.predictions) == ["x", "b", "a"]
    BlockWriter(layout.parts).write([_line("c")])
    merge(layout, {"a": 0, "b": 1, "c": 2})
    assert _ids(layout.predictions) == ["a", "b", "c", "x"]


def test_a_malformed_line_in_the_middle_is_refused_not_dropped(tmp_path):
    layout = OutputLayout.for_dir(tmp_path)
    layout.parts.mkdir()
    (layout.parts / "part-x-000000.jsonl").write_text(_line("a") + "\nnot json\n" + _line("b") + "\n", encoding="utf-8")
    with pytest.raises(MentalGLMError, match="malformed JSON"):
        merge(layout)


def test_errors_file_lists_failures_and_goes_away_when_none(tmp_path):
    layout = OutputLayout.for_dir(tmp_path)
    write_errors(layout, [("p1", "RuntimeError: server down")])
    assert json.loads(layout.errors.read_text(encoding="utf-8")) == {"id": "p1", "error": "RuntimeError: server down"}
    write_errors(layout, [])
    assert not layout.errors.exists()


def test_fingerprint_is_the_run_records_digest_and_refuses_repeated_ids():
    posts = [Post(id="a", text="一"), Post(id="b", text="二", gold=("抑郁",))]
    fingerprint = Fingerprint.of(posts)
    assert fingerprint.sha256 == posts_digest(posts)
    assert (fingerprint.count, fingerprint.positions) == (2, {"a": 0, "b": 1})
    with pytest.raises(MentalGLMError, match="post id 'a' appears twice"):
        Fingerprint.of(posts + [Post(id="a", text="三")])


class _FailingOn(RecordingBackend):
    """Fails every call that includes the post ``bad``."""

    def generate(self, requests):
        if any(r.id == "bad" for r in requests):
            raise RuntimeError("backend exploded\nsecond line of the traceback")
        return super().generate(requests)


def test_the_actor_turns_a_failing_post_into_an_error_row_and_keeps_the_others():
    pa = pytest.importorskip("pyarrow")
    from mentalglm.executors.ray_data import PostAnalyzer

    actor = PostAnalyzer({"task": "depression", "backend": _FailingOn(), "batch_size": 4}, skip=frozenset({"done"}))
    batch = pa.Table.from_pylist([{"id": i, "text": "最近总是失眠"} for i in ("p1", "bad", "done", "p2")])
    rows = actor(batch).to_pylist()
    assert [row["id"] for row in rows] == ["p1", "bad", "p2"]
    assert rows[1]["prediction"] is None and rows[1]["error"] == "RuntimeError: backend exploded"
    assert json.loads(rows[0]["prediction"])["labels"] == ["非抑郁"] and rows[0]["error"] is None
    assert json.loads(rows[0]["settings"])["task"] == "depression" and rows[1]["settings"] is None
    assert "最近" not in rows[1]["error"]  # no post text in an error row


def test_an_actor_whose_backend_cannot_start_fails_the_batch_with_one_line():
    pa = pytest.importorskip("pyarrow")
    from mentalglm.executors.ray_data import PostAnalyzer

    actor = PostAnalyzer({"task": "depression", "backend": "replay", "model": "/nonexistent/outputs.jsonl"})
    with pytest.raises(MentalGLMError, match="nonexistent"):
        actor(pa.Table.from_pylist([{"id": "p1", "text": "…"}]))


def test_ray_flags_without_the_ray_executor_are_refused(capsys):
    assert main(["analyze", "--task", "depression", "--workers", "2", "最近总是失眠"]) == 1
    assert "--workers needs --executor ray" in capsys.readouterr().err
    assert main(["analyze", "--task", "depression", "--executor", "ray", "最近总是失眠"]) == 1
    assert "needs --input FILE and --output FILE" in capsys.readouterr().err


def test_the_ray_executor_without_ray_says_how_to_install_it(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray → ImportError
    code = main(["analyze", "--task", "depression", "--backend", "replay", "--model", "sample:depression.outputs",
                 "--input", "sample:depression", "--output", str(tmp_path / "p.jsonl"), "--executor", "ray"])
    assert code == 1
    assert "pip install 'mentalglm[ray]'" in capsys.readouterr().err
