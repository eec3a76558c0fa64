"""The Analyzer on an in-process recording backend: prompts, truncation, score mode, redaction,
the ``on_prediction`` hook, and the run record that keeps reruns from mixing settings."""

from __future__ import annotations

import json
import math
import warnings

import pytest

from conftest import RecordingBackend
from mentalglm import Analyzer, MentalGLMError, Post, hookimpl
from mentalglm.core.plugin_manager import PluginError, PluginWarning

POSTS = [Post(id="a", text="最近总是失眠，什么都不想做。"), Post(id="b", text="今天和朋友去爬山。"),
         Post(id="c", text="电话13812345678，我好累。")]


def analyzer(pm, backend=None, **kwargs):
    return Analyzer(task=kwargs.pop("task", "depression"), backend=backend or RecordingBackend(), plugins=pm,
                    **kwargs)


# -- prompts and answers ------------------------------------------------------------------------
def test_requests_carry_the_rendered_prompt_stop_and_answer_format(pm):
    backend = RecordingBackend(["标签：抑郁\n解释：长期失眠。"])
    a = analyzer(pm, backend)
    prediction = a.analyze(POSTS[0].text, id="a")
    request = backend.requests[0]
    assert request.prompt == a.render(POSTS[0])
    assert request.prompt.startswith("[gMASK]<sop><|user|>\n") and request.prompt.endswith("<|assistant|>\n")
    assert request.stop == pm.prompt("glm4-chat").stop
    assert request.response_format == pm.task("depression").response_format()
    assert (prediction.labels, prediction.explanation, prediction.valid, prediction.label_line) == (
        ["抑郁"], "长期失眠。", True, True)


def test_a_records_own_instruction_replaces_the_tasks(pm, tmp_path):
    backend = RecordingBackend()
    analyzer(pm, backend).run([Post(id="x", text="帖子", instruction="自定义指令")], tmp_path / "p.jsonl")
    assert "自定义指令\n帖子" in backend.requests[0].prompt


def test_batches_keep_input_order_and_plain_strings_get_numbered_ids(pm):
    backend = RecordingBackend()
    a = analyzer(pm, backend, batch_size=2)
    ids = [p.id for p in a.analyze_many(["一", "二", "三"])]
    assert ids == ["1", "2", "3"] and [r.id for r in backend.requests] == ["1", "2", "3"]


# -- truncation ---------------------------------------------------------------------------------
def test_a_too_long_post_is_cut_from_the_end_to_fit_and_flagged(pm, caplog):
    backend = RecordingBackend(context_length=200, options={"max_new_tokens": 20})
    a = analyzer(pm, backend)
    post = Post(id="long", text="我" * 500)
    with caplog.at_level("WARNING"):
        prediction = a.analyze_many([post]).__next__()
    sent = backend.requests[0].prompt
    # One spare position beside the answer budget: prompt ≤ context − max_new_tokens − 1.
    assert len(sent) == 200 - 20 - 1
    assert prediction.truncated and "我" * 10 in sent
    assert "long" in caplog.text and "我我我" not in caplog.text  # the id is logged, never the text


def test_a_post_that_fits_is_not_truncated(pm):
    backend = RecordingBackend(context_length=4096)
    prediction = analyzer(pm, backend).analyze("短帖子")
    assert not prediction.truncated and "短帖子" in backend.requests[0].prompt


def test_an_instruction_longer_than_the_context_is_a_clear_error(pm):
    backend = RecordingBackend(context_length=30, options={"max_new_tokens": 5})
    with pytest.raises(MentalGLMError, match="instruction alone does not fit"):
        analyzer(pm, backend).analyze("帖子")


# -- score mode ---------------------------------------------------------------------------------
def test_score_mode_picks_the_most_likely_label_and_explains_it(pm):
    backend = RecordingBackend(["因为失眠。"], scores={"抑郁": -0.5, "非抑郁": -2.0})
    a = analyzer(pm, backend, mode="score")
    prediction = a.analyze(POSTS[0].text, id="a")
    prompt, candidates = backend.scored[0]
    assert prompt == a.render(POSTS[0]) + "标签：" and candidates == ["抑郁", "非抑郁"]
    # The explanation is generated after the chosen label line, with the task's own headers.
    assert backend.requests[0].prompt == a.render(POSTS[0]) + "标签：抑郁\n解释："
    assert prediction.output == "标签：抑郁\n解释：因为失眠。"
    assert prediction.labels == ["抑郁"] and prediction.scores == {"抑郁": -0.5, "非抑郁": -2.0}


def test_score_mode_without_explanation_generates_nothing(pm):
    backend = RecordingBackend(scores={"抑郁": -3.0, "非抑郁": -0.1})
    prediction = analyzer(pm, backend, mode="score", explain=False).analyze("帖子")
    assert prediction.output == "标签：非抑郁" and backend.requests == []


def test_score_mode_scores_a_batch_in_one_call_and_explains_it_in_one_call(pm):
    # Backends with parallel sequences score (and explain) the posts of a batch together.
    backend = RecordingBackend(["一。", "二。", "三。"], scores={"抑郁": -0.5, "非抑郁": -2.0})
    predictions = list(analyzer(pm, backend, mode="score", batch_size=3).analyze_many(POSTS))
    assert backend.calls == [("score_labels_batch", 3), ("generate", 3)]
    assert [p.output for p in predictions] == [f"标签：抑郁\n解释：{n}。" for n in "一二三"]
    assert [p.id for p in predictions] == ["a", "b", "c"]


def test_batch_size_defaults_to_what_the_backend_prefers(pm):
    class Wide(RecordingBackend):
        @property
        def preferred_batch_size(self):
            return 2

    backend = Wide()
    a = analyzer(pm, backend)
    list(a.analyze_many(POSTS))
    assert a.batch_size == 2 and backend.calls == [("generate", 2), ("generate", 1)]
    assert analyzer(pm, RecordingBackend()).batch_size == 8


def test_generate_mode_confidence_scores_the_labels_after_generating(pm):
    backend = RecordingBackend(["标签：抑郁\n解释：一。", "标签：非抑郁\n解释：二。", "乱写"],
                               scores={"抑郁": -0.5, "非抑郁": -2.0})
    a = analyzer(pm, backend, confidence=True, batch_size=3)
    predictions = list(a.analyze_many(POSTS))
    assert backend.calls == [("generate", 3), ("score_labels_batch", 3)]
    assert [prompt for prompt, _ in backend.scored] == [a.render(p) + "标签：" for p in POSTS]
    high = 1 / (1 + math.exp(-1.5))  # softmax of -0.5 against -2.0
    assert predictions[0].confidence == pytest.approx(high) and predictions[1].confidence == pytest.approx(1 - high)
    assert predictions[2].confidence is None and predictions[2].scores == {"抑郁": -0.5, "非抑郁": -2.0}
    assert a.settings()["confidence"] is True and "confidence" not in analyzer(pm).settings()
    assert "confidence" not in analyzer(pm).analyze("帖子").to_dict()


def test_confidence_needs_a_single_label_task_and_a_scoring_backend(pm):
    with pytest.raises(MentalGLMError, match="single-label"):
        analyzer(pm, task="cognitive-distortion", confidence=True)

    class Unscored(RecordingBackend):
        capabilities = frozenset({"generate"})

    with pytest.raises(MentalGLMError, match="cannot score labels"):
        analyzer(pm, Unscored(), confidence=True)


def test_score_mode_refuses_multi_label_tasks(pm):
    with pytest.raises(MentalGLMError, match="single-label"):
        analyzer(pm, task="cognitive-distortion", mode="score")


# -- redaction ----------------------------------------------------------------------------------
def test_redaction_replaces_pii_before_the_backend_sees_it_and_counts_it(pm):
    backend = RecordingBackend()
    prediction = analyzer(pm, backend, redact=True).analyze(POSTS[2].text, id="c")
    assert "13812345678" not in backend.requests[0].prompt and "[PHONE]" in backend.requests[0].prompt
    assert prediction.redactions == {"phone": 1}


def test_local_backends_do_not_redact_by_default(pm):
    backend = RecordingBackend()
    analyzer(pm, backend).analyze(POSTS[2].text)
    assert "13812345678" in backend.requests[0].prompt


# -- strict format ------------------------------------------------------------------------------
def test_an_answer_without_a_label_line_is_valid_by_default_and_invalid_when_strict(pm, tmp_path):
    prose = "我认为是抑郁。"
    lenient = analyzer(pm, RecordingBackend([prose])).analyze("帖子")
    assert lenient.valid and lenient.labels == ["抑郁"] and not lenient.label_line
    strict = analyzer(pm, RecordingBackend([prose]), strict_format=True).analyze("帖子")
    assert not strict.valid and "label line" in strict.problem


def test_a_run_counts_answers_read_without_a_label_line(pm, tmp_path):
    backend = RecordingBackend(["我认为是抑郁。", "标签：非抑郁\n解释：无。", "应该是非抑郁吧"])
    summary = analyzer(pm, backend).run(POSTS, tmp_path / "p.jsonl")
    assert (summary.analysed, summary.invalid, summary.without_label_line) == (3, 0, 2)


# -- the on_prediction hook ---------------------------------------------------------------------
class Collector:
    def __init__(self, output=None):
        self.seen, self.output = [], output

    @hookimpl
    def on_prediction(self, prediction, task):
        on_disk = self.output.read_text(encoding="utf-8") if self.output and self.output.exists() else ""
        self.seen.append((prediction.id, task.name, f'"id": "{prediction.id}"' in on_disk))


def test_on_prediction_fires_once_per_post_after_its_record_is_on_disk(pm, tmp_path):
    output = tmp_path / "p.jsonl"
    collector = Collector(output)
    pm.register(collector, name="collector")
    analyzer(pm).run(POSTS, output)
    assert collector.seen == [("a", "depression", True), ("b", "depression", True), ("c", "depression", True)]
    analyzer(pm).run(POSTS, output)  # a resumed run: nothing new, nothing fires again
    assert len(collector.seen) == 3


def test_on_prediction_fires_for_analyze_and_analyze_many(pm):
    collector = Collector()
    pm.register(collector, name="collector")
    a = analyzer(pm)
    a.analyze("帖子", id="one")
    list(a.analyze_many([Post(id="two", text="帖子")]))
    assert [s[0] for s in collector.seen] == ["one", "two"]


class Broken:
    @hookimpl
    def on_prediction(self, prediction, task):
        raise RuntimeError("queue is down")


def test_a_raising_hook_warns_with_its_name_and_the_run_goes_on(pm, tmp_path):
    collector = Collector()
    pm.register(Broken(), name="broken-queue")
    pm.register(collector, name="collector")
    with pytest.warns(PluginWarning, match="broken-queue.*queue is down"):
        summary = analyzer(pm).run(POSTS, tmp_path / "p.jsonl")
    assert summary.analysed == 3 and len(collector.seen) == 3
    assert len((tmp_path / "p.jsonl").read_text(encoding="utf-8").splitlines()) == 3


def test_strict_plugins_re_raise_a_hook_failure(tmp_path):
    from mentalglm.core.plugin_manager import PluginManager

    strict = PluginManager(load_entry_points=False, strict=True)
    strict.register(Broken(), name="broken-queue")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(PluginError, match="broken-queue"):
            analyzer(strict).run(POSTS, tmp_path / "p.jsonl")
    # The prediction that reached the hook is on disk: a rerun resumes after it.
    assert len((tmp_path / "p.jsonl").read_text(encoding="utf-8").splitlines()) == 1


# -- the run record -----------------------------------------------------------------------------
CHANGES = {
    "mode": dict(mode="score"),
    "redact": dict(redact=True),
    "strict_format": dict(strict_format=True),
    "system": dict(system="你是心理咨询师。"),
    "prompt": dict(prompt="plain"),
    "options.max_new_tokens": dict(backend_options={"max_new_tokens": 7}),
    "task": dict(task="suicide-risk"),
}


@pytest.mark.parametrize("setting", sorted(CHANGES))
def test_a_rerun_with_a_setting_that_changes_predictions_is_refused_naming_it(pm, tmp_path, setting):
    output = tmp_path / "p.jsonl"
    analyzer(pm, RecordingBackend(scores={"抑郁": -1.0})).run(POSTS, output)
    change = dict(CHANGES[setting])
    backend = RecordingBackend(scores={"抑郁": -1.0}, options=change.pop("backend_options", None))
    with pytest.raises(MentalGLMError, match=rf"other settings: .*{setting} \(was"):
        analyzer(pm, backend, **change).run(POSTS, output)
    assert backend.requests == [] and backend.scored == []
    assert len(output.read_text(encoding="utf-8").splitlines()) == 3  # nothing mixed in


def test_explain_matters_only_in_score_mode(pm, tmp_path):
    output = tmp_path / "p.jsonl"
    analyzer(pm, RecordingBackend(scores={"抑郁": -1.0}), mode="score").run(POSTS[:1], output)
    with pytest.raises(MentalGLMError, match="explain"):
        analyzer(pm, RecordingBackend(scores={"抑郁": -1.0}), mode="score", explain=False).run(POSTS[:1], output)
    other = tmp_path / "q.jsonl"
    analyzer(pm, RecordingBackend(["标签：抑郁"])).run(POSTS, other)
    other.write_text(other.read_text(encoding="utf-8").splitlines()[0] + "\n", encoding="utf-8")  # as if killed
    assert analyzer(pm, explain=False).run(POSTS, other).analysed == 2  # generate mode: explain changes nothing


def test_other_data_is_refused_and_the_same_data_resumes(pm, tmp_path):
    data = tmp_path / "posts.jsonl"
    data.write_text("".join(json.dumps({"id": p.id, "text": p.text}, ensure_ascii=False) + "\n" for p in POSTS),
                    encoding="utf-8")
    output = tmp_path / "p.jsonl"
    analyzer(pm).run(POSTS[:2], output, data=data)
    with pytest.raises(MentalGLMError, match="posts_sha256"):
        analyzer(pm).run(POSTS, output, data=data)  # other posts, same file name
    summary = analyzer(pm).run(POSTS[:2], output, data=data)
    assert (summary.analysed, summary.skipped) == (0, 2)
    record = json.loads((tmp_path / "p.jsonl.run.json").read_text(encoding="utf-8"))
    assert record["data_sha256"] and record["redact"] is False and record["mode"] == "generate"


def test_predictions_without_a_record_are_refused(pm, tmp_path):
    output = tmp_path / "p.jsonl"
    output.write_text('{"id": "a", "output": "标签：抑郁"}\n', encoding="utf-8")
    with pytest.raises(MentalGLMError, match="no record of their settings"):
        analyzer(pm).run(POSTS, output)


def test_a_record_without_predictions_is_replaced(pm, tmp_path):
    output = tmp_path / "p.jsonl"
    (tmp_path / "p.jsonl.run.json").write_text('{"mode": "score"}\n', encoding="utf-8")
    assert analyzer(pm).run(POSTS, output).analysed == 3


def test_the_backend_is_checked_before_the_first_post(pm, tmp_path):
    backend = RecordingBackend()
    analyzer(pm, backend).run(POSTS, tmp_path / "p.jsonl")
    assert backend.preflighted == [["a", "b", "c"]]
    assert backend.preflight_format == pm.task("depression").response_format()  # a server's canary uses it


def test_a_streamed_source_runs_and_resumes_like_a_list(pm, tmp_path):
    from mentalglm.data.readers import PostSource, read_posts

    data = tmp_path / "many.jsonl"
    data.write_text("".join(json.dumps({"id": f"p{i}", "text": f"帖子{i}"}, ensure_ascii=False) + "\n"
                            for i in range(3000)), encoding="utf-8")
    source = PostSource(data, pm.task("depression"))
    output = tmp_path / "p.jsonl"
    first = analyzer(pm, RecordingBackend(), batch_size=64).run(source, output, data=data)
    assert (first.total, first.analysed, first.skipped) == (3000, 3000, 0)
    lines = output.read_text(encoding="utf-8").splitlines()
    output.write_text("\n".join(lines[:1234]) + "\n" + lines[1234][:10], encoding="utf-8")  # killed mid-line
    backend = RecordingBackend()
    # The same data as a list resumes the streamed run: one digest for both.
    again = analyzer(pm, backend, batch_size=64).run(read_posts(data, pm.task("depression")), output, data=data)
    assert (again.analysed, again.skipped) == (3000 - 1234, 1234)
    ids = [json.loads(line)["id"] for line in output.read_text(encoding="utf-8").splitlines()]
    assert sorted(ids) == sorted(f"p{i}" for i in range(3000)) and len(ids) == len(set(ids))
    assert [r.id for r in backend.requests][0] == "p1234"


def test_a_one_shot_iterator_is_accepted(pm, tmp_path):
    summary = analyzer(pm).run(iter(POSTS), tmp_path / "p.jsonl")
    assert summary.analysed == 3
