"""Grounded explanations: quoted spans looked up in the post, the evidence part of the answer
format, and its grammar forcing copies of the post (llama.cpp and torch)."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest

from conftest import RecordingBackend
from mentalglm import Analyzer
from mentalglm.analysis.grounding import ground, grounding_of, grounding_summary, quoted_spans
from mentalglm.core.prediction import Post
from mentalglm.data.readers import read_posts


def evidence_task(tasks, name="depression"):
    task = copy.copy(tasks[name])
    task.evidence_prefix = "依据"
    return task


# -- grounding on constructed cases ----------------------------------------------------------------
def test_spans_are_found_with_offsets_into_the_post_itself():
    post = "最近整夜睡不着，觉得活着没意思。"
    [found] = ground(["活着没意思"], post)
    assert found.grounded and post[found.start:found.end] == "活着没意思"
    assert (found.start, found.end) == (10, 15)


def test_matching_folds_width_after_nfkc_and_maps_offsets_back():
    post = "我用ＡＢＣ１２３打游戏"  # full-width letters and digits in the post
    [found] = ground(["ABC123"], post)
    assert found.grounded and post[found.start:found.end] == "ＡＢＣ１２３"
    [back] = ground(["ＡＢＣ"], "abc ABC")  # and full-width quotes of a half-width post
    assert back.grounded and (back.start, back.end) == (4, 7)


def test_ungrounded_quotes_are_flagged_not_dropped():
    evidence, grounding = grounding_of("标签：抑郁\n解释：帖子说“睡不着”，还说“想要消失”。", "我整夜睡不着。")
    assert [e["quote"] for e in evidence] == ["睡不着", "想要消失"]
    assert [e["grounded"] for e in evidence] == [True, False]
    assert evidence[1]["start"] is None and grounding == 0.5


def test_quote_marks_of_every_kind_and_short_quotes():
    text = "“整夜”「睡不着」『好累』\"no way\" 还有“我”"
    assert quoted_spans(text) == ["整夜", "睡不着", "好累", "no way"]  # one character is no claim
    assert grounding_of("标签：抑郁\n解释：没有引用。", "帖子") == (None, None)


def test_summary_counts_spans_and_answers():
    rows = [{"evidence": [{"grounded": True}, {"grounded": False}]}, {"evidence": [{"grounded": True}]}, {}]
    summary = grounding_summary(rows)
    assert summary == {"answers": 3, "quoting": 2, "spans": 3, "grounded_spans": 2, "grounded": 2 / 3,
                       "fully_grounded_answers": 1}


def test_predictions_are_grounded_in_the_redacted_post(pm):
    # The backend saw the redacted post: a quote of the phone number cannot be grounded in it.
    backend = RecordingBackend(["标签：抑郁\n解释：他写了“13812345678”和“我好累”。"])
    analyzer = Analyzer(task="depression", backend=backend, plugins=pm, redact=True)
    prediction = analyzer.analyze("电话13812345678，我好累。")
    shown = backend.requests[0].prompt
    assert "13812345678" not in shown
    assert [e["grounded"] for e in prediction.evidence] == [False, True] and prediction.grounding == 0.5
    quote = prediction.evidence[1]
    assert "我好累" in shown and quote["end"] - quote["start"] == 3
    record = prediction.to_dict()
    assert record["grounding"] == 0.5 and "text" not in record


def test_records_without_quotes_stay_as_they_were(pm):
    record = Analyzer(task="depression", backend=RecordingBackend(), plugins=pm).analyze("帖子").to_dict()
    assert "evidence" not in record and "grounding" not in record


# -- the evidence part of the answer format -------------------------------------------------------
def test_evidence_part_renders_parses_and_keeps_labels_and_explanation(tasks):
    task = evidence_task(tasks)
    fmt = task.response_format()
    answer = fmt.render(["抑郁"], "整夜失眠。", ["整夜睡不着"])
    assert answer == "标签：抑郁\n依据：“整夜睡不着”\n解释：整夜失眠。"
    assert fmt.render(["非抑郁"], "无明显问题。") == "标签：非抑郁\n依据：无\n解释：无明显问题。"
    parsed = task.parse(answer)
    assert parsed.labels == ("抑郁",) and parsed.explanation == "整夜失眠。"
    assert "依据" in task.describe()["evidence_prefix"]


def test_evidence_line_does_not_run_into_an_extraction_field(tasks):
    task = evidence_task(tasks, "cognitive-pathway-abcd")
    fmt = task.response_format()
    answer = fmt.render({name: f"{name}内容" for name in fmt.fields}, "解释。", ["引用的话"])
    parsed = task.parse(answer)
    assert parsed.fields == {name: f"{name}内容" for name in fmt.fields} and parsed.explanation == "解释。"


def test_grammar_copies_the_post_when_it_is_known(tasks):
    fmt = evidence_task(tasks).response_format()
    copied = fmt.for_post("我整夜睡不着”好累\n不想活了")
    head = "标签：抑郁\n依据："
    for text, free, forced in [(head + "“整夜睡", True, True), (head + "“整夜睡不着”“不想活", True, True),
                               (head + "“整夜睡好", True, False),  # not in the post
                               (head + "“不着好累", True, False),  # a copy cannot cross the post's quote mark
                               (head + "“好累不想", True, False),  # nor its line break
                               (head + "“累”", False, False),  # two characters at least
                               (head + "无\n解释：随便写", True, True)]:
        assert fmt.allows(text.encode()) is free and copied.allows(text.encode()) is forced, text
    assert fmt.for_post("帖子") is not fmt and tasks["depression"].response_format().for_post("帖子") == \
        tasks["depression"].response_format()
    nothing = fmt.for_post("好")  # nothing of two characters to quote: only 无
    assert nothing.allows((head + "无").encode()) and not nothing.allows((head + "“").encode())


def test_llamacpp_accepts_the_copy_grammar(tasks):
    llama_cpp = pytest.importorskip("llama_cpp")
    fmt = evidence_task(tasks).response_format().for_post("他说“我不想活了”，然后哭了。\n第二行" * 20)
    assert llama_cpp.LlamaGrammar.from_string(fmt.gbnf(), verbose=False) is not None


def test_sampled_evidence_on_llama_cpp_is_always_copied_from_the_post(tasks, exported):
    # Free sampling of a random model under the copy grammar: whatever the evidence line quotes is
    # in the post (the free explanation after it may quote anything; grounding flags that).
    from mentalglm.backends.llamacpp_backend import LlamaCppBackend

    task = evidence_task(tasks)
    posts = read_posts("sample:depression")[:24]
    options = {"n_ctx": 1024, "max_new_tokens": 64, "temperature": 1.5, "seed": 3, "parallel": 4}
    with LlamaCppBackend(str(exported("glm", "f32")), options) as backend:
        predictions = list(Analyzer(task=task, backend=backend).analyze_many(posts))
    assert all(p.valid for p in predictions)
    lines = {p.id: p.output.split("\n依据：", 1)[1].split("\n", 1)[0] for p in predictions}
    quoting = {i: quoted_spans(line) for i, line in lines.items() if line != "无"}
    assert quoting  # about one answer in four quotes at this temperature
    for post in posts:
        for span in quoting.get(post.id, []):
            [found] = ground([span], post.text)
            assert found.grounded and post.text[found.start:found.end] == span


def test_torch_and_llamacpp_agree_under_the_copy_grammar(tasks, tiny_models, exported):
    from mentalglm.backends.llamacpp_backend import LlamaCppBackend
    from mentalglm.backends.torch_backend import TorchBackend

    task = evidence_task(tasks)
    posts = [Post(id=str(i), text=p.text) for i, p in enumerate(read_posts("sample:depression")[:4])]
    options = {"max_new_tokens": 24}
    with TorchBackend(str(tiny_models["glm"]), {**options, "dtype": "float32", "device": "cpu"}) as torch_backend:
        from_torch = [p.output for p in Analyzer(task=task, backend=torch_backend).analyze_many(posts)]
    with LlamaCppBackend(str(exported("glm", "f32")), {**options, "n_ctx": 1024, "cache_type": "f32"}) as backend:
        from_llama = [p.output for p in Analyzer(task=task, backend=backend).analyze_many(posts)]
    assert from_torch == from_llama and all("\n依据：" in o for o in from_llama)
    for post, output in zip(posts, from_llama):  # the copy branch ran: every evidence line quotes its own post
        evidence_line = output.split("\n依据：", 1)[1].split("\n", 1)[0]  # not the free explanation after it
        quotes = quoted_spans(evidence_line)
        found = ground(quotes, post.text)
        assert quotes and all(f.grounded and post.text[f.start:f.end] == q for f, q in zip(found, quotes)), \
            (output, post.text)


# -- explanation metrics and the report -----------------------------------------------------------
def _explanations(n=30, seed=4):
    import random

    rng = random.Random(seed)
    words = ["失眠", "情绪低落", "兴趣减退", "自责", "疲惫", "想要消失", "和朋友聚会", "工作顺利"]
    references = ["".join(rng.sample(words, 3)) + "。" for _ in range(n)]
    predicted = ["".join(rng.sample(words, rng.randint(1, 4))) + "。" for _ in range(n)]
    predicted[3] = ""  # an invalid answer explains nothing
    return predicted, references


def test_bleu_and_rouge_equal_sacrebleu_and_an_independent_lcs():
    import sacrebleu
    from scipy import stats

    from mentalglm.core.metrics import rouge_l_chars
    from mentalglm.evaluation import statistics as st
    from mentalglm.evaluation.explanation_metrics import explanation_metrics

    predicted, references = _explanations()
    document = explanation_metrics(predicted, references, resamples=200, seed=5)
    corpus = sacrebleu.corpus_bleu(predicted, [references], tokenize="zh")
    assert document["bleu"] == pytest.approx(corpus.score / 100, abs=1e-12)
    rouge = np.array([rouge_l_chars(p, r) for p, r in zip(predicted, references)])
    assert document["rouge_l"] == pytest.approx(rouge.mean(), abs=1e-12)
    reference = stats.bootstrap((rouge,), np.mean, n_resamples=200, method="percentile", rng=np.random.default_rng(5),
                                batch=st.default_block_rows(len(rouge), 200))
    interval = document["intervals"]["rouge_l"]
    assert interval["low"] == pytest.approx(reference.confidence_interval.low, abs=1e-12)
    assert interval["high"] == pytest.approx(reference.confidence_interval.high, abs=1e-12)
    # A BLEU replicate is corpus BLEU of its resample, as sacreBLEU computes it.
    block = next(st.resample_blocks(len(references), 200, 5))
    chosen = [int(i) for i in block[0]]
    first = sacrebleu.corpus_bleu([predicted[i] for i in chosen], [[references[i] for i in chosen]], tokenize="zh")
    from mentalglm.evaluation.explanation_metrics import _bleu_from, _bleu_statistics

    stats_ = _bleu_statistics(predicted, references)
    assert _bleu_from(st._weights(block)[0] @ stats_) == pytest.approx(first.score / 100, abs=1e-12)


def test_evaluation_reports_grounding_and_explanations(tmp_path):
    import json

    from conftest import run_cli

    out = tmp_path / "run"
    outputs = Path(__file__).parents[1] / "mentalglm" / "samples" / "depression.outputs.jsonl"
    result = run_cli("evaluate", "--task", "depression", "--backend", "replay", "--model", str(outputs),
                     "--data", "sample:depression", "--output-dir", str(out), "--bootstrap", "200", "--quiet")
    assert result.returncode == 0, result.stderr
    metrics = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    rows = [json.loads(line) for line in (out / "predictions.jsonl").read_text(encoding="utf-8").splitlines()]
    spans = sum(len(r.get("evidence") or ()) for r in rows)
    assert metrics["grounding"]["spans"] == spans > 0 and 0 < metrics["grounding"]["grounded"] <= 1
    assert metrics["explanations"]["n"] == 65 and set(metrics["explanations"]["intervals"]) == {"rouge_l", "bleu"}
    report = (out / "report.md").read_text(encoding="utf-8")
    assert "grounded quotes" in report and "## Explanations" in report
