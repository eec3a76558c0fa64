"""Real pretrained weights and llama.cpp's own ``llama-server`` (``.ci/real-models.sh`` sets them up).

``MENTALGLM_REAL_MODELS`` names the folder holding ``gemma-3-270m-q4_k_m.gguf`` and
``SmolLM2-135M-Instruct.Q4_1.gguf``; ``MENTALGLM_LLAMA_SERVER`` the ``llama-server`` binary. Without them
the tests skip; with them a skip is a failure: the stage that set the engine up must not pass on nothing.
"""

from __future__ import annotations

import contextlib
import json
import os
import urllib.request
from pathlib import Path

import pytest

from conftest import llama_cpp_server_process

REAL_MODELS = os.environ.get("MENTALGLM_REAL_MODELS", "")
LLAMA_SERVER = os.environ.get("MENTALGLM_LLAMA_SERVER", "")
GEMMA = "gemma-3-270m-q4_k_m.gguf"
SMOLLM2 = "SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.fixture(scope="session")
def real_model():
    """``real_model(name)`` → the path of one of the real GGUF files."""
    if not REAL_MODELS:
        pytest.skip("set MENTALGLM_REAL_MODELS (and MENTALGLM_LLAMA_SERVER); .ci/real-models.sh does")
    pytest.importorskip("llama_cpp", reason="the real-model tests need the llamacpp extra")

    def get(name: str) -> Path:
        path = Path(REAL_MODELS) / name
        assert path.is_file(), f"{path} is missing; .ci/real-models.sh unpacks it"
        return path

    return get


def post_json(url: str, body: dict, timeout: float = 120) -> dict:
    """POST ``body`` to a loopback server and read its JSON answer (no proxy)."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    request = urllib.request.Request(url, json.dumps(body, ensure_ascii=False).encode("utf-8"),
                                     {"Content-Type": "application/json"})
    with opener.open(request, timeout=timeout) as response:
        return json.loads(response.read().decode("utf-8"))


@pytest.fixture(scope="module")
def llama_server(real_model, tmp_path_factory):
    """``llama_server(name, parallel=1)`` → the base URL of a ``llama-server`` on loopback serving that GGUF.

    One server per (model, slots) for the module, all stopped afterwards; two threads, as the in-process
    backend uses on these machines.
    """
    if not LLAMA_SERVER:
        pytest.skip("set MENTALGLM_LLAMA_SERVER to a llama-server binary; .ci/real-models.sh builds one")
    servers: dict = {}
    logs = tmp_path_factory.mktemp("llama-server")
    with contextlib.ExitStack() as stack:
        def get(name: str, parallel: int = 1) -> str:
            if (name, parallel) not in servers:
                base_url, _ = stack.enter_context(llama_cpp_server_process(LLAMA_SERVER, real_model(name), logs,
                                                                           parallel=parallel))
                servers[name, parallel] = base_url
            return servers[name, parallel]

        yield get


pytestmark = pytest.mark.realmodels

POSTS = ["我不想活了，每天都觉得自己是个累赘。", "最近工作很忙，但周末和朋友去爬山了，挺开心的。",
         "一个人的时候总是在哭，什么都不想做。"]


def _prompts(task, style):
    from mentalglm.core.prediction import Post

    return [style.render(task.instruction, Post(id=str(i), text=text).text) for i, text in enumerate(POSTS)]


@pytest.fixture(scope="module")
def task():
    from mentalglm.core.plugin_manager import get_plugin_manager

    return get_plugin_manager().task("suicide-risk")


# -- tokens as the model wants them ---------------------------------------------------------------
@pytest.mark.parametrize("name, bos", [(GEMMA, 2), (SMOLLM2, None)], ids=["gemma", "smollm2"])
def test_prompt_tokens_equal_llama_servers_with_bos_once_where_asked(real_model, llama_server, task, name, bos):
    from mentalglm.backends.llamacpp_backend import LlamaCppBackend
    from mentalglm.core.prompt import PLAIN

    base = llama_server(name)
    with LlamaCppBackend(str(real_model(name)), {"parallel": 1, "n_ctx": 1024}) as backend:
        for text in _prompts(task, PLAIN):
            ours = backend._tokenize(text)
            theirs = post_json(f"{base}/tokenize", {"content": text, "add_special": True})["tokens"]
            assert ours == theirs
            if bos is not None:
                assert ours[0] == bos and ours[1] != bos
            # BOS already in the text: not a second time (llama-server would add one and warn)
            if bos is not None:
                assert backend._tokenize("<bos>" + text) == ours


# -- the model's own chat template ----------------------------------------------------------------
@pytest.mark.parametrize("system", [None, "你是一名心理咨询师。"], ids=["no-system", "system"])
def test_auto_renders_smollm2_as_llama_server_does(real_model, llama_server, task, system):
    from mentalglm import Analyzer

    base = llama_server(SMOLLM2)
    with Analyzer(task=task, backend="llamacpp", model=str(real_model(SMOLLM2)), prompt="auto", system=system,
                  options={"parallel": 1, "n_ctx": 1024}) as analyzer:
        for text in POSTS:
            messages = ([{"role": "system", "content": system}] if system else []) + [
                {"role": "user", "content": f"{task.instruction}\n{text}"}]
            expected = post_json(f"{base}/apply-template", {"messages": messages})["prompt"]
            assert analyzer.prompt.render(task.instruction, text, system) == expected


def test_auto_refuses_a_base_model_without_a_template(real_model, task):
    from mentalglm import Analyzer, MentalGLMError

    with pytest.raises(MentalGLMError, match=rf"{GEMMA}: the model has no chat template.*--prompt plain"):
        Analyzer(task=task, backend="llamacpp", model=str(real_model(GEMMA)), prompt="auto",
                 options={"parallel": 1, "n_ctx": 1024})


# -- constrained answers, in process and through the server --------------------------------------
@pytest.mark.parametrize("name, prompt", [(GEMMA, "plain"), (SMOLLM2, "auto")], ids=["gemma-262k", "smollm2-49k"])
def test_constrained_answers_are_valid_on_real_vocabularies(real_model, task, name, prompt):
    from mentalglm import Analyzer, Post

    with Analyzer(task=task, backend="llamacpp", model=str(real_model(name)), prompt=prompt,
                  options={"parallel": 3, "n_ctx": 1024, "max_new_tokens": 48}) as analyzer:
        predictions = list(analyzer.analyze_many([Post(id=str(i), text=t) for i, t in enumerate(POSTS)]))
    assert all(p.valid and p.label_line for p in predictions), [p.output for p in predictions]
    assert all(p.output.startswith("标签：") for p in predictions)


def test_in_process_greedy_answers_equal_llama_servers(real_model, llama_server, task):
    """Same GGUF, same prompt, greedy, no constraint: the same tokens as llama.cpp's own server."""
    from mentalglm.backends.llamacpp_backend import LlamaCppBackend
    from mentalglm.core.backend import GenerationRequest
    from mentalglm.core.prompt import PLAIN

    base = llama_server(GEMMA)
    prompts = _prompts(task, PLAIN)
    with LlamaCppBackend(str(real_model(GEMMA)), {"parallel": 1, "n_ctx": 1024, "max_new_tokens": 24,
                                                  "constrained": False}) as backend:
        ours = backend.generate([GenerationRequest(id=str(i), prompt=p) for i, p in enumerate(prompts)])
        for prompt, completion in zip(prompts, ours):
            theirs = post_json(f"{base}/completion", {"prompt": prompt, "n_predict": 24, "temperature": 0,
                                                      "cache_prompt": False, "return_tokens": True})
            assert completion.text == theirs["content"]
            assert completion.usage["completion_tokens"] == len(theirs["tokens"])


def test_openai_backend_speaks_to_the_real_llama_server(real_model, llama_server, task):
    """The llama.cpp dialect against llama-server itself: detected, constrained (grammar), canaried, checked —
    and greedy answers equal to the in-process backend's on the same GGUF."""
    from mentalglm import Analyzer, Post

    base = llama_server(SMOLLM2)
    posts = [Post(id=str(i), text=t) for i, t in enumerate(POSTS)]
    with Analyzer(task=task, backend="openai", model="smollm2", prompt="auto",
                  options={"base_url": f"{base}/v1", "max_new_tokens": 32, "concurrency": 1}) as served:
        # --prompt auto asked the server for its GGUF's template (GET /props)
        assert served.backend.server_info["engine"] == "llama.cpp server"
        remote = list(served.analyze_many(posts))
    with Analyzer(task=task, backend="llamacpp", model=str(real_model(SMOLLM2)), prompt="auto",
                  options={"parallel": 1, "n_ctx": 1024, "max_new_tokens": 32}) as local:
        here = list(local.analyze_many(posts))
    assert all(p.valid for p in remote)
    assert [p.output for p in remote] == [p.output for p in here]


def test_prompt_server_lets_llama_server_apply_its_template(llama_server, task):
    """``--prompt server``: the turns go to llama-server's chat route with the grammar; the canary passes there,
    and the greedy answers equal those of the same template rendered here (``--prompt auto``)."""
    from mentalglm import Analyzer, Post

    base = llama_server(SMOLLM2)
    posts = [Post(id=str(i), text=t) for i, t in enumerate(POSTS)]
    answers = {}
    for prompt in ("server", "auto"):
        with Analyzer(task=task, backend="openai", model="smollm2", prompt=prompt,
                      options={"base_url": f"{base}/v1", "max_new_tokens": 32, "concurrency": 1}) as analyzer:
            analyzer.backend.preflight([p.id for p in posts], response_format=analyzer.response_format)
            answers[prompt] = [p.output for p in analyzer.analyze_many(posts)]
    assert all(output.startswith("标签：") for output in answers["server"]), answers["server"]
    # Cut by the token budget mid-character, the completions route ends on U+FFFD for the partial
    # bytes; the chat route holds them back. The tokens are the same.
    assert [a.rstrip("\ufffd") for a in answers["server"]] == [a.rstrip("\ufffd") for a in answers["auto"]]


# -- the comparison across real models -----------------------------------------------------------
def test_leaderboard_of_two_real_models_and_the_baseline(real_model, task, tmp_path):
    """Gemma (plain), SmolLM2 (its own ChatML template) and the baseline on the same held-out posts: one table,
    one column each, every answer in the format; --reuse gives the same files without loading a model."""
    from mentalglm.data.readers import read_posts
    from mentalglm.evaluation.leaderboard import OUTPUTS, TaskData, run_leaderboard
    from mentalglm.evaluation.registry import load_registry
    from mentalglm.training.baseline import train_baseline

    posts = read_posts("sample:suicide-risk", task)
    train, test = [p for i, p in enumerate(posts) if i % 3], [p for i, p in enumerate(posts) if not i % 3][:16]
    train_baseline(task, train, tmp_path / "floor", data=["sample:suicide-risk"])
    data = tmp_path / "test.jsonl"
    data.write_text("".join(json.dumps({"id": p.id, "text": p.text, "label": p.gold[0]}, ensure_ascii=False) + "\n"
                            for p in test), encoding="utf-8")
    options = "{parallel: 4, n_ctx: 1024, max_new_tokens: 32}"
    (tmp_path / "models.yaml").write_text(
        "reference: baseline\nmodels:\n"
        f"  - {{name: gemma-3-270m, backend: llamacpp, model: {real_model(GEMMA)}, prompt: plain, "
        f"options: {options}}}\n"
        f"  - {{name: smollm2-135m, backend: llamacpp, model: {real_model(SMOLLM2)}, prompt: auto, "
        f"options: {options}}}\n"
        "  - {name: baseline, backend: baseline, model: floor}\n", encoding="utf-8")
    registry = load_registry(tmp_path / "models.yaml")
    tasks = [TaskData(task, str(data), read_posts(data, task))]
    document = run_leaderboard(registry, tasks, tmp_path / "board", bootstrap=200)
    results = document["tasks"][0]["results"]
    assert document["models"] == ["gemma-3-270m", "smollm2-135m", "baseline"]
    assert all(r["status"] == "ok" and r["invalid_rate"] == 0.0 for r in results.values()), results
    assert all(r["posts_per_second"] > 0 for r in results.values())
    assert results["gemma-3-270m"]["versus_reference"]["mcnemar_p"] is not None
    written = {name: (tmp_path / "board" / name).read_bytes() for name in OUTPUTS}
    run_leaderboard(registry, tasks, tmp_path / "board", reuse=True, bootstrap=200)
    assert {name: (tmp_path / "board" / name).read_bytes() for name in OUTPUTS} == written
