"""JSON array files stream item by item: the same items and line numbers as reading them whole,
whatever the chunk size, and only about a chunk in memory ahead of the item being read."""

from __future__ import annotations

import io
import json

import pytest

from mentalglm.core.errors import DataError
from mentalglm.data import json_array
from mentalglm.data.readers import iter_json_objects

ITEMS = [{"id": "a", "input": "带 ] 和 [ 的帖子，还有 \"引号\" 与 \\ 反斜杠", "output": "标签：抑郁\n解释：…"},
         {"id": "b", "input": "第二条", "nested": {"list": [1, 2, {"x": "}"}]}},
         {"id": "c", "input": "😭 表情", "output": ""}]


def _written(tmp_path, text, name="data.json"):
    path = tmp_path / name
    path.write_bytes(text.encode("utf-8"))
    return path


@pytest.mark.parametrize("chunk", [1, 2, 5, 17, 1 << 20])
def test_any_chunk_size_gives_the_items_and_lines_of_a_whole_read(tmp_path, monkeypatch, chunk):
    text = "\r\n  [\n" + ",\n".join(json.dumps(item, ensure_ascii=False, indent=2) for item in ITEMS) + "\n]\n\n"
    path = _written(tmp_path, text)
    monkeypatch.setattr(json_array, "CHUNK", chunk)
    read = list(iter_json_objects(path))
    assert [item for _, item in read] == ITEMS
    normalised = text.replace("\r\n", "\n")
    assert [line for line, _ in read] == [normalised[:normalised.index(f'"id": "{i["id"]}"')].count("\n")
                                          for i in ITEMS]  # the line of each item's opening brace


@pytest.mark.parametrize("chunk", [3, 1 << 20])
@pytest.mark.parametrize("text, line, message", [
    ('[\n{"id": "a"},\n{"id": "b"\n]', 4, "malformed JSON"),  # where the ',' was expected
    ('[\n{"id": "a"},\n\n7\n]', 4, "expected a JSON object, got int"),
    ('[\n{"id": "a"}\n{"id": "b"}\n]', 3, "expected ',' or ']'"),
    ('[\n{"id": "a"}\n]\n\n{"extra": 1}', 5, "extra data after the array"),
    ('[\n{"id": "a"},\n{"id": "b", "input": "没有结尾', 3, "malformed JSON"),
])
def test_bad_arrays_name_the_line_at_every_chunk_size(tmp_path, monkeypatch, chunk, text, line, message):
    monkeypatch.setattr(json_array, "CHUNK", chunk)
    with pytest.raises(DataError) as caught:
        list(iter_json_objects(_written(tmp_path, text)))
    assert caught.value.line == line and message in str(caught.value)


def test_only_about_a_chunk_is_read_ahead_of_the_item(monkeypatch):
    class Counting(io.StringIO):
        read_chars = 0

        def read(self, size=-1):
            chunk = super().read(size)
            Counting.read_chars += len(chunk)
            return chunk

    monkeypatch.setattr(json_array, "CHUNK", 1000)
    items = [{"id": str(i), "input": "帖子" * 40} for i in range(2000)]
    handle = Counting(json.dumps(items, ensure_ascii=False))
    stream = json_array.iter_json_array(None, handle)
    next(stream)
    assert Counting.read_chars <= 2000  # a ~200 kB file, two chunks read at most for the first item
    assert sum(1 for _ in stream) == 1999
