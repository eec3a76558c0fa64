"""``mentalglm data inspect | convert`` and the mapping flags every data-reading command shares."""

from __future__ import annotations

import json

import pytest

from mentalglm.cli import build_parser, main

HIGH, LOW = "高自杀风险", "低自杀风险"


def _sos_csv(tmp_path, rows=None):
    """A SOS-HL-1K-style ``.csv`` that is really tab-separated, numeric labels (0 = low, 1 = high)."""
    rows = rows or [(1, 0, "今天去跑步了，感觉很好。"), (2, 1, "药已经攒够了，就这周五。"),
                    (3, 0, "作业太多想死😂"), (4, 1, "遗书写好了，再见了大家。" * 8)]
    path = tmp_path / "sos.csv"
    path.write_text("id\tlabel\tcomment\n" + "".join(f"{i}\t{l}\t{t}\n" for i, l, t in rows), encoding="utf-8")
    return path


LABEL_MAP = ["--label-map", f"0={LOW},1={HIGH}"]


def test_inspect_json_reports_detection_mapping_examples_and_distribution(tmp_path, capsys):
    path = _sos_csv(tmp_path)
    assert main(["data", "inspect", str(path), "--task", "suicide-risk", *LABEL_MAP, "--json"]) == 0
    document = json.loads(capsys.readouterr().out)
    source = document["source"]
    assert source["format"] == "tsv" and source["encoding"] == {"name": "utf-8", "how": "detected"}
    assert source["columns"] == ["id", "label", "comment"]
    assert source["mapping_given"] == {"label_map": {"0": LOW, "1": HIGH}}
    assert source["mapping_from"] == {"label_map": "--label-map"}
    assert document["schemas"] == [{"shape": "post", "text": {"field": "comment", "how": "auto-detected"},
                                    "label": {"field": "label", "how": "default"},
                                    "id": {"field": "id", "how": "default"}, "rows": 4}]
    assert document["label_distribution"] == {HIGH: 2, LOW: 2}
    assert [e["id"] for e in document["examples"]] == ["1", "2", "3", "4"]
    assert document["examples"][3]["text"].endswith("…") and len(document["examples"][3]["text"]) < 40
    assert document["examples"][0]["instruction_from"] == "the task"
    assert document["problems"] == [] and document["problems_total"] == 0


def test_inspect_collects_every_problem_with_its_line_and_exits_non_zero(tmp_path, capsys):
    rows = [(1, 0, "好"), (2, 7, "坏"), (3, 1, "想消失"), (3, 0, "重复"), (5, "", "没有标签"), (6, "x", "错")]
    path = _sos_csv(tmp_path, rows)
    assert main(["data", "inspect", str(path), "--task", "suicide-risk", *LABEL_MAP, "--json"]) == 1
    document = json.loads(capsys.readouterr().out)
    assert [(p["line"], p["field"]) for p in document["problems"]] == [(3, "label"), (5, "id"), (7, "label")]
    assert document["problems"][0]["error"].startswith(f"{path}:3: field 'label': raw value '7' is not in the "
                                                       "label map")
    assert document["posts"] == 3 and document["unlabelled"] == 1
    assert main(["data", "inspect", str(path), "--task", "suicide-risk", *LABEL_MAP, "--max-problems", "1"]) == 1
    out = capsys.readouterr().out
    assert "problems: 3 (first 1 shown)" in out and f"{path}:3: field 'label'" in out and ":5:" not in out


def test_inspect_human_output_says_which_column_and_encoding(tmp_path, capsys):
    path = tmp_path / "hl.tsv"
    path.write_bytes("0\t1\t今天天气不错\n1\t0\t我想结束这一切\n".encode("gb18030"))
    assert main(["data", "inspect", str(path), "--task", "suicide-risk", "--columns", f"{HIGH},{LOW},text"]) == 0
    out = capsys.readouterr().out
    assert "encoding gb18030 (detected)" in out
    assert f"label one-hot columns {HIGH}, {LOW} (--columns)" in out and "id position in the file" in out
    assert "我想结束这一切" in out and f"{HIGH}  1" in out


def test_inspect_says_when_the_whole_human_turn_is_the_post(tmp_path, capsys):
    path = tmp_path / "sg.jsonl"
    path.write_text(json.dumps({"conversations": [{"from": "human", "value": "请判断：我不想活了"},
                                                  {"from": "gpt", "value": HIGH}]}, ensure_ascii=False) + "\n",
                    encoding="utf-8")
    assert main(["data", "inspect", str(path), "--task", "suicide-risk", "--json"]) == 0
    document = json.loads(capsys.readouterr().out)
    assert any("the whole human turn is the post and the task's instruction is used" in n for n in document["notes"])
    assert document["schemas"][0]["shape"] == "sharegpt"


def test_convert_posts_and_cimhi(tmp_path, capsys, tasks):
    path = _sos_csv(tmp_path)
    out = tmp_path / "posts.jsonl"
    assert main(["data", "convert", str(path), "--task", "suicide-risk", *LABEL_MAP, "-o", str(out), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["written"] == 4 and summary["to"] == "posts"
    second = json.loads(out.read_text(encoding="utf-8").splitlines()[1])
    assert second == {"id": "2", "text": "药已经攒够了，就这周五。", "label": HIGH}
    records = tmp_path / "train.jsonl"
    assert main(["data", "convert", str(path), "--task", "suicide-risk", *LABEL_MAP, "-o", str(records),
                 "--to", "cimhi"]) == 0
    assert "wrote 4 C-IMHI records" in capsys.readouterr().out
    first = json.loads(records.read_text(encoding="utf-8").splitlines()[0])
    assert first == {"id": "1", "instruction": tasks["suicide-risk"].instruction, "input": "今天去跑步了，感觉很好。",
                     "output": f"标签：{LOW}"}


def test_convert_refuses_to_overwrite_its_input(tmp_path, capsys):
    path = _sos_csv(tmp_path)
    assert main(["data", "convert", str(path), "--task", "suicide-risk", *LABEL_MAP, "-o", str(path)]) == 1
    assert "would overwrite the input" in capsys.readouterr().err


def _replay(tmp_path, ids, label=LOW):
    path = tmp_path / "outputs.jsonl"
    path.write_text("".join(json.dumps({"id": i, "output": f"标签：{label}\n解释：……"}, ensure_ascii=False) + "\n"
                            for i in ids), encoding="utf-8")
    return path


def test_a_changed_mapping_is_refused_on_rerun(tmp_path, capsys):
    path = _sos_csv(tmp_path)
    replay = _replay(tmp_path, ["1", "2", "3", "4"])
    out = tmp_path / "run"
    args = ["evaluate", "--task", "suicide-risk", "--data", str(path), "--backend", "replay", "--model", str(replay),
            "--output-dir", str(out), "--bootstrap", "0", "--json"]
    assert main([*args, *LABEL_MAP]) == 0
    first = json.loads(capsys.readouterr().out)
    assert first["counts"]["posts"] == 4
    assert main([*args, *LABEL_MAP]) == 0  # the same mapping resumes
    assert json.loads(capsys.readouterr().out)["counts"]["resumed"] == 4
    # Flipping the map changes the gold answers of the same bytes: the run record's posts digest refuses it.
    assert main([*args, "--label-map", f"0={HIGH},1={LOW}"]) == 1
    err = capsys.readouterr().err
    assert "records predictions made with other settings: posts_sha256" in err and err.count("\n") == 1


def test_analyze_input_takes_the_mapping_flags_and_a_card(tmp_path, capsys):
    path = _sos_csv(tmp_path)
    card = tmp_path / "sos.yaml"
    card.write_text(f"path: sos.csv\ntext_field: comment\nlabel_map: {{0: {LOW}, 1: {HIGH}}}\n", encoding="utf-8")
    replay = _replay(tmp_path, ["1", "2", "3", "4"], HIGH)
    for spec in (str(card), str(path)):
        extra = [] if spec.endswith(".yaml") else LABEL_MAP
        assert main(["analyze", "--task", "suicide-risk", "--input", spec, *extra, "--backend", "replay",
                     "--model", str(replay), "--json"]) == 0
        lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
        assert [(p["id"], p["gold"]) for p in lines] == [("1", [LOW]), ("2", [HIGH]), ("3", [LOW]), ("4", [HIGH])]


def test_every_data_command_has_the_same_mapping_flags():
    parser = build_parser()
    flags = ["--text-field", "comment", "--label-field", "label", "--id-field", "id", "--label-map", "0=低自杀风险",
             "--columns", "a,b", "--encoding", "gb18030", "--format", "tsv"]
    commands = {"analyze": ["analyze", "--task", "t"], "evaluate": ["evaluate", "--task", "t", "--data", "f",
                                                                    "--output-dir", "d"],
                "bench": ["bench", "--task", "t", "--data", "f", "--model", "m"],
                "inspect": ["data", "inspect", "f", "--task", "t"],
                "convert": ["data", "convert", "f", "--task", "t", "-o", "o"]}
    from mentalglm.cli.common import data_mapping

    for argv in commands.values():
        mapping = data_mapping(parser.parse_args([*argv, *flags]))
        assert mapping.describe() == {"format": "tsv", "encoding": "gb18030", "text_field": "comment",
                                      "label_field": "label", "id_field": "id", "label_map": {"0": "低自杀风险"},
                                      "columns": ["a", "b"]}
    assert data_mapping(parser.parse_args(commands["analyze"])) is None


@pytest.mark.parametrize("flags, message", [
    (["--label-map", "0低自杀风险"], "--label-map: expected RAW=LABEL pairs"),
    (["--label-map", "0=低自杀风险,0=高自杀风险"], "--label-map: raw value '0' is mapped twice"),
    (["--columns", "a,,b"], "--columns: expected comma-separated column names"),
])
def test_malformed_mapping_flags_are_one_line_errors(tmp_path, capsys, flags, message):
    path = _sos_csv(tmp_path)
    assert main(["data", "inspect", str(path), "--task", "suicide-risk", *flags]) == 1
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
