"""Input files: every accepted format, and one-line errors naming file, line and field."""

from __future__ import annotations

import json

import pytest

from mentalglm.core.errors import DataError, UnknownNameError
from mentalglm.data.readers import JsonlAppender, read_done, read_posts, read_records, resolve_path


def write(path, text, encoding="utf-8"):
    path.write_bytes(text.encode(encoding))
    return path


def test_jsonl_posts_with_labels(tmp_path, tasks):
    path = write(tmp_path / "p.jsonl", '{"id": "a", "text": "好累", "label": "抑郁"}\n\n'
                                       '{"id": 7, "text": "开心", "label": "not depressed"}\n')
    posts = read_posts(path, tasks["depression"])
    assert [(p.id, p.text, p.gold, p.line) for p in posts] == [("a", "好累", ("抑郁",), 1),
                                                                ("7", "开心", ("非抑郁",), 3)]


def test_ids_default_to_position(tmp_path, tasks):
    path = write(tmp_path / "p.jsonl", '{"text": "一"}\n{"text": "二"}\n')
    assert [p.id for p in read_posts(path, tasks["depression"])] == ["1", "2"]


def test_bom_and_crlf_are_accepted(tmp_path, tasks):
    path = write(tmp_path / "p.jsonl", '\ufeff{"id": "a", "text": "累"}\r\n{"id": "b", "text": "好"}\r\n')
    assert [p.id for p in read_posts(path, tasks["depression"])] == ["a", "b"]
    csv_path = write(tmp_path / "p.csv", "\ufeffid,text,label\r\n1,好累,抑郁\r\n2,\"开心，真的\",非抑郁\r\n")
    posts = read_posts(csv_path, tasks["depression"])
    assert [(p.id, p.text, p.gold) for p in posts] == [("1", "好累", ("抑郁",)), ("2", "开心，真的", ("非抑郁",))]


def test_cimhi_json_array_and_jsonl(tmp_path, tasks):
    task = tasks["suicide-risk"]
    records = [{"instruction": "评估。", "input": "想消失", "output": "标签：低自杀风险\n解释：被动。"},
               {"instruction": "评估。", "input": "都安排好了", "output": "标签：高自杀风险\n解释：有计划。"}]
    array = write(tmp_path / "r.json", json.dumps(records, ensure_ascii=False, indent=2))
    posts = read_posts(array, task)
    assert [p.gold for p in posts] == [("低自杀风险",), ("高自杀风险",)]
    assert posts[1].instruction == "评估。" and posts[1].line == 7
    lines = write(tmp_path / "r.jsonl", "\n".join(json.dumps(r, ensure_ascii=False) for r in records))
    assert [r.output for r in read_records(lines)] == [r["output"] for r in records]


def test_txt_one_post_per_line(tmp_path, tasks):
    path = write(tmp_path / "p.txt", "第一条\n\n第二条\r\n")
    assert [(p.id, p.text) for p in read_posts(path, tasks["depression"])] == [("1", "第一条"), ("3", "第二条")]


def test_multi_label_and_extraction_gold(tmp_path, tasks):
    path = write(tmp_path / "m.jsonl", '{"text": "a", "label": ["读心术", "mind reading", "放大"]}\n'
                                       '{"text": "b", "label": "读心术、先知错误"}\n')
    assert [p.gold for p in read_posts(path, tasks["cognitive-distortion"])] == [("读心术", "放大"),
                                                                                 ("读心术", "先知错误")]
    fields = {"诱发事件": "被骂", "信念": "我没用", "结果": "哭", "反驳": "无"}
    path = write(tmp_path / "e.jsonl", json.dumps({"text": "x", "label": fields}, ensure_ascii=False))
    assert read_posts(path, tasks["cognitive-pathway-abcd"])[0].gold == fields


@pytest.mark.parametrize("name, content, message", [
    ("bad.jsonl", '{"text": "ok"}\n{"text": "broken"\n', r"bad.jsonl:2: malformed JSON"),
    ("bad.jsonl", '{"text": "ok"}\n["not", "object"]\n', r"bad.jsonl:2: expected a JSON object"),
    ("bad.jsonl", '{"id": "1", "txt": "typo"}\n', r"bad.jsonl:1: field 'text': missing"),
    ("bad.jsonl", '{"id": "1", "text": ""}\n', r"bad.jsonl:1: field 'text': empty"),
    ("bad.jsonl", '{"id": "1", "text": 5}\n', r"bad.jsonl:1: field 'text': expected a string"),
    ("bad.jsonl", '{"id": "1", "text": "a"}\n{"id": "1", "text": "b"}\n', r"bad.jsonl:2: field 'id': duplicate id '1'"),
    ("bad.jsonl", '{"text": "a", "label": "抑郁"}\n{"text": "b", "label": "焦虑"}\n',
     r"bad.jsonl:2: field 'label': '焦虑' is not a label of task 'depression' \(allowed: 抑郁, 非抑郁\)"),
    ("bad.jsonl", '{"instruction": "判断。", "input": "累", "output": "标签：焦虑"}\n',
     r"bad.jsonl:1: field 'output': .*焦虑.*allowed: 抑郁, 非抑郁"),
    ("bad.jsonl", '{"instruction": "判断。", "output": "标签：抑郁"}\n', r"bad.jsonl:1: field 'input': missing"),
    ("bad.json", '[\n  {"text": "a"},\n  {"text": "b",}\n]', r"bad.json:3: malformed JSON"),
    ("bad.json", '[\n  {"text": "a"},\n  {"txt": "b"}\n]', r"bad.json:3: field 'text': missing"),
    ("bad.csv", "id,body\n1,hi\n", r"bad.csv:1: field 'text': missing from the header"),
    ("bad.csv", "id,text,label\n1,hi,抑郁\n2,there\n", r"bad.csv:3: expected 3 columns, found 2"),
    ("bad.csv", "text,label\n好累,sad\n", r"bad.csv:2: field 'label': 'sad' is not a label"),
    ("empty.jsonl", "\n\n", r"empty.jsonl: no posts found"),
    ("posts.xlsx", "x", r"posts.xlsx: unsupported file type '.xlsx'"),
])
def test_bad_input_is_one_line_with_file_line_field(tmp_path, tasks, name, content, message):
    path = write(tmp_path / name, content)
    with pytest.raises(DataError, match=message) as info:
        read_posts(path, tasks["depression"])
    assert "\n" not in str(info.value)
    assert str(path) in str(info.value)


def test_not_utf8_names_the_line(tmp_path, tasks):
    # GBK text is now read (GB18030 is detected); a byte that fits no encoding is still an error.
    path = tmp_path / "gbk.jsonl"
    path.write_bytes('{"text": "ok"}\n'.encode() + b'{"text": "\xff\xff"}\n')
    with pytest.raises(DataError, match=r"gbk.jsonl:2: not valid UTF-8"):
        read_posts(path, tasks["depression"])


def test_missing_file_and_directory(tmp_path, tasks):
    with pytest.raises(DataError, match="no such file"):
        read_posts(tmp_path / "nope.jsonl", tasks["depression"])
    with pytest.raises(DataError, match="is a directory"):
        read_records(tmp_path)


def test_records_need_output(tmp_path):
    path = write(tmp_path / "r.jsonl", '{"instruction": "判断。", "input": "累"}\n')
    with pytest.raises(DataError, match=r"r.jsonl:1: field 'output': missing"):
        read_records(path)


def test_unknown_sample_lists_available():
    with pytest.raises(UnknownNameError, match="Did you mean 'depression'"):
        resolve_path("sample:depresion")


def test_appender_repairs_torn_tail_and_resume_reads_ids(tmp_path):
    path = tmp_path / "out.jsonl"
    path.write_text('{"id": "1", "output": "a"}\n{"id": "2", "outp', encoding="utf-8")
    assert set(read_done(path)) == {"1"}
    with JsonlAppender(path) as sink:
        sink.write({"id": "2", "output": "b"})
    assert [json.loads(line)["id"] for line in path.read_text(encoding="utf-8").splitlines()] == ["1", "2"]


@pytest.mark.parametrize("layout", ["array", "jsonl"])
def test_deeply_nested_json_is_a_one_line_error_not_a_recursion_traceback(tmp_path, tasks, layout):
    from mentalglm.data.readers import read_posts

    nested = "[" * 5000 + "]" * 5000
    path = tmp_path / "deep.json"
    path.write_text(nested if layout == "array" else '{"id": "1", "text": "好"}\n' + nested + "\n", encoding="utf-8")
    with pytest.raises(DataError, match="nested too deeply") as caught:
        read_posts(path, tasks["depression"])
    assert str(path) in str(caught.value) and "\n" not in str(caught.value)
