"""Data as the field ships it: every format read, converted and scored against gold the test writes itself.

Each case writes a file in one distributed shape (chat JSONL, a tab-separated ``.csv`` with numeric
labels, headerless GB18030 one-hot TSV, multi-label one-hot TSV, ShareGPT in UTF-16, GBK C-IMHI,
Parquet behind a dataset card, ``save_to_disk`` and Hub-layout folders) from the case's own list of
``(id, text, gold, instruction)``. For each: the posts read must equal that list; converting to posts
JSONL and reading back must too; an oracle replay (outputs = the gold rendered in the task's format)
must score exactly 1.0 with ``evaluate``; a random replay must score what scikit-learn says.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field

import pytest

from mentalglm.cli import main
from mentalglm.core.errors import DataError, MentalGLMError
from mentalglm.core.prediction import posts_digest
from mentalglm.data.mapping import DataMapping, parse_columns, parse_label_map
from mentalglm.data.readers import PostSource, iter_posts, open_source, read_posts, read_records

SUICIDE_SYSTEM = "你是心理健康分析助手，请你进行高低自杀风险预测。"
HIGH, LOW = "高自杀风险", "低自杀风险"
SUICIDE_POSTS = [
    ("今天和朋友去爬山，风景很好，心情不错。", LOW),
    ("药已经攒够了，这周五就是最后一天。", HIGH),
    ("作业写不完真的想死😂，明天还要交报告", LOW),
    ("我不想活了，遗书已经写好放在抽屉里。", HIGH),
    ("他说“活着没意思”，但我觉得他只是累了。", LOW),
    ("最近睡不好，但在看医生，慢慢会好的。", LOW),
    ("已经查好了哪座桥最高，没有人会想我。", HIGH),
    ("加班到凌晨，打工人的命也是命啊哈哈", LOW),
    ("我想结束这一切，再也撑不下去了𠮷。", HIGH),
    ("周末去看了电影，推荐大家去看！", LOW),
]
DISTORTIONS = ("非此即彼", "以偏概全", "心理过滤", "否定正面思考", "读心术", "先知错误", "放大", "情绪化推理",
               "应该式", "乱贴标签", "罪责归己", "罪责归他")
DISTORTION_POSTS = [
    ("他们肯定都在背后笑我，都怪他们。", ("读心术", "罪责归他")),
    ("普通的一天，吃了顿好饭。", ()),
    ("这次考砸了，我这辈子都完了。", ("以偏概全", "放大")),
    ("我应该做到完美，不然就是失败者。", ("非此即彼", "应该式", "乱贴标签")),
    ("今天天气不错，出去散步。", ()),
    ("我觉得自己很没用，所以我一定很没用。", ("情绪化推理",)),
    ("面试肯定过不了，去了也白去。", ("先知错误",)),
    ("项目失败全是我的错。", ("罪责归己",)),
    ("虽然被表扬了，但那只是运气。", ("否定正面思考",)),
    ("只记得那一句批评，其他都不重要。", ("心理过滤",)),
]


@dataclass
class Case:
    """One distributed shape: where it is, the flags it needs, and the gold the test wrote."""

    spec: str
    task: str
    expected: list  # (id, text, gold tuple, instruction or None)
    flags: list = field(default_factory=list)

    def mapping(self) -> DataMapping | None:
        from mentalglm.cli import build_parser
        from mentalglm.cli.common import data_mapping

        args = build_parser().parse_args(["data", "inspect", self.spec, "--task", self.task, *self.flags])
        return data_mapping(args)


def _jsonl(path, objects, *, newline="\n", encoding="utf-8"):
    text = newline.join(json.dumps(o, ensure_ascii=False) for o in objects) + newline
    path.write_bytes(text.encode(encoding))
    return path


def chat_jsonl(tmp_path):
    objects, expected = [], []
    for i, (text, label) in enumerate(SUICIDE_POSTS, 1):
        objects.append({"messages": [{"role": "system", "content": SUICIDE_SYSTEM}, {"role": "user", "content": text},
                                     {"role": "assistant", "content": label}]})  # label-only answers
        expected.append((str(i), text, (label,), SUICIDE_SYSTEM))
    return Case(str(_jsonl(tmp_path / "sos_chat.jsonl", objects)), "suicide-risk", expected)


def chat_without_system_crlf(tmp_path):
    objects, expected = [], []
    for i, (text, label) in enumerate(SUICIDE_POSTS, 1):
        objects.append({"id": f"c{i}", "messages": [{"role": "user", "content": [{"type": "text", "text": text}]},
                                                    {"role": "assistant", "content": f"标签：{label}\n解释：……"}]})
        expected.append((f"c{i}", text, (label,), None))
    return Case(str(_jsonl(tmp_path / "chat.jsonl", objects, newline="\r\n")), "suicide-risk", expected)


def tsv_named_csv_numeric_labels(tmp_path):
    lines, expected = ["id\tlabel\tcomment"], []
    for i, (text, label) in enumerate(SUICIDE_POSTS, 101):
        lines.append(f"{i}\t{1 if label == HIGH else 0}\t{text}")
        expected.append((str(i), text, (label,), None))
    path = tmp_path / "SOS-HL-1K.csv"
    path.write_bytes(("\r\n".join(lines) + "\r\n").encode("utf-8"))
    return Case(str(path), "suicide-risk", expected, ["--label-map", f"0={LOW},1={HIGH}"])


def headerless_gb18030_onehot(tmp_path):
    rows, expected = [], []
    for i, (text, label) in enumerate(SUICIDE_POSTS, 1):
        rows.append(f"{int(label == HIGH)}\t{int(label == LOW)}\t{text}")
        expected.append((str(i), text, (label,), None))
    path = tmp_path / "hl.tsv"
    path.write_bytes(("\n".join(rows) + "\n").encode("gb18030"))  # 𠮷 needs GB18030's four-byte form
    return Case(str(path), "suicide-risk", expected,
                ["--columns", f"{HIGH},{LOW},text"])


def onehot_multilabel_bom(tmp_path):
    lines, expected = ["\t".join([*DISTORTIONS, "内容"])], []
    for i, (text, labels) in enumerate(DISTORTION_POSTS, 1):
        lines.append("\t".join(["1" if d in labels else "0" for d in DISTORTIONS] + [text]))
        expected.append((str(i), text, labels, None))
    path = tmp_path / "SocialCD-3K.tsv"
    path.write_bytes(("\ufeff" + "\r\n".join(lines) + "\r\n").encode("utf-8"))
    return Case(str(path), "cognitive-distortion", expected)


def sharegpt_utf16_array(tmp_path):
    items, expected = [], []
    for i, (text, label) in enumerate(SUICIDE_POSTS, 1):
        items.append({"system": SUICIDE_SYSTEM,
                      "conversations": [{"from": "human", "value": text},
                                        {"from": "gpt", "value": f"标签：{label}\n解释：依据帖子内容判断。"}]})
        expected.append((str(i), text, (label,), SUICIDE_SYSTEM))
    path = tmp_path / "sharegpt.json"
    path.write_bytes(json.dumps(items, ensure_ascii=False, indent=2).encode("utf-16"))  # with its BOM
    return Case(str(path), "suicide-risk", expected)


def sharegpt_no_system_multilabel(tmp_path):
    objects, expected = [], []
    for i, (text, labels) in enumerate(DISTORTION_POSTS, 1):
        objects.append({"conversations": [{"from": "human", "value": text},
                                          {"from": "gpt", "value": "、".join(labels) or "无"}]})
        expected.append((str(i), text, labels, None))
    return Case(str(_jsonl(tmp_path / "llama_factory.jsonl", objects)), "cognitive-distortion", expected)


def cimhi_gbk_given(tmp_path):
    objects, expected = [], []
    instruction = "评估这个帖子的自杀风险。"
    gbk_posts = [(t, label) for t, label in SUICIDE_POSTS if "😂" not in t and "𠮷" not in t]  # not in GBK
    for i, (text, label) in enumerate(gbk_posts, 1):
        objects.append({"id": f"r{i}", "instruction": instruction, "input": text,
                        "output": f"标签：{label}\n解释：略。"})
        expected.append((f"r{i}", text, (label,), instruction))
    return Case(str(_jsonl(tmp_path / "cimhi.jsonl", objects, encoding="gbk")), "suicide-risk", expected,
                ["--encoding", "gbk"])


def card_for_gb18030_table(tmp_path):
    folder = tmp_path / "dataset"
    (folder / "data").mkdir(parents=True)
    lines, expected = ["编号\t风险\t微博"], []
    for i, (text, label) in enumerate(SUICIDE_POSTS, 1):
        lines.append(f"w{i}\t{'high' if label == HIGH else 'low'}\t{text}")
        expected.append((f"w{i}", text, (label,), None))
    (folder / "data" / "train.txt").write_bytes(("\n".join(lines) + "\n").encode("gb18030"))
    (folder / "card.yaml").write_text("# SOS-HL style export\npath: data/train.txt\nformat: tsv\n"
                                      "encoding: gb18030\ntext_field: 微博\nlabel_field: 风险\nid_field: 编号\n"
                                      f"label_map: {{high: {HIGH}, low: 低风险}}\n", encoding="utf-8")
    return Case(str(folder / "card.yaml"), "suicide-risk", expected)


def parquet_through_card(tmp_path):
    pa = pytest.importorskip("pyarrow", reason="Parquet needs pyarrow (pip install 'mentalglm[hf]')")
    import pyarrow.parquet as pq

    rows, expected = [], []
    for i, (text, label) in enumerate(SUICIDE_POSTS, 1):
        rows.append({"post_id": i, "内容": text, "risk": int(label == HIGH)})
        expected.append((str(i), text, (label,), None))
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "sos.parquet")
    (tmp_path / "sos.yaml").write_text(f"path: sos.parquet\nid_field: post_id\nlabel_field: risk\n"
                                       f"label_map: {{0: {LOW}, 1: {HIGH}}}\n", encoding="utf-8")
    return Case(str(tmp_path / "sos.yaml"), "suicide-risk", expected)


def hf_save_to_disk(tmp_path):
    datasets = pytest.importorskip("datasets", reason="writing a save_to_disk folder needs datasets")
    items, expected = [], []
    for i, (text, labels) in enumerate(DISTORTION_POSTS, 1):
        items.append({"id": f"d{i}", "messages": [{"role": "user", "content": text},
                                                  {"role": "assistant", "content": "、".join(labels) or "无"}]})
        expected.append((f"d{i}", text, labels, None))
    datasets.DatasetDict({"train": datasets.Dataset.from_list(items[:4]),
                          "test": datasets.Dataset.from_list(items)}).save_to_disk(str(tmp_path / "cd_dataset"))
    return Case(f"hf:{tmp_path / 'cd_dataset'}:test", "cognitive-distortion", expected)


def hf_hub_layout_parquet(tmp_path):
    pa = pytest.importorskip("pyarrow", reason="Parquet needs pyarrow (pip install 'mentalglm[hf]')")
    import pyarrow.parquet as pq

    folder = tmp_path / "repo" / "data"
    folder.mkdir(parents=True)
    rows = [{"text": t, "label": label} for t, label in SUICIDE_POSTS]
    pq.write_table(pa.Table.from_pylist(rows[:3]), folder / "train-00000-of-00001.parquet")
    pq.write_table(pa.Table.from_pylist(rows[3:6]), folder / "validation-00000-of-00002.parquet")
    pq.write_table(pa.Table.from_pylist(rows[6:]), folder / "validation-00001-of-00002.parquet")
    expected = [(str(i), t, (label,), None) for i, (t, label) in enumerate(SUICIDE_POSTS[3:], 1)]
    return Case(f"hf:{tmp_path / 'repo'}:validation", "suicide-risk", expected)


CASES = [chat_jsonl, chat_without_system_crlf, tsv_named_csv_numeric_labels, headerless_gb18030_onehot,
         onehot_multilabel_bom, sharegpt_utf16_array, sharegpt_no_system_multilabel, cimhi_gbk_given,
         card_for_gb18030_table, parquet_through_card, hf_save_to_disk, hf_hub_layout_parquet]


@pytest.fixture(params=CASES, ids=[c.__name__ for c in CASES])
def case(request, tmp_path):
    return request.param(tmp_path)


def _seen(posts):
    return [(p.id, p.text, p.gold, p.instruction) for p in posts]


def test_posts_equal_the_gold_the_file_was_written_from(case, tasks):
    assert _seen(read_posts(case.spec, tasks[case.task], case.mapping())) == case.expected


def test_convert_to_posts_reads_back_identically(case, tasks, tmp_path, capsys):
    out = tmp_path / "converted" / "posts.jsonl"
    assert main(["data", "convert", case.spec, "--task", case.task, *case.flags, "-o", str(out)]) == 0
    assert f"wrote {len(case.expected)} posts" in capsys.readouterr().out
    assert _seen(read_posts(out, tasks[case.task])) == case.expected
    first = json.loads(out.read_text(encoding="utf-8").splitlines()[0])
    assert isinstance(first["label"], list if tasks[case.task].multi_label else str)


def test_convert_to_cimhi_records_states_the_gold(case, tasks, tmp_path, capsys):
    task = tasks[case.task]
    out = tmp_path / "train.jsonl"
    assert main(["data", "convert", case.spec, "--task", case.task, *case.flags, "-o", str(out), "--to", "cimhi"]) == 0
    records = read_records(out)
    assert [(r.id, r.input, task.gold_from_output(r.output), r.instruction) for r in records] == [
        (i, text, gold, instruction or task.instruction) for i, text, gold, instruction in case.expected]
    # Every training target is in the task's own answer format (label-only answers are rendered).
    assert all(task.parse(r.output, strict=True).valid for r in records)


def _evaluate(case, outputs, tmp_path, name, capsys) -> dict:
    replay = tmp_path / f"{name}.outputs.jsonl"
    _jsonl(replay, [{"id": i, "output": o} for i, o in outputs.items()])
    code = main(["evaluate", "--task", case.task, "--data", case.spec, *case.flags, "--backend", "replay",
                 "--model", str(replay), "--output-dir", str(tmp_path / name), "--bootstrap", "0", "--json"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return json.loads(captured.out)["metrics"]


def test_oracle_replay_scores_exactly_one(case, tasks, tmp_path, capsys):
    answer = tasks[case.task].response_format()
    metrics = _evaluate(case, {i: answer.render(gold) for i, _, gold, _ in case.expected}, tmp_path, "oracle", capsys)
    assert metrics["invalid"] == 0
    if tasks[case.task].multi_label:
        assert metrics["micro_f1"] == 1.0 and metrics["exact_match"] == 1.0 and metrics["hamming_loss"] == 0.0
    else:
        assert metrics["accuracy"] == 1.0 and metrics["weighted_f1"] == 1.0 and metrics[f"f1[{HIGH}]"] == 1.0


def test_random_replay_equals_scikit_learn(case, tasks, tmp_path, capsys):
    from sklearn.metrics import accuracy_score, f1_score
    from sklearn.preprocessing import MultiLabelBinarizer

    task = tasks[case.task]
    answer = task.response_format()
    rng = random.Random(len(case.expected) * 7 + len(case.spec))
    golds, predicted, outputs = [], [], {}
    for post_id, _, gold, _ in case.expected:
        golds.append(gold)
        if rng.random() < 0.15:
            outputs[post_id], guess = "这个我说不好。", None  # invalid: scored as wrong
        elif task.multi_label:
            guess = tuple(d for d in DISTORTIONS if rng.random() < 0.25)
            outputs[post_id] = answer.render(guess)
        else:
            guess = (rng.choice([HIGH, LOW]),)
            outputs[post_id] = answer.render(guess)
        predicted.append(guess)
    metrics = _evaluate(case, outputs, tmp_path, "random", capsys)
    assert metrics["invalid"] == sum(p is None for p in predicted)
    if task.multi_label:
        binarizer = MultiLabelBinarizer(classes=list(DISTORTIONS))
        y_true = binarizer.fit_transform([list(g) for g in golds])
        y_pred = binarizer.transform([list(p or ()) for p in predicted])
        for average in ("micro", "macro", "samples"):
            assert metrics[f"{average}_f1"] == pytest.approx(f1_score(y_true, y_pred, average=average,
                                                                      zero_division=0), abs=1e-12)
    else:
        y_true = [g[0] for g in golds]
        y_pred = [p[0] if p else "<invalid>" for p in predicted]
        assert metrics["accuracy"] == pytest.approx(accuracy_score(y_true, y_pred), abs=1e-12)
        assert metrics["weighted_f1"] == pytest.approx(
            f1_score(y_true, y_pred, labels=[HIGH, LOW], average="weighted", zero_division=0), abs=1e-12)
        assert metrics[f"f1[{HIGH}]"] == pytest.approx(
            f1_score(y_true, y_pred, labels=[HIGH], average="macro", zero_division=0), abs=1e-12)


def test_streamed_digest_equals_the_list_digest(case, tasks):
    source = PostSource(case.spec, tasks[case.task], case.mapping())
    digest, count = source.digest()
    assert (digest, count) == (posts_digest(read_posts(case.spec, tasks[case.task], case.mapping())),
                               len(case.expected))
    assert [p.id for p in source] == [e[0] for e in case.expected]  # a second pass reads the same posts


# -- what detection reports ----------------------------------------------------------------------
def test_detection_reports_format_encoding_delimiter_and_columns(tmp_path, tasks):
    info = open_source(tsv_named_csv_numeric_labels(tmp_path).spec).describe()
    assert info["format"] == "tsv" and info["encoding"] == {"name": "utf-8", "how": "detected"}
    assert info["columns"] == ["id", "label", "comment"]
    assert any("tab-separated although its extension says csv" in n for n in info["notes"])
    gb = open_source(headerless_gb18030_onehot(tmp_path).spec, DataMapping(columns=("a", "b", "c"))).describe()
    assert gb["encoding"] == {"name": "gb18030", "how": "detected"}
    utf16 = open_source(sharegpt_utf16_array(tmp_path).spec).describe()
    assert utf16["encoding"] == {"name": "utf-16-le", "how": "BOM"} and utf16["format"] == "json array"
    bom = open_source(onehot_multilabel_bom(tmp_path).spec).describe()
    assert bom["encoding"]["how"] == "BOM" and bom["columns"][0] == "非此即彼"  # the mark is not in the name


def test_label_only_assistant_answers_parse_with_every_built_in_classification_task(tasks):
    for name in ("depression", "suicide-risk", "cognitive-distortion"):
        task = tasks[name]
        for label in task.label_names:
            assert task.gold_from_output(label) == (label,)
    assert tasks["cognitive-distortion"].gold_from_output("读心术、放大") == ("读心术", "放大")
    assert tasks["cognitive-distortion"].gold_from_output("无") == ()


def test_bare_quotes_in_a_tsv_stay_part_of_the_post(tmp_path, tasks):
    path = tmp_path / "q.tsv"
    path.write_text('text\tlabel\n他说"活着没意思"，我很担心\t低自杀风险\n"引号开头"的帖子\t高自杀风险\n',
                    encoding="utf-8")
    assert [p.text for p in read_posts(path, tasks["suicide-risk"])] == ['他说"活着没意思"，我很担心',
                                                                       '"引号开头"的帖子']
    quoted = tmp_path / "pandas.tsv"  # what pandas writes: a field holding a tab or quote is quoted
    quoted.write_text('text\tlabel\n"含\t制表符"\t低自杀风险\n"""全引号"""\t高自杀风险\n', encoding="utf-8")
    assert [p.text for p in read_posts(quoted, tasks["suicide-risk"])] == ["含\t制表符", '"全引号"']


def test_common_text_column_names_are_detected_and_said(tmp_path, tasks):
    from mentalglm.data.inspect import inspect_data

    path = tmp_path / "weibo.csv"
    path.write_text("编号,微博,标签\n1,今天很开心,非抑郁\n2,什么都不想做,抑郁\n", encoding="utf-8")
    posts = read_posts(path, tasks["depression"])
    assert [(p.text, p.gold) for p in posts] == [("今天很开心", ("非抑郁",)), ("什么都不想做", ("抑郁",))]
    schema = inspect_data(path, tasks["depression"])["schemas"][0]
    assert schema["text"] == {"field": "微博", "how": "auto-detected"}
    assert schema["label"] == {"field": "标签", "how": "auto-detected"}


# -- errors: one line naming file, line and field --------------------------------------------------
@pytest.mark.parametrize("rows, flags, message", [
    ("id\tlabel\ttext\n1\t0\t好\n2\t2\t坏\n", ["--label-map", "0=低自杀风险,1=高自杀风险"],
     r"x.tsv:3: field 'label': raw value '2' is not in the label map \(--label-map maps 0, 1\)"),
    ("id\tlabel\ttext\n1\t0\t好\n", [], r"x.tsv:2: field 'label': '0' is not a label .*--label-map"),
    ("高\t低\ttext\n", ["--columns", "高自杀风险,低自杀风险,text"], r"x.tsv:1: field '高自杀风险': expected 0 or 1"),
    ("1\t1\t帖子\n", ["--columns", "高自杀风险,低自杀风险,text"],
     r"x.tsv:1: field '高自杀风险': several one-hot label columns are 1 \(高自杀风险, 低自杀风险\)"),
    ("0\t0\t帖子\n", ["--columns", "高自杀风险,低自杀风险,text"],
     r"x.tsv:1: field '高自杀风险': no one-hot label column"),
    ("0\t1\n", ["--columns", "高自杀风险,低自杀风险,text"],
     r"x.tsv:1: expected 3 columns, found 2 \(--columns names 3\)"),
    ("a\tb\n1\t2\n", ["--text-field", "post"], r"x.tsv:1: field 'post': named by --text-field but not a column"),
    ("a\tb\n1\t2\n", [], r"x.tsv:1: field 'text': missing from the header \(columns: a, b\).*--text-field"),
])
def test_bad_table_rows_are_one_line_errors(tmp_path, tasks, rows, flags, message, capsys):
    path = tmp_path / "x.tsv"
    path.write_text(rows, encoding="utf-8")
    assert main(["data", "convert", str(path), "--task", "suicide-risk", *flags, "-o", str(tmp_path / "o.jsonl")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    import re

    assert re.search(message, err), err
    assert not (tmp_path / "o.jsonl").exists() and not list(tmp_path.glob(".o.jsonl*"))


def test_zero_label_one_hot_rows_are_valid_for_multi_label_tasks(tmp_path, tasks):
    path = tmp_path / "cd.tsv"
    path.write_text("\t".join([*DISTORTIONS, "内容"]) + "\n" + "\t".join(["0"] * 12 + ["无事发生"]) + "\n"
                    + "\t".join(["True"] + ["False"] * 11 + ["非黑即白"]) + "\n", encoding="utf-8")
    assert [p.gold for p in read_posts(path, tasks["cognitive-distortion"])] == [(), ("非此即彼",)]


def test_one_hot_headers_may_be_aliases(tmp_path, tasks):
    path = tmp_path / "en.csv"
    path.write_text("text,high risk,low risk\n想消失,1,0\n还好,0,1\n", encoding="utf-8")
    assert [p.gold for p in read_posts(path, tasks["suicide-risk"])] == [(HIGH,), (LOW,)]


@pytest.mark.parametrize("data, message", [
    (b'{"text": "ok"}\n{"text": "\xff\xfe\xfd"}\n',
     r"u.jsonl:2: not valid UTF-8 nor GB18030 \(byte 0xff at file offset 25\)"),
    ("{\"text\": \"好\"}\n".encode("utf-16-le") * 3, r"u.jsonl: looks like UTF-16 without a byte-order mark"),
])
def test_bytes_that_fit_no_encoding_name_line_and_byte(tmp_path, tasks, data, message):
    path = tmp_path / "u.jsonl"
    path.write_bytes(data)
    with pytest.raises(DataError, match=message):
        read_posts(path, tasks["depression"])


def test_a_bad_byte_after_the_detected_start_names_its_line(tmp_path, tasks, monkeypatch):
    from mentalglm.data import encodings

    monkeypatch.setattr(encodings, "SNIFF_BYTES", 64)  # detection sees only the clean start
    path = tmp_path / "late.jsonl"
    path.write_bytes(b'{"text": "ok"}\n' * 10 + '{"text": "坏"}\n'.encode("gbk"))
    with pytest.raises(DataError, match=r"late.jsonl:11: not valid utf-8 \(byte 0xbb at file offset 160\); "
                                        r"the file's start decoded as UTF-8 .*--encoding gb18030"):
        read_posts(path, tasks["depression"])
    assert [p.text for p in read_posts(path, tasks["depression"], DataMapping(encoding="gb18030"))][-1] == "坏"


def test_given_encoding_is_strict(tmp_path, tasks):
    path = tmp_path / "p.jsonl"
    path.write_text('{"text": "好累"}\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"p.jsonl:1: not valid ascii"):
        read_posts(path, tasks["depression"], DataMapping(encoding="ascii"))
    with pytest.raises(MentalGLMError, match="unknown encoding 'klingon'"):
        read_posts(path, tasks["depression"], DataMapping(encoding="klingon"))


@pytest.mark.parametrize("obj, message", [
    ({"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "低自杀风险"},
                   {"role": "user", "content": "b"}]}, r"field 'messages\[2\]': a second user turn"),
    ({"messages": [{"role": "tool", "content": "a"}]}, r"field 'messages\[0\].role': unknown speaker 'tool'"),
    ({"messages": [{"role": "user", "content": "想消失"}, {"role": "assistant", "content": "不清楚"}]},
     r"field 'messages\[1\].content': no label of task 'suicide-risk'"),
    ({"conversations": [{"from": "gpt", "value": "低自杀风险"}]},
     r"field 'conversations\[0\]': an assistant turn before"),
    ({"conversations": [{"from": "human", "value": "  "}]}, r"field 'conversations\[0\].value': empty"),
])
def test_bad_conversations_name_the_turn(tmp_path, tasks, obj, message):
    path = _jsonl(tmp_path / "c.jsonl", [obj])
    with pytest.raises(DataError, match=r"c.jsonl:1: " + message):
        read_posts(path, tasks["suicide-risk"])


# -- streaming and ids ---------------------------------------------------------------------------
def test_iter_posts_streams_a_bad_line_at_the_end_is_met_only_when_reached(tmp_path, tasks):
    path = tmp_path / "big.jsonl"
    path.write_text("".join(f'{{"text": "帖子{i}"}}\n' for i in range(1, 2001)) + "{broken\n", encoding="utf-8")
    stream = iter_posts(path, tasks["depression"])
    assert next(stream).text == "帖子1"  # nothing past the first line had to be parsed
    stream.close()
    with pytest.raises(DataError, match=r"big.jsonl:2001: malformed JSON"):
        read_posts(path, tasks["depression"])


@pytest.mark.parametrize("lines, message", [
    (['{"text": "a"}', '{"text": "b"}', '{"id": "1", "text": "c"}'],
     r":3: field 'id': duplicate id '1' \(first on line 1\)"),
    (['{"id": "x", "text": "a"}', '{"text": "b"}', '{"id": "2", "text": "c"}'],
     r":3: field 'id': duplicate id '2' \(first on line 2\)"),
    (['{"id": "x", "text": "a"}', '{"id": "y", "text": "b"}', '{"id": "x", "text": "c"}'],
     r":3: field 'id': duplicate id 'x' \(first on line 1\)"),
])
def test_duplicate_ids_positional_or_explicit(tmp_path, tasks, lines, message):
    path = tmp_path / "d.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(DataError, match=message):
        read_posts(path, tasks["depression"])


def test_a_hash_collision_never_rejects_distinct_ids(tmp_path, tasks, monkeypatch):
    from mentalglm.data import readers as data

    monkeypatch.setattr(data._IdIndex, "_slot_hash", lambda self, post_id: 42)  # every id collides
    path = tmp_path / "ids.jsonl"
    path.write_text("".join(f'{{"id": "p{i}", "text": "帖子"}}\n' for i in range(30)), encoding="utf-8")
    assert len(read_posts(path, tasks["depression"])) == 30
    path.write_text(path.read_text(encoding="utf-8") + '{"id": "p7", "text": "again"}\n', encoding="utf-8")
    with pytest.raises(DataError, match=r":31: field 'id': duplicate id 'p7' \(first on line 8\)"):
        read_posts(path, tasks["depression"])


# -- dataset cards and the optional extra ---------------------------------------------------------
def test_card_keys_are_checked_and_flags_override_them(tmp_path, tasks):
    case = card_for_gb18030_table(tmp_path)
    card = tmp_path / "dataset" / "card.yaml"
    override = DataMapping(label_map=parse_label_map(f"high={LOW},low={HIGH}"), origin={"label_map": "--label-map"})
    flipped = read_posts(card, tasks["suicide-risk"], override)
    assert [p.gold for p in flipped] == [((LOW,) if g == (HIGH,) else (HIGH,)) for _, _, g, _ in case.expected]
    card.write_text(card.read_text(encoding="utf-8") + "tex_field: x\n", encoding="utf-8")
    with pytest.raises(MentalGLMError, match=r"unknown key in card.yaml 'tex_field'. Did you mean 'text_field'\?"):
        read_posts(card, tasks["suicide-risk"])
    card.write_text("label_field: x\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"card.yaml: field 'path': missing"):
        read_posts(card, tasks["suicide-risk"])


def test_a_label_map_value_outside_the_task_is_refused_up_front(tmp_path, tasks):
    path = tmp_path / "p.tsv"
    path.write_text("label\ttext\n0\t好\n", encoding="utf-8")
    with pytest.raises(MentalGLMError, match=r"--label-map: 0=中风险: '中风险' is not a label of task 'suicide-risk'"):
        read_posts(path, tasks["suicide-risk"], DataMapping(label_map={"0": "中风险"}, origin={}))


def test_missing_pyarrow_is_a_one_line_error_naming_the_install(tmp_path, tasks, monkeypatch):
    import sys

    path = tmp_path / "p.parquet"
    path.write_bytes(b"PAR1")
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    with pytest.raises(MentalGLMError, match=r"reading Parquet needs pyarrow: pip install 'mentalglm\[hf\]'"):
        read_posts(path, tasks["depression"])


def test_a_hub_name_without_datasets_says_which_install(tasks, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "datasets", None)
    with pytest.raises(MentalGLMError, match=r"not a local folder; reading a Hub dataset needs datasets: "
                                             r"pip install 'mentalglm\[hf\]'"):
        read_posts("hf:someone/sos-hl-1k:train", tasks["suicide-risk"])


def test_local_datasets_folders_never_import_datasets(tmp_path):
    pytest.importorskip("pyarrow", reason="Parquet needs pyarrow")
    import subprocess
    import sys

    case = hf_hub_layout_parquet(tmp_path)
    script = ("import sys; from mentalglm.data.readers import read_posts; "
              f"n = len(read_posts({case.spec!r})); print(n, 'datasets' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                            env={**__import__("os").environ, "MENTALGLM_LOAD_PLUGINS": "", "HF_HUB_OFFLINE": "1"})
    assert result.stdout.split() == [str(len(case.expected)), "False"], result.stderr


def test_a_folder_with_several_splits_needs_one_named(tmp_path, tasks):
    pytest.importorskip("pyarrow", reason="Parquet needs pyarrow")
    case = hf_hub_layout_parquet(tmp_path)
    with pytest.raises(MentalGLMError, match=r"holds splits train, validation: name one, e.g. hf:.*:train"):
        read_posts(case.spec.rsplit(":", 1)[0], tasks["suicide-risk"])
    with pytest.raises(DataError, match=r"no split 'test' \(splits: train, validation\)"):
        read_posts(case.spec.rsplit(":", 1)[0] + ":test", tasks["suicide-risk"])


def test_records_from_chat_render_label_only_answers_and_keep_explained_ones(tmp_path, tasks):
    task = tasks["suicide-risk"]
    path = _jsonl(tmp_path / "mixed.jsonl", [
        {"messages": [{"role": "user", "content": "想消失"}, {"role": "assistant", "content": "高自杀风险。"}]},
        {"messages": [{"role": "user", "content": "还好"},
                      {"role": "assistant", "content": "低自杀风险\n因为帖子语气轻松。"}]}])
    records = read_records(path, task)
    assert [r.output for r in records] == [f"标签：{HIGH}", "低自杀风险\n因为帖子语气轻松。"]
    assert {r.instruction for r in records} == {task.instruction}
    with pytest.raises(DataError, match=r"mixed.jsonl:1: field 'instruction': missing.*need --task"):
        read_records(path)


def test_columns_parsing_rejects_repeats():
    with pytest.raises(MentalGLMError, match="column 'a' is named twice"):
        parse_columns("a,b,a")
    with pytest.raises(MentalGLMError, match="expected RAW=LABEL"):
        parse_label_map("0:低")


def test_extraction_gold_from_columns_named_by_the_fields(tmp_path):
    from mentalglm.core.task import ExtractionTask, Field

    task = ExtractionTask(name="abcd", instruction="抽取。",
                          fields=[Field("诱发事件"), Field("信念", ("想法",)), Field("结果"), Field("反驳")])
    path = tmp_path / "pathway.csv"
    path.write_text("内容,诱发事件,想法,结果,反驳\n被老板骂了,被骂,我没用,哭了一晚,无\n", encoding="utf-8")
    post = read_posts(path, task)[0]
    assert post.text == "被老板骂了"
    assert post.gold == {"诱发事件": "被骂", "信念": "我没用", "结果": "哭了一晚", "反驳": "无"}


def test_hierarchical_gold_survives_convert(tmp_path, tasks, capsys):
    task = tasks["cognitive-pathway"]
    out = tmp_path / "cp.jsonl"
    assert main(["data", "convert", "sample:cognitive-pathway", "--task", "cognitive-pathway", "-o", str(out)]) == 0
    assert _seen(read_posts(out, task)) == _seen(read_posts("sample:cognitive-pathway", task))


def test_fingerprint_covers_every_file_of_a_source(tmp_path):
    pytest.importorskip("pyarrow", reason="Parquet needs pyarrow")
    from mentalglm.core.files import file_sha256

    single = tsv_named_csv_numeric_labels(tmp_path)
    assert open_source(single.spec).fingerprint() == file_sha256(single.spec)
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = hf_hub_layout_parquet(tmp_path)
    train = folder.spec.rsplit(":", 1)[0] + ":train"
    before, train_before = open_source(folder.spec).fingerprint(), open_source(train).fingerprint()
    pq.write_table(pa.Table.from_pylist([{"text": "换了一条", "label": LOW}]),
                   tmp_path / "repo" / "data" / "validation-00001-of-00002.parquet")  # the second shard only
    assert open_source(folder.spec).fingerprint() != before
    assert open_source(train).fingerprint() == train_before
