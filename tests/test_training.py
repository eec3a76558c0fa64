"""``mentalglm train``: loss masks, learning, stages, outputs, kill-and-resume, bad data, validation.

Everything runs on the tiny GLM model on CPU. Training uses one thread (in this process and in
the subprocesses): the steps are tiny, and two OpenMP threads on a busy 2-core machine are
many times slower than one.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch", reason="training needs the torch extra")
pytest.importorskip("peft", reason="training needs the torch extra")
# peft asks transformers 5 for a deprecated attribute when loading an adapter; not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing.*:FutureWarning")

from mentalglm.cli import main as cli_main  # noqa: E402
from mentalglm.cli.train import config_from_args  # noqa: E402
from mentalglm.core.errors import DataError, MentalGLMError  # noqa: E402
from mentalglm.core.files import file_sha256  # noqa: E402
from mentalglm.core.prompt import GLM4_CHAT, PLAIN  # noqa: E402
from mentalglm.data.readers import read_records, resolve_path  # noqa: E402
from mentalglm.training.config import build_config  # noqa: E402
from mentalglm.training.dataset import (  # noqa: E402
    IGNORE_INDEX,
    collate,
    encode_record,
    epoch_order,
    resolve_end_token,
)
from models import kill_when  # noqa: E402

SUBPROCESS_ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "MENTALGLM_LOAD_PLUGINS": "",
                  "TOKENIZERS_PARALLELISM": "false"}


@pytest.fixture(autouse=True)
def _one_thread(one_torch_thread):
    """Every training test runs torch on one thread."""


@pytest.fixture(scope="module")
def base(tiny_models):
    return tiny_models["glm"]


@pytest.fixture(scope="module")
def tokenizer(base):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(base)


def _config(base, out, **settings):
    settings.setdefault("stages", [{"data": ["sample:depression"]}])
    defaults = dict(model=str(base), output=str(out), batch_size=2, max_length=1024, quiet=True, save_every=0)
    return build_config({**defaults, **settings})


def _train(base, out, **settings):
    from mentalglm.training import train

    return train(_config(base, out, **settings))


def _write_jsonl(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def _adapter_tensors(folder: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(folder / "adapter_model.safetensors"))



def main(argv):
    """``mentalglm train ARGV…``, in process."""
    return cli_main(["train", *argv])


# -- data: masks and end token ----------------------------------------------------------------
def test_loss_mask_covers_the_response_and_end_token_only(tokenizer):
    record = read_records("sample:depression")[0]
    end = resolve_end_token(tokenizer, GLM4_CHAT)
    assert end.text == "<|endoftext|>" and end.id == tokenizer.convert_tokens_to_ids("<|endoftext|>")
    example = encode_record(tokenizer, GLM4_CHAT, record, end_token=end, max_length=2048)
    n = example.prompt_length
    prompt = GLM4_CHAT.render(record.instruction, record.input)
    assert prompt.startswith("[gMASK]<sop><|user|>\n") and prompt.endswith("<|assistant|>\n")
    assert tokenizer.decode(example.input_ids[:n]) == prompt  # byte-exact
    assert example.input_ids[:n] == tokenizer(prompt, add_special_tokens=False).input_ids
    assert example.labels[:n] == [IGNORE_INDEX] * n
    assert example.labels[n:] == example.input_ids[n:]
    assert example.labels[-1] == end.id
    assert tokenizer.decode(example.labels[n:-1]) == record.output
    assert not example.truncated

    # Padding is never learnt; the first labelled position is the first response token.
    batch = collate([example, encode_record(tokenizer, GLM4_CHAT, read_records("sample:depression")[1],
                                            end_token=end, max_length=2048)], pad_id=end.id)
    assert batch["labels"].shape == batch["input_ids"].shape
    assert (batch["labels"][batch["attention_mask"] == 0] == IGNORE_INDEX).all()
    assert int((batch["labels"][0] != IGNORE_INDEX).sum()) == len(example.input_ids) - n


def test_end_token_choice_and_truncation(tokenizer):
    assert resolve_end_token(tokenizer, PLAIN).text == tokenizer.eos_token  # no stop strings: eos
    assert resolve_end_token(tokenizer, GLM4_CHAT, "<|user|>").text == "<|user|>"
    assert resolve_end_token(tokenizer, GLM4_CHAT, "none") is None
    with pytest.raises(MentalGLMError, match="not a single token"):
        resolve_end_token(tokenizer, GLM4_CHAT, "标签：抑郁")

    record = read_records("sample:depression")[0]
    end = resolve_end_token(tokenizer, GLM4_CHAT)
    full = encode_record(tokenizer, GLM4_CHAT, record, end_token=end, max_length=2048)
    cut = encode_record(tokenizer, GLM4_CHAT, record, end_token=end, max_length=full.prompt_length + 3)
    assert cut.truncated and len(cut.input_ids) == full.prompt_length + 3 and cut.labels[-1] != end.id
    assert cut.input_ids == full.input_ids[:full.prompt_length + 3]
    with pytest.raises(DataError, match=r"depression\.jsonl:1: field 'input': the prompt alone is \d+ tokens"):
        encode_record(tokenizer, GLM4_CHAT, record, end_token=end, max_length=full.prompt_length,
                      source=str(resolve_path("sample:depression")))


def test_data_order_is_reproducible_and_sharded():
    first = epoch_order(10, seed=1, stage=0, epoch=0)
    assert sorted(first) == list(range(10)) and first == epoch_order(10, seed=1, stage=0, epoch=0)
    assert first != epoch_order(10, seed=1, stage=0, epoch=1)
    shards = [epoch_order(9, seed=1, stage=0, epoch=0, world_size=2, rank=r) for r in (0, 1)]
    assert len(shards[0]) == len(shards[1]) == 5 and set(shards[0]) | set(shards[1]) == set(range(9))


# -- training ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def trained(base, tmp_path_factory):
    """One finished run on both shipped samples (shared by the output and rerun tests)."""
    from mentalglm.training import train

    out = tmp_path_factory.mktemp("train") / "run"
    config = _config(base, out, stages=[{"data": ["sample:depression", "sample:suicide-risk"]}],
                     max_steps=30, learning_rate=2e-3, warmup_ratio=0.0, seed=7)
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        result = train(config)
    finally:
        torch.set_num_threads(previous)
    return out, result


def test_training_lowers_the_loss(trained):
    out, result = trained
    steps = json.loads((out / "loss.json").read_text(encoding="utf-8"))["steps"]
    assert [s["step"] for s in steps] == list(range(1, 31)) and result.steps == 30
    assert {"step", "stage", "epoch", "loss", "lr"} <= set(steps[0])
    first, last = (sum(s["loss"] for s in part) / 5 for part in (steps[:5], steps[-5:]))
    assert last < first - 0.1, (first, last)
    assert result.final_loss == steps[-1]["loss"]


def test_outputs_exist_and_load(trained, base):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from mentalglm.converters.lora import LoraAdapter
    from mentalglm.modelfiles.safetensors import SafetensorsCheckpoint

    out, _ = trained
    adapter = out / "adapter"
    assert (adapter / "adapter_model.safetensors").is_file() and not list(adapter.glob("*.bin"))
    saved = _adapter_tensors(adapter)
    assert any(name.endswith("lora_B.weight") and saved[name].abs().sum() > 0 for name in saved)

    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), adapter)
    loaded = {n: p for n, p in model.named_parameters() if "lora_" in n}
    assert len(loaded) == len(saved) == 2 * 6 * 2  # 2 layers × 6 modules × (A, B)
    lora = LoraAdapter(adapter)
    lora.check_base(SafetensorsCheckpoint(base))
    assert len(lora.targets) == 12 and all(t.scale == 2.0 for t in lora.targets.values())

    png = (out / "loss.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 1024

    manifest = json.loads((out / "train_config.json").read_text(encoding="utf-8"))
    settings = manifest["settings"]
    assert settings["lora_r"] == 8 and settings["lora_alpha"] == 16 and settings["learning_rate"] == 2e-3
    assert settings["target_modules"] == ["q_proj", "k_proj", "v_proj", "o_proj", "gate_up_proj", "down_proj"]
    assert manifest["base_model"]["path"] == str(Path(base).resolve())
    assert manifest["base_model"]["architectures"] == ["GlmForCausalLM"]
    files = manifest["data"]["stages"][0]["files"]
    assert [f["spec"] for f in files] == ["sample:depression", "sample:suicide-risk"]
    assert files[0]["sha256"] == file_sha256(resolve_path("sample:depression")) and files[0]["records"] == 65
    resolved = manifest["resolved"]
    assert (resolved["precision"], resolved["device"], resolved["world_size"]) == ("fp32", "cpu", 1)
    assert resolved["end_token"]["text"] == "<|endoftext|>" and "eos" in resolved["end_token"]["reason"]
    assert {"python", "torch", "transformers", "peft"} <= set(manifest["versions"])
    checkpoints = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert checkpoints == ["step-30"]  # save_every 0: epoch/stage ends only


def test_rerun_of_a_finished_run_and_a_run_with_other_settings(trained, base, capsys):
    out, _ = trained
    args = ["--model", str(base), "--data", "sample:depression", "sample:suicide-risk", "--output", str(out),
            "--max-steps", "30", "--learning-rate", "2e-3", "--warmup-ratio", "0", "--seed", "7",
            "--batch-size", "2", "--max-length", "1024", "--save-every", "0", "--quiet"]
    assert main(args) == 0
    captured = capsys.readouterr()
    assert "already finished" in captured.err and "already finished: 30 steps" in captured.out

    assert main(args[:-1] + ["--lora-r", "4", "--quiet"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith(f"mentalglm: error: {out} holds a training run with other settings (lora_r)")


def test_two_stages_continue_the_same_adapter(base, tmp_path, tokenizer):
    """Stage 2's first loss is the loss of stage 1's final adapter on stage 2's first batch."""
    from peft import PeftModel, set_peft_model_state_dict
    from transformers import AutoModelForCausalLM

    out = tmp_path / "run"
    result = _train(base, out, stages=[{"data": ["sample:depression"], "max_steps": 3, "name": "imhi"},
                                       {"data": "sample:suicide-risk", "max_steps": 2, "learning_rate": 1e-3}],
                    learning_rate=2e-3, lora_dropout=0.0, keep_checkpoints=5, seed=3)
    assert result.steps == 5
    document = json.loads((out / "loss.json").read_text(encoding="utf-8"))
    assert document["stages"] == ["imhi", "stage 2"]
    assert [(s["step"], s["stage"]) for s in document["steps"]] == [(1, 1), (2, 1), (3, 1), (4, 2), (5, 2)]
    assert document["steps"][3]["lr"] <= 1e-3  # stage 2's own learning rate and schedule

    stage_one = out / "checkpoints" / "step-3" / "adapter"
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), stage_one)
    assert any(t.abs().sum() > 0 for n, t in _adapter_tensors(stage_one).items() if "lora_B" in n)
    end = resolve_end_token(tokenizer, GLM4_CHAT)
    records = read_records("sample:suicide-risk")
    order = epoch_order(len(records), seed=3, stage=1, epoch=0)
    batch = collate([encode_record(tokenizer, GLM4_CHAT, records[i], end_token=end, max_length=1024)
                     for i in order[:2]], pad_id=end.id)
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    loss = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]),
                                             batch["labels"][:, 1:].reshape(-1), ignore_index=IGNORE_INDEX)
    assert abs(float(loss) - document["steps"][3]["loss"]) < 1e-4

    # And not from a fresh adapter: the same batch on the base model alone scores differently.
    set_peft_model_state_dict(model, {k: torch.zeros_like(v) for k, v in _adapter_tensors(stage_one).items()
                                      if "lora_B" in k})
    with torch.no_grad():
        fresh = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    fresh_loss = torch.nn.functional.cross_entropy(fresh[:, :-1].reshape(-1, fresh.shape[-1]),
                                                   batch["labels"][:, 1:].reshape(-1), ignore_index=IGNORE_INDEX)
    assert abs(float(fresh_loss) - float(loss)) > 1e-3


def _eval_split(tmp_path: Path, train: slice, held: slice) -> tuple[Path, Path]:
    """Depression records for training and gold-labelled posts (id, text, label) for validation."""
    records = [json.loads(line) for line in resolve_path("sample:depression").read_text(encoding="utf-8").splitlines()]
    train_file = _write_jsonl(tmp_path / "train.jsonl", records[train])
    eval_file = _write_jsonl(tmp_path / "eval.jsonl", [{"id": r["id"], "text": r["input"],
                                                        "label": r["output"].split("\n")[0].split("：")[1]}
                                                       for r in records[held]])
    return train_file, eval_file


def test_validation_after_each_epoch_writes_metrics(base, tmp_path, capsys):
    train_file, eval_file = _eval_split(tmp_path, slice(0, 6), slice(6, 11))
    out = tmp_path / "run"
    result = _train(base, out, stages=[{"data": [str(train_file)]}], epochs=2, batch_size=3, task="depression",
                    eval_data=str(eval_file), eval_max_new_tokens=12, learning_rate=1e-3)
    assert result.steps == 4
    document = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    assert document["task"] == "depression" and document["primary_metric"] == "weighted_f1"
    assert [(e["stage"], e["epoch"], e["step"]) for e in document["evaluations"]] == [(1, 1, 2), (1, 2, 4)]
    for evaluation in document["evaluations"]:
        assert evaluation["primary_metric"] == "weighted_f1"
        assert isinstance(evaluation["primary_value"], float) and 0.0 <= evaluation["primary_value"] <= 1.0
        assert evaluation["metrics"]["weighted_f1"] == evaluation["primary_value"]
        assert evaluation["counts"]["posts"] == 5
    err = capsys.readouterr().err
    assert err.count("eval after stage 1 epoch") == 2 and "weighted_f1 = " in err


def test_validation_metrics_equal_evaluate_with_the_saved_adapter(base, tmp_path):
    """The last per-epoch validation is what `mentalglm evaluate --backend torch -O adapter=RUN/adapter` reports
    with the options metrics.json records: one generation path, by construction."""
    from mentalglm.analysis.analyzer import Analyzer
    from mentalglm.data.readers import read_posts
    from mentalglm.evaluation.evaluate import evaluate

    train_file, eval_file = _eval_split(tmp_path, slice(0, 40), slice(40, 46))
    out = tmp_path / "run"
    result = _train(base, out, stages=[{"data": [str(train_file)]}], max_steps=30, batch_size=2, task="depression",
                    eval_data=str(eval_file), eval_max_new_tokens=20, eval_batch_size=4, learning_rate=5e-3,
                    warmup_ratio=0.0, seed=7)
    document = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    validation = document["evaluations"][-1]
    assert validation["step"] == result.steps == 30
    assert document["backend"] == "torch" and document["options"] == {"constrained": False, "max_new_tokens": 20}
    assert "-O constrained=false" in document["evaluate_command"]
    assert f"-O adapter={out / 'adapter'}" in document["evaluate_command"]

    options = {**document["options"], "adapter": str(out / "adapter"), "device": "cpu", "dtype": "float32"}
    with Analyzer(task="depression", backend="torch", model=str(base), options=options, prompt=document["prompt"],
                  batch_size=4) as analyzer:
        report = evaluate(analyzer, read_posts(eval_file, analyzer.task), tmp_path / "eval", data=str(eval_file),
                          progress=False)
    assert report["metrics"] == validation["metrics"]
    assert report["primary_value"] == validation["primary_value"]
    assert {k: report["counts"][k] for k in ("posts", "valid", "invalid")} == validation["counts"]
    # Whether 30 steps teach this tiny model the label line depends on its random start, so the
    # match is not required to include valid answers; that the two paths produce the same tokens
    # is test_validation_generates_what_the_torch_backend_generates. Here: real generations were scored.
    predictions = [json.loads(line) for line in (tmp_path / "eval" / "predictions.jsonl").read_text().splitlines()]
    assert len(predictions) == 6 and all(p["usage"]["completion_tokens"] > 0 for p in predictions)


def test_validation_generates_what_the_torch_backend_generates(trained, base, tokenizer):
    """Validation's path (the in-memory adapter wrapped by TorchBackend.from_model) and inference (the saved
    adapter loaded by the torch backend) agree token for token."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from mentalglm.analysis.analyzer import Analyzer
    from mentalglm.backends.torch_backend import TorchBackend
    from mentalglm.data.readers import read_posts
    from mentalglm.training.validation import decoding_options

    out, _ = trained
    posts = read_posts("sample:depression")[:4]
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), out / "adapter").eval()
    with TorchBackend.from_model(model, tokenizer, decoding_options(16)) as wrapped:
        mine = [p.output for p in Analyzer(task="depression", backend=wrapped, batch_size=4).analyze_many(posts)]
    options = {"adapter": str(out / "adapter"), "constrained": False, "max_new_tokens": 16, "device": "cpu",
               "dtype": "float32"}
    with Analyzer(task="depression", backend="torch", model=str(base), options=options, batch_size=4) as analyzer:
        theirs = [p.output for p in analyzer.analyze_many(posts)]
    assert mine == theirs
    assert any(text.startswith("标签") for text in mine)  # 30 steps already teach the answer's first word


# -- kill and resume --------------------------------------------------------------------------
def _train_command(base, out, *extra):
    return [sys.executable, "-m", "mentalglm", "train", "--model", str(base), "--output", str(out),
            "--stage", "sample:depression", "--stage", "sample:suicide-risk", "--max-steps", "7",
            "--batch-size", "2", "--max-length", "1024", "--learning-rate", "2e-3", "--save-every", "2",
            "--seed", "11", *extra]


def test_killed_run_resumes_to_the_same_weights(base, tmp_path):
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    process = subprocess.Popen(_train_command(base, killed), env=SUBPROCESS_ENV, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE)
    kill_when(process, lambda: (killed / "checkpoints" / "step-2").is_dir(), poll=0.01)
    assert not (killed / "train_summary.json").exists()

    # The uninterrupted run and the resumed one side by side (one thread each).
    uninterrupted = subprocess.Popen(_train_command(base, straight, "--quiet"), env=SUBPROCESS_ENV,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    resumed = subprocess.run(_train_command(base, killed), env=SUBPROCESS_ENV, capture_output=True, text=True,
                             timeout=300)
    _, straight_err = uninterrupted.communicate(timeout=300)
    assert uninterrupted.returncode == 0, straight_err
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming from" in resumed.stderr and "Traceback" not in resumed.stderr
    step = int(resumed.stderr.split("(step ")[1].split(")")[0])
    assert 2 <= step < 14

    a, b = _adapter_tensors(straight / "adapter"), _adapter_tensors(killed / "adapter")
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
    losses = [json.loads((folder / "loss.json").read_text(encoding="utf-8"))["steps"] for folder in (straight, killed)]
    assert len(losses[0]) == 14 and losses[0] == losses[1]
    assert len(list((killed / "checkpoints").iterdir())) == 2  # keep the last 2
    rerun = subprocess.run(_train_command(base, killed), env=SUBPROCESS_ENV, capture_output=True, text=True,
                           timeout=300)
    assert rerun.returncode == 0 and "already finished" in rerun.stderr


# -- bad input stops before training ----------------------------------------------------------
def _bad(tmp_path, name, rows):
    return _write_jsonl(tmp_path / name, rows)


GOOD = {"instruction": "判断下面这条帖子的发帖者是否表现出抑郁。", "input": "最近总是失眠。",
        "output": "标签：抑郁\n解释：失眠。"}


@pytest.mark.parametrize("case", ["no-output", "empty", "wrong-label", "long-prompt", "malformed"])
def test_bad_data_is_one_line_before_training(case, base, tmp_path, capsys):
    extra: list[str] = []
    if case == "no-output":
        data, expected = _bad(tmp_path, "d.jsonl", [GOOD, {k: v for k, v in GOOD.items() if k != "output"}]), \
            r"d\.jsonl:2: field 'output': missing"
    elif case == "empty":
        data, expected = tmp_path / "d.jsonl", r"d\.jsonl: no records found"
        data.write_text("", encoding="utf-8")
    elif case == "wrong-label":
        data, expected = _bad(tmp_path, "d.jsonl", [GOOD, GOOD, {**GOOD, "output": "标签：焦虑\n解释：……"}]), \
            r"d\.jsonl:3: field 'output': label line names no label of task 'depression'.*allowed: 抑郁, 非抑郁"
        extra = ["--task", "depression"]
    elif case == "long-prompt":
        data, expected = _bad(tmp_path, "d.jsonl", [GOOD, {**GOOD, "input": "很长的帖子" * 80}]), \
            (r"d\.jsonl:2: field 'input': the prompt alone is \d+ tokens, no room for the response within "
             r"--max-length 200")
        extra = ["--max-length", "200"]
    else:
        data = tmp_path / "d.jsonl"
        data.write_text(json.dumps(GOOD, ensure_ascii=False) + "\n{oops\n", encoding="utf-8")
        expected = r"d\.jsonl:2: malformed JSON"
    out = tmp_path / "run"
    code = main(["--model", str(base), "--data", str(data), "--output", str(out), *extra])
    err = capsys.readouterr().err
    assert code == 1
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert err.startswith("mentalglm: error: ")
    import re

    assert re.search(expected, err), err
    assert not out.exists()  # nothing started


@pytest.mark.parametrize("extra, expected", [
    (["--eval-data", "sample:depression"], "eval_data needs task"),
    (["--precision", "bf16", "--device", "cpu"], "--precision bf16 needs a CUDA GPU"),
    (["--target-modules", "q_proj,q_prj"], "'q_prj' is not a linear layer of this model"),
    (["--lora-r", "0"], "command line: --lora-r: Input should be greater than or equal to 1"),
    (["--lr-scheduler", "cosine", "--data", "sample:depression", "--stage", "sample:depression"], "not both"),
])
def test_bad_settings_are_one_line(extra, expected, base, tmp_path, capsys):
    args = ["--model", str(base), "--output", str(tmp_path / "run"), *extra]
    if "--data" not in extra:
        args += ["--data", "sample:depression"]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and expected in err, err
    assert not (tmp_path / "run").exists()


def test_config_file_stages_and_overrides(tmp_path, base):
    import argparse

    from mentalglm.cli.train import add_parser as add_train_parser

    (tmp_path / "data").mkdir()
    _write_jsonl(tmp_path / "data" / "en.jsonl", [GOOD])
    config_file = tmp_path / "train.yaml"
    config_file.write_text(
        f"model: {base}\noutput: runs/x\nlora_r: 16\ntarget_modules: q_proj,v_proj\nstages:\n"
        "  - data: [data/en.jsonl]\n    epochs: 1\n  - data: sample:depression\n    learning_rate: 1.0e-4\n",
        encoding="utf-8")
    parser = argparse.ArgumentParser()
    add_train_parser(parser.add_subparsers(dest="command"))
    config = config_from_args(parser.parse_args(["train", "--config", str(config_file), "--lora-r", "4"]))
    assert config.lora_r == 4 and config.target_modules == ["q_proj", "v_proj"]
    assert config.output == str(tmp_path / "runs" / "x")
    assert config.stages[0].data == [str(tmp_path / "data" / "en.jsonl")] and config.stages[0].epochs == 1
    assert config.stages[1].data == ["sample:depression"] and config.stage_learning_rate(1) == 1e-4
    assert config.stage_learning_rate(0) == 2e-4 and config.stage_length(0, 10) == (10, 1)
    assert config.stage_length(1, 10) == (30, 3)

    config_file.write_text(f"model: {base}\noutput: x\nlora_rr: 4\nstages: [{{data: [a.jsonl]}}]\n", encoding="utf-8")
    with pytest.raises(MentalGLMError, match=r"train\.yaml: setting 'lora_rr': unknown \(did you mean 'lora_r'\?\)"):
        config_from_args(parser.parse_args(["train", "--config", str(config_file)]))


# -- the command line is generated from TrainConfig ---------------------------------------------
#: Every option `mentalglm train` had before its options were generated; scripts use them.
FLAGS_IN_USE = (
    "--model", "--data", "--stage", "--config", "-o", "--output", "--prompt", "--system", "--end-token", "--task",
    "--max-length", "--lora-r", "--lora-alpha", "--lora-dropout", "--target-modules", "--learning-rate", "--lr",
    "--lr-scheduler", "--warmup-ratio", "--weight-decay", "--max-grad-norm", "--epochs", "--max-steps",
    "--batch-size", "--gradient-accumulation", "--seed", "--precision", "--gradient-checkpointing", "--device",
    "--trust-remote-code", "--save-every", "--keep-checkpoints", "--eval-data", "--eval-max-new-tokens",
    "--eval-batch-size", "--log-every", "--quiet", "--json",
)


def _train_parser():
    import argparse

    from mentalglm.cli.train import add_parser as add_train_parser

    parser = argparse.ArgumentParser()
    add_train_parser(parser.add_subparsers(dest="command"))
    return parser


def _documented_train_flags() -> set[str]:
    """Options docs/training.md (the fine-tuning guide) documents for `mentalglm train`."""
    import re

    section = (Path(__file__).resolve().parents[1] / "docs" / "training.md").read_text(encoding="utf-8")
    flags = set()
    for line in section.splitlines():
        if line.startswith("mentalglm train"):
            flags |= set(re.findall(r"(?<!\S)(--[a-z][a-z-]*|-o)(?=\s|$)", line.split("#")[0]))
    flags |= {span.split()[0] for span in re.findall(r"`(--[^`]+)`", section)}
    return flags


def _sub_parser(parser):
    return next(a for a in parser._actions if a.dest == "command").choices["train"]


def test_every_setting_is_an_option_and_documented_flags_still_work():
    from mentalglm.training.config import TrainConfig

    known = set(_sub_parser(_train_parser())._option_string_actions)
    for name in TrainConfig.model_fields:
        if name == "data_mapping":  # set by the shared data mapping flags, one per mapping key
            assert {"--text-field", "--label-field", "--id-field", "--label-map", "--columns", "--encoding"} <= known
        elif name != "stages":
            assert "--" + name.replace("_", "-") in known, name
    assert set(FLAGS_IN_USE) <= known, set(FLAGS_IN_USE) - known
    documented = _documented_train_flags()
    assert {"--data", "--stage", "--config", "--task", "--max-steps"} <= documented  # the reader works
    assert documented <= known, documented - known


@pytest.mark.parametrize("argv, expected", [
    (["--lora-r", "4"], {"lora_r": 4}),
    (["--lr", "1e-3"], {"learning_rate": 1e-3}),
    (["--learning-rate", "1e-3"], {"learning_rate": 1e-3}),
    (["--lora-alpha", "8"], {"lora_alpha": 8.0}),
    (["--max-steps", "7"], {"max_steps": 7}),
    (["--lr-scheduler", "cosine"], {"lr_scheduler": "cosine"}),
    (["--target-modules", "q_proj,v_proj"], {"target_modules": "q_proj,v_proj"}),
    (["--gradient-checkpointing"], {"gradient_checkpointing": True}),
    (["--no-quiet"], {"quiet": False}),
    (["-o", "runs/x"], {"output": "runs/x"}),
    ([], {"lora_r": None, "quiet": None, "learning_rate": None}),  # not given: the config file or default decides
])
def test_generated_options_parse_to_typed_values(argv, expected):
    args = _train_parser().parse_args(["train", *argv])
    for key, value in expected.items():
        assert getattr(args, key) == value and type(getattr(args, key)) is type(value), key


def test_help_comes_from_the_field_descriptions():
    text = " ".join(_sub_parser(_train_parser()).format_help().split())  # as one line, wrapping aside
    assert "LoRA rank (default 8)" in text and "~30% slower" in text
    assert "--lr-scheduler {linear,cosine,constant}" in text
    assert "(default q_proj,k_proj,v_proj,o_proj,gate_up_proj,down_proj)" in text


def test_precedence_defaults_config_file_command_line(tmp_path, base):
    config_file = tmp_path / "train.yaml"
    config_file.write_text(f"model: {base}\noutput: out\nquiet: true\nlora_r: 16\nseed: 3\n"
                           "stages: [{data: [sample:depression]}]\n", encoding="utf-8")
    parser = _train_parser()
    config = config_from_args(parser.parse_args(["train", "--config", str(config_file), "--no-quiet", "--seed", "9"]))
    assert (config.quiet, config.seed) == (False, 9)  # command line over the file
    assert config.lora_r == 16  # the file over the default
    assert config.lora_alpha == 16.0 and config.epochs == 3  # defaults where neither says


def test_a_new_setting_is_a_new_option(monkeypatch, base):
    """Adding a TrainConfig field is the only step needed for a new `mentalglm train` option."""
    from pydantic import Field

    import mentalglm.training.config as settings

    class Extended(settings.TrainConfig):
        new_knob: int = Field(3, ge=1, description="a knob added later")

    monkeypatch.setattr(settings, "TrainConfig", Extended)
    parser = _train_parser()
    assert "a knob added later (default 3)" in " ".join(_sub_parser(parser).format_help().split())
    argv = ["train", "--model", str(base), "--output", "x", "--data", "a.jsonl", "--new-knob"]
    assert config_from_args(parser.parse_args([*argv, "5"])).new_knob == 5
    with pytest.raises(MentalGLMError, match="command line: --new-knob: Input should be greater than or equal to 1"):
        config_from_args(parser.parse_args([*argv, "0"]))


def test_train_reads_a_distributed_dataset_with_the_shared_mapping_flags(base, tmp_path, capsys):
    """A tab-separated .csv with numeric labels (as SOS-HL-1K ships) trains with --label-map; the
    mapping is part of the run's settings, so resuming with another mapping is refused."""
    from mentalglm.cli import main

    records = [json.loads(line) for line in resolve_path("sample:suicide-risk").read_text(encoding="utf-8")
               .splitlines()][:8]
    rows = ["id\tlabel\tcomment"] + [f"{r['id']}\t{1 if r['output'].startswith('标签：高') else 0}\t"
                                     f"{r['input'].replace(chr(9), ' ').replace(chr(10), ' ')}" for r in records]
    data = tmp_path / "sos.csv"
    data.write_text("\n".join(rows) + "\n", encoding="utf-8")
    out = tmp_path / "run"
    args = ["train", "--model", str(base), "--output", str(out), "--data", str(data), "--task", "suicide-risk",
            "--text-field", "comment", "--max-steps", "2", "--batch-size", "2", "--max-length", "512", "--quiet"]
    assert main([*args, "--label-map", "0=低自杀风险,1=高自杀风险"]) == 0
    manifest = json.loads((out / "train_config.json").read_text(encoding="utf-8"))
    assert manifest["settings"]["data_mapping"] == {"text_field": "comment",
                                                    "label_map": {"0": "低自杀风险", "1": "高自杀风险"}}
    assert manifest["data"]["stages"][0]["examples"] == 8
    capsys.readouterr()
    assert main([*args, "--label-map", "0=高自杀风险,1=低自杀风险"]) == 1
    error = capsys.readouterr().err
    assert "data_mapping" in error and len(error.strip().splitlines()) == 1
    assert main([*args, "--label-map", "0=低自杀风险,1=无风险"]) == 1
    assert "无风险" in capsys.readouterr().err  # a value outside the task is named, never trained on


def test_prompt_auto_trains_on_the_base_models_own_template(base, tmp_path):
    """`--prompt auto` in training renders records with the base model's chat template (for a GLM: glm4-chat),
    not the placeholder the name stands for; a model without a template is refused before anything runs."""
    auto = _train(base, tmp_path / "auto", prompt="auto", max_steps=2, seed=3)
    named = _train(base, tmp_path / "named", prompt="glm4-chat", max_steps=2, seed=3)
    assert auto.final_loss == named.final_loss

    bare = tmp_path / "bare"
    shutil.copytree(base, bare)
    tok_config = json.loads((bare / "tokenizer_config.json").read_text(encoding="utf-8"))
    tok_config.pop("chat_template", None)
    (bare / "tokenizer_config.json").write_text(json.dumps(tok_config), encoding="utf-8")
    (bare / "chat_template.jinja").unlink(missing_ok=True)
    with pytest.raises(MentalGLMError, match=r"has no chat template.*--prompt plain"):
        _train(bare, tmp_path / "bare-run", prompt="auto", max_steps=1)
