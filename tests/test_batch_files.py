"""``mentalglm batch export | import``: OpenAI Batch API files, without any server."""

from __future__ import annotations

import json

import pytest

from conftest import run_cli
from mentalglm.analysis.analyzer import Analyzer
from mentalglm.backends.openai_backend import OpenAIBackend
from mentalglm.cli import main
from mentalglm.core.errors import MentalGLMError, OptionsError
from mentalglm.core.prediction import Post
from mentalglm.executors.batch_files import export_requests, import_results

POSTS = [("a", "我最近总是失眠，电话13812345678", "抑郁"), ("b", "今天去爬山了，很开心。", "非抑郁"),
         ("c", "什么都不想做。", "抑郁")]


@pytest.fixture
def data(tmp_path):
    path = tmp_path / "posts.jsonl"
    path.write_text("".join(json.dumps({"id": i, "text": t, "label": g}, ensure_ascii=False) + "\n"
                            for i, t, g in POSTS), encoding="utf-8")
    return path


def lines(path):
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def export(tmp_path, data, *extra, model="tiny-glm"):
    requests = tmp_path / "requests.jsonl"
    code = main(["batch", "export", "--task", "depression", "--data", str(data), "--model", model,
                 "-O", "max_new_tokens=32", *extra, "-o", str(requests)])
    assert code == 0
    return requests


# -- export ---------------------------------------------------------------------------------------
def test_export_writes_the_backends_own_bodies_as_chat_requests(tmp_path, data, pm):
    requests = export(tmp_path, data, "-O", "stop_token_ids=1,2,3")
    rows = lines(requests)
    assert [r["custom_id"] for r in rows] == ["a", "b", "c"]
    assert {(r["method"], r["url"]) for r in rows} == {("POST", "/v1/chat/completions")}
    # The very body the openai backend builds for the same request (one body builder), as chat turns.
    backend = OpenAIBackend("tiny-glm", {"server": "vllm", "max_new_tokens": 32, "stop_token_ids": "1,2,3"})
    backend.offline()
    analyzer = Analyzer("depression", backend=backend, plugins=pm)
    request, _ = analyzer.request(Post(id="b", text=POSTS[1][1]))
    assert rows[1]["body"] == backend.body(request, chat=True)
    body = rows[0]["body"]
    assert body["structured_outputs"] == {"grammar": analyzer.response_format.gbnf()}
    assert body["stop_token_ids"] == [1, 2, 3] and body["repetition_penalty"] == 1.0 and "prompt" not in body
    content = f"{analyzer.task.instruction}\n我最近总是失眠，电话[PHONE]"
    assert body["messages"] == [{"role": "user", "content": content}]
    record = json.loads((tmp_path / "requests.jsonl.run.json").read_text(encoding="utf-8"))
    assert record["redact"] is True and record["server"]["dialect"] == "vllm" and record["batch"]["requests"] == 3


def test_export_without_redaction_plain_prompt_and_llama_cpp_dialect(tmp_path, data):
    rows = lines(export(tmp_path, data, "--no-redact", "--prompt", "plain", "--server", "llama.cpp"))
    assert {r["url"] for r in rows} == {"/v1/completions"}
    assert "13812345678" in rows[0]["body"]["prompt"] and "grammar" in rows[0]["body"]
    assert "stop_token_ids" not in rows[0]["body"]


def test_export_with_prompt_server_writes_the_turns_for_the_servers_template(tmp_path, data, pm):
    rows = lines(export(tmp_path, data, "--prompt", "server", "--system", "你是心理咨询师", "--server", "llama.cpp"))
    assert {r["url"] for r in rows} == {"/v1/chat/completions"}
    content = f"{pm.task('depression').instruction}\n我最近总是失眠，电话[PHONE]"
    assert rows[0]["body"]["messages"] == [{"role": "system", "content": "你是心理咨询师"},
                                           {"role": "user", "content": content}]
    assert "grammar" in rows[0]["body"] and "prompt" not in rows[0]["body"]


def test_export_reads_stop_token_ids_from_a_model_folder(tmp_path, data):
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "tokenizer.json").write_text(json.dumps({"added_tokens": [
        {"id": 7, "content": "<|endoftext|>"}, {"id": 9, "content": "<|user|>"},
        {"id": 11, "content": "<|observation|>"}]}), encoding="utf-8")
    rows = lines(export(tmp_path, data, model=str(folder)))
    assert rows[0]["body"]["stop_token_ids"] == [7, 9, 11] and rows[0]["body"]["model"] == str(folder)


def test_export_refusals(tmp_path, data, capsys):
    out = str(tmp_path / "r.jsonl")
    assert main(["batch", "export", "--task", "depression", "--data", str(data), "-o", out]) == 1
    assert "needs the model name" in capsys.readouterr().err
    assert main(["batch", "export", "--task", "depression", "--data", str(data), "--model", "m", "--server",
                 "openai", "-o", out]) == 1
    assert "cannot be constrained" in capsys.readouterr().err
    assert main(["batch", "export", "--task", "depression", "--data", str(data), "--model", "m", "--server",
                 "openai", "-O", "constrained=false", "-o", out]) == 0
    duplicated = tmp_path / "dup.jsonl"
    duplicated.write_text('{"id": "x", "text": "一"}\n{"id": "y", "text": "二"}\n{"id": "x", "text": "三"}\n',
                          encoding="utf-8")
    assert main(["batch", "export", "--task", "depression", "--data", str(duplicated), "--model", "m",
                 "-o", out]) == 1
    err = capsys.readouterr().err
    assert f"{duplicated}:3: field 'id': duplicate id 'x' (first on line 1)" in err and "\n" not in err.strip()
    with pytest.raises(OptionsError, match="choose the dialect"):
        export_requests(Analyzer("depression", backend=OpenAIBackend("m")), [Post("a", "x")], out)


def test_model_as_an_option_too(tmp_path, data):
    rows = lines(export(tmp_path, data, "-O", "model=tiny-glm"))
    assert rows[0]["body"]["model"] == "tiny-glm"
    result = run_cli("batch", "export", "--task", "depression", "--data", str(data), "--model", "a", "-O", "model=b",
                     "-o", str(tmp_path / "x.jsonl"))
    assert result.returncode == 1 and "disagree" in result.stderr and result.stdout == ""


# -- import ---------------------------------------------------------------------------------------
def result(custom_id, text=None, *, status=200, error=None, chat=True, finish="stop"):
    """One result line as vLLM's run-batch writes it."""
    body = None
    if text is not None:
        choice = {"index": 0, "finish_reason": finish,
                  **({"message": {"role": "assistant", "content": text}} if chat else {"text": text})}
        body = {"id": "x", "object": "chat.completion", "choices": [choice],
                "usage": {"prompt_tokens": 20, "completion_tokens": 5, "total_tokens": 25}}
    return {"id": f"vllm-{custom_id}", "custom_id": custom_id, "error": error,
            "response": {"status_code": status, "request_id": "r", "body": body}}


def write(path, rows):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def test_import_writes_predictions_like_analyze_and_is_idempotent(tmp_path, data, pm):
    requests = export(tmp_path, data)
    results = write(tmp_path / "results.jsonl", [result("a", "标签：抑郁\n解释：失眠。"),
                                                 result("b", "标签：非抑郁\n解释：开心。")])
    out = tmp_path / "pred.jsonl"
    task = pm.task("depression")
    summary = import_results(task, results, out, requests=requests, plugins=pm)
    assert (summary["imported"], summary["already"], summary["problems"], summary["missing"]) == (2, 0, 0, 1)
    saved = lines(out)
    assert [(p["id"], p["labels"], p["valid"], p["usage"]) for p in saved] == [
        ("a", ["抑郁"], True, {"prompt_tokens": 20, "completion_tokens": 5}),
        ("b", ["非抑郁"], True, {"prompt_tokens": 20, "completion_tokens": 5})]
    assert set(saved[0]) == set(Analyzer("depression", backend="replay", model=str(out), plugins=pm)
                                .predict_from_output(Post("a", ""), "标签：抑郁").to_dict())
    again = import_results(task, results, out, requests=requests, plugins=pm)
    assert (again["imported"], again["already"]) == (0, 2) and len(lines(out)) == 2  # a rerun adds nothing
    rest = write(tmp_path / "rest.jsonl", [result("c", "标签：抑郁\n解释：累。")])
    assert import_results(task, rest, out, requests=requests, plugins=pm)["missing"] == 0  # resumable, batch by batch
    assert [p["id"] for p in lines(out)] == ["a", "b", "c"]
    evaluated = run_cli("evaluate", "--task", "depression", "--backend", "replay", "--model", str(out),
                        "--data", str(data), "--output-dir", str(tmp_path / "eval"), "--quiet", "--json")
    assert evaluated.returncode == 0, evaluated.stderr
    assert json.loads(evaluated.stdout)["counts"]["valid"] == 3


def test_problem_rows_are_reported_counted_and_never_dropped(tmp_path, data, pm):
    requests = export(tmp_path, data)
    results = write(tmp_path / "results.jsonl", [
        result("a", "标签：抑郁\n解释：失眠。"),
        result("b", status=400, error={"error": {"message": "max_tokens too large", "type": "BadRequestError"}}),
        result("zzz", "标签：抑郁\n解释：？"),
        result("a", "标签：非抑郁\n解释：重复。"),
        result("c", "好的，12345"),
        {"custom_id": "", "response": None},
    ])
    out = tmp_path / "pred.jsonl"
    summary = import_results(pm.task("depression"), results, out, requests=requests, plugins=pm)
    assert summary["imported"] == 1 and summary["problems"] == 5
    assert summary["by_kind"] == {"error": 1, "malformed": 1, "unconstrained": 1, "unknown": 1, "duplicate": 1}
    problems = {p["line"]: (p["custom_id"], p["kind"], p["message"]) for p in summary["first_problems"]}
    assert problems[2] == ("b", "error", "max_tokens too large")
    assert problems[3][:2] == ("zzz", "unknown") and problems[4] == ("a", "duplicate", "custom_id seen before (line 1)")
    assert problems[5][1] == "unconstrained" and "did not enforce the constraint sent as structured_outputs.grammar" \
        in problems[5][2]
    assert len(lines(tmp_path / "pred.jsonl.errors.jsonl")) == 5
    cli = run_cli("batch", "import", str(results), "--task", "depression", "--requests", str(requests),
                  "-o", str(out))
    assert cli.returncode == 1
    err = cli.stderr.strip().splitlines()
    assert f"mentalglm: {results}:2: custom_id 'b': error: max_tokens too large" in err
    assert err[-1] == (f"mentalglm: error: {results}: 5 of 6 result rows not imported (1 error, 1 malformed, "
                       f"1 unconstrained, 1 unknown, 1 duplicate); all listed in {out}.errors.jsonl")
    assert "13812345678" not in cli.stderr + cli.stdout and "失眠" not in cli.stderr


def test_import_without_requests_is_refused_unless_unchecked_and_then_marked(tmp_path, pm, caplog):
    from mentalglm.evaluation.evaluate import evaluate

    results = write(tmp_path / "results.jsonl", [result("x", "标签：抑郁\n解释：失眠。", chat=False)])
    out = tmp_path / "p.jsonl"
    with pytest.raises(MentalGLMError, match="without --requests the custom_ids cannot be checked.*--unchecked"):
        import_results(pm.task("depression"), results, out, plugins=pm)
    assert not out.exists()
    summary = import_results(pm.task("depression"), results, out, unchecked=True, plugins=pm)
    assert summary["imported"] == 1 and summary["missing"] is None
    assert lines(out)[0]["unchecked"] is True and "marked unchecked" in caplog.text
    assert json.loads((tmp_path / "p.jsonl.run.json").read_text(encoding="utf-8"))["unchecked"] is True
    # re-scored with replay, metrics.json counts the unchecked answers
    with Analyzer("depression", backend="replay", model=str(out), plugins=pm) as analyzer:
        document = evaluate(analyzer, [Post(id="x", text="失眠", gold=("抑郁",))], tmp_path / "run", data="gold",
                            progress=False, bootstrap=0)
    assert document["backend_stats"] == {"unchecked_outputs": 1}
    code = main(["batch", "import", str(results), "--task", "depression", "-o", str(tmp_path / "q.jsonl")])
    assert code == 1


def test_import_refuses_a_changed_requests_file_another_task_or_other_settings(tmp_path, data, pm):
    requests = export(tmp_path, data)
    results = write(tmp_path / "results.jsonl", [result("a", "标签：抑郁\n解释：失眠。")])
    with pytest.raises(MentalGLMError, match="exported for task 'depression'"):
        import_results(pm.task("suicide-risk"), results, tmp_path / "p.jsonl", requests=requests)
    out = tmp_path / "p.jsonl"
    import_results(pm.task("depression"), results, out, requests=requests, plugins=pm)
    with pytest.raises(MentalGLMError, match="other settings: strict_format"):
        import_results(pm.task("depression"), results, out, requests=requests, strict_format=True, plugins=pm)
    with requests.open("a", encoding="utf-8") as handle:
        handle.write("\n")
    with pytest.raises(MentalGLMError, match="changed after requests.jsonl.run.json was written"):
        import_results(pm.task("depression"), results, out, requests=requests)
