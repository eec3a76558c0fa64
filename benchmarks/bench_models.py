"""Benchmark models: a GLM of ~85M parameters (``full``) or a tiny one (``smoke``), built once per session."""

from __future__ import annotations

import os
from pathlib import Path

SCALE = os.environ.get("MENTALGLM_BENCH_SCALE", "full")
#: build_tiny_glm arguments per scale; full ≈ 85M parameters with an 8k-token vocabulary.
SHAPES = {
    "full": dict(hidden_size=768, num_layers=12, num_heads=12, num_kv_heads=2, intermediate_size=2048,
                 tokenizer_vocab_size=8192),
    "smoke": dict(hidden_size=128, num_layers=2, num_heads=4, num_kv_heads=2, intermediate_size=256),
}


def build_bench_model(root: Path) -> Path:
    """The benchmark GLM (random weights; speed does not depend on what the weights say)."""
    from mentalglm.demo.tiny import build_tiny_glm

    return build_tiny_glm(root / f"glm-{SCALE}", arch="glm", seed=0, **SHAPES[SCALE])


def long_instruction_task():
    """The depression task with a long instruction (label definitions and examples), ≥ 4× a typical post."""
    from mentalglm import Label, SingleLabelTask
    from mentalglm.core.plugin_manager import PluginManager

    base = PluginManager(load_entry_points=False).task("depression")
    guide = ("抑郁的判断要点：持续两周以上的情绪低落、兴趣或愉快感丧失、精力不足、睡眠和食欲改变、"
             "无价值感或过度自责、注意力下降、对未来无望，以及反复出现的死亡念头。只有一时的疲惫、"
             "短暂的失落、考试或工作压力带来的抱怨、正常的哀伤反应，都不应判断为抑郁。请只根据帖子本身的内容判断，"
             "不要猜测帖子之外的信息；引用的歌词、他人的话和玩笑不代表发帖者本人的状态。")
    return SingleLabelTask(name="depression-long", instruction=base.instruction + "\n" + guide * 2,
                           labels=[Label(l.name, l.aliases) for l in base.labels])


# -- shared by test_backends.py and test_torch_batching.py -------------------------------------
_SHARED: dict = {}


def shared_bench_model(tmp_path_factory) -> Path:
    """The benchmark model, built once per pytest session for every suite that asks here."""
    key = ("model", str(tmp_path_factory.getbasetemp()))
    if key not in _SHARED:
        _SHARED[key] = build_bench_model(tmp_path_factory.mktemp("bench-shared"))
    return _SHARED[key]


def shared_gguf(tmp_path_factory, outtype: str) -> Path:
    """The benchmark model exported to GGUF at ``outtype``, once per pytest session."""
    from mentalglm.converters.gguf_export import export_gguf

    model = shared_bench_model(tmp_path_factory)
    key = ("gguf", str(tmp_path_factory.getbasetemp()), outtype)
    if key not in _SHARED:
        _SHARED[key] = export_gguf(model, model.parent / f"{model.name}-{outtype}.gguf", outtype=outtype).path
    return _SHARED[key]


def model_parameters(model: Path) -> int:
    """Parameter count of a model directory (its safetensors entries)."""
    from mentalglm.modelfiles.safetensors import SafetensorsCheckpoint

    total = 0
    for entry in SafetensorsCheckpoint(model).entries.values():
        count = 1
        for size in entry.shape:
            count *= size
        total += count
    return total


def depression_posts(n: int) -> list:
    """The first ``n`` posts of ``sample:depression`` with 20–120 characters (56 such posts exist)."""
    from mentalglm.data.readers import read_posts

    posts = [p for p in read_posts("sample:depression") if 20 <= len(p.text) <= 120][:n]
    if len(posts) < n:
        raise ValueError(f"sample:depression has only {len(posts)} posts of 20–120 characters, {n} asked")
    return posts


def bench_threads() -> int:
    """Threads for llama.cpp and torch on both sides of a benchmark: ``MENTALGLM_BENCH_THREADS``, else every
    physical core this process may use.

    Never the load-adjusted default of the backends: the load average left by the previous rounds (or by a
    benchmark's own clients) would change the thread count, and so the figures, from one run to the next.
    """
    from mentalglm.core.threads import physical_cores, usable_cpus

    return int(os.environ.get("MENTALGLM_BENCH_THREADS") or 0) or physical_cores(usable_cpus())


def alternate(workloads, rounds: int):
    """Run N workloads for ``rounds`` rounds, rotating the order by one each round.

    Round ``r`` starts with workload ``r mod N`` (two workloads simply alternate), so drift on a
    noisy machine hits every workload alike.

    Args:
        workloads: label → zero-argument callable.
        rounds: rounds to run (each runs every workload once).

    Returns:
        ``(seconds, results)``: label → list of round seconds, label → what its last call returned.
    """
    import time

    labels = list(workloads)
    seconds: dict = {label: [] for label in labels}
    results: dict = {}
    for round_index in range(rounds):
        shift = round_index % len(labels)
        for label in labels[shift:] + labels[:shift]:
            start = time.perf_counter()
            results[label] = workloads[label]()
            seconds[label].append(time.perf_counter() - start)
    return seconds, results


def _tests_conftest():
    import importlib.util

    spec = importlib.util.spec_from_file_location("mentalglm_tests_conftest",
                                                  Path(__file__).resolve().parents[1] / "tests" / "conftest.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def server_launcher():
    """The tests' one ``python -m llama_cpp.server`` launcher (``tests/conftest.py``), loaded by path so the
    benchmarks start servers exactly as the tests do, without a second copy of it."""
    return _tests_conftest().llama_server_process


def llama_cpp_server_launcher():
    """The tests' one launcher of llama.cpp's own ``llama-server`` (``tests/conftest.py``), loaded likewise."""
    return _tests_conftest().llama_cpp_server_process


def build_real_vocab_glm(root: Path, tiktoken_path: Path, **shape) -> Path:
    """A GLM (random weights) over a real 151,643-rank BPE vocabulary plus the GLM-4 special tokens.

    ``qwen.tiktoken`` (the dashscope wheel) has the file format of GLM-4's ``tokenizer.model``, and
    MentalGLM's vocabulary is 151,552 tokens: what a decode step costs at the output layer, and what
    a grammar pass over the vocabulary costs, is what the real model's would.
    """
    from mentalglm.converters.tiktoken_bpe import glm4_tokenizer, read_tiktoken, write_hf_tokenizer
    from mentalglm.demo.tiny import build_tiny_glm
    from mentalglm.modelfiles.tokens import GLM4_SPECIAL_TOKENS

    ranks = read_tiktoken(tiktoken_path)
    first = max(ranks.values()) + 1
    specials = {first + i: text for i, text in enumerate(GLM4_SPECIAL_TOKENS)}
    tokenizer_dir = write_hf_tokenizer(glm4_tokenizer(ranks, specials), root / "tokenizer-151k",
                                       special_tokens=specials)
    return build_tiny_glm(root / "glm-151k", arch="glm", seed=0, tokenizer_dir=tokenizer_dir, **shape)


def teach_answers(model_dir: Path, *, steps: int, seed: int = 0, batch: int = 8, lr: float = 3e-3) -> dict:
    """Fine-tune all of a random GLM's weights for ``steps`` on the suicide-risk sample's answers, in place.

    A model of random weights answers nothing like the task's format, so a constrained decoder spends its
    time rejecting tokens no real model would choose; a model that has seen the answers writes them and the
    constraint's cost is the one a real model pays. Loss on the answer tokens only; the output layer runs
    on those positions alone (the 151k vocabulary is what costs). Returns the first and last losses.
    """
    import json

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from mentalglm.core.prompt import GLM4_CHAT

    torch.manual_seed(seed)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    model.train()
    records = [json.loads(line) for line in
               (Path(__file__).resolve().parent.parent / "mentalglm/samples/suicide-risk.jsonl").read_text(
                   encoding="utf-8").splitlines()]
    examples = []
    for record in records:
        prompt = tokenizer(GLM4_CHAT.render(record["instruction"], record["input"]), add_special_tokens=False)
        answer = tokenizer(record["output"] + "<|user|>", add_special_tokens=False)
        examples.append((prompt["input_ids"], answer["input_ids"]))
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    generator = torch.Generator().manual_seed(seed)
    losses = []
    for _ in range(steps):
        chosen = [examples[i] for i in torch.randint(len(examples), (batch,), generator=generator).tolist()]
        width = max(len(p) + len(a) for p, a in chosen)
        ids = torch.zeros((batch, width), dtype=torch.long)
        mask = torch.zeros((batch, width), dtype=torch.long)
        targets = []
        for row, (prompt, answer) in enumerate(chosen):
            sequence = prompt + answer
            ids[row, :len(sequence)] = torch.tensor(sequence)
            mask[row, :len(sequence)] = 1
            targets += [(row, len(prompt) - 1 + k, token) for k, token in enumerate(answer)]
        hidden = model.model(input_ids=ids, attention_mask=mask).last_hidden_state
        rows = torch.tensor([r for r, _, _ in targets])
        cols = torch.tensor([c for _, c, _ in targets])
        logits = model.lm_head(hidden[rows, cols])
        loss = torch.nn.functional.cross_entropy(logits, torch.tensor([t for _, _, t in targets]))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    model.eval()
    model.save_pretrained(model_dir, safe_serialization=True)
    return {"steps": steps, "first_loss": losses[0], "last_loss": losses[-1]}
