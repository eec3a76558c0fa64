"""Helpers for tests on tiny GLM models: build them once, run them in transformers and llama.cpp."""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import Callable

import numpy as np

#: Varied Chinese text for tokenizer and logit parity (full-width punctuation, emoji, digits,
#: English, new lines, long runs of one character).
VARIED_TEXTS = [
    "我不想活了。",
    "我不想死了，谢谢大家！！",
    "呵呵，生活真是太美好了😭😭😭 2024年10月1日，I feel so depressed...",
    "“活着没意思”——朋友这么说，我该怎么劝她？\n\n第二段：  空格  和\t制表符",
    "啊" * 40 + "！！！！",
    "emo了 yyds 绝绝子 (´；ω；`) 12345678 3.1415926",
    "line one\r\nline two\n\n\n末尾",
    "[gMASK]<sop><|user|>\n判断下面这条帖子。\n最近总是失眠<|assistant|>\n标签：抑郁",
]


def build_models(root: Path) -> dict[str, Path]:
    """The tiny models the converter tests use, built into ``root``.

    ``glm`` has rope_theta 5e6 and eps 1e-6 (what llama.cpp's own converter gets wrong for
    HF-native configs); ``glm4`` is GLM-4-0414 with its extra norms; ``chatglm`` is ``glm``
    written in the original THUDM layout.
    """
    from mentalglm.demo.tiny import build_tiny_glm, write_chatglm_layout

    glm = build_tiny_glm(root / "glm", arch="glm", hidden_size=128, num_layers=2, num_heads=4, num_kv_heads=2,
                         intermediate_size=256, rope_theta=5e6, rms_norm_eps=1e-6, seed=1)
    glm4 = build_tiny_glm(root / "glm4", arch="glm4", hidden_size=128, num_layers=2, num_heads=4, num_kv_heads=2,
                          intermediate_size=256, rope_theta=10000.0, rms_norm_eps=1e-5, seed=2)
    chatglm = write_chatglm_layout(glm, root / "chatglm")
    return {"glm": Path(glm), "glm4": Path(glm4), "chatglm": Path(chatglm)}


def hf_logits(model_dir: Path, ids: list[int]) -> np.ndarray:
    """Logits of every position from transformers, in float32."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].numpy()


def hf_greedy(model_dir: Path, ids: list[int], n: int) -> list[int]:
    """``n`` greedy tokens from transformers (end-of-generation tokens do not stop it)."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    with torch.no_grad():
        out = model.generate(torch.tensor([ids]), max_new_tokens=n, min_new_tokens=n, do_sample=False)
    return out[0, len(ids):].tolist()


def load_llama(path: Path, **kwargs):
    """A llama_cpp.Llama on ``path`` with all logits and an f32 KV cache (for parity tests)."""
    from mentalglm.backends.llamacpp_native import open_llama

    options = dict(n_ctx=512, logits_all=True, type_k=0, type_v=0, n_threads=2, seed=0)
    options.update(kwargs)
    return open_llama(path, **options)


def llama_logits(llm, ids: list[int]) -> np.ndarray:
    """Logits of every position from llama.cpp."""
    llm.reset()
    llm.eval(ids)
    return np.array(llm.scores[: len(ids)])


def llama_greedy(llm, ids: list[int], n: int) -> list[int]:
    """``n`` argmax tokens from llama.cpp (no sampler, so nothing but the logits decides)."""
    llm.reset()
    llm.eval(ids)
    out = []
    for _ in range(n):
        token = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        out.append(token)
        llm.eval([token])
    return out


def kill_when(process, ready: Callable[[], bool], timeout: float = 120, poll: float = 0.02) -> None:
    """SIGKILL ``process`` as soon as ``ready()`` holds; fail the test if it ends (or times out) first."""
    import pytest

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None and not ready():
        time.sleep(poll)
    if process.poll() is not None:
        pytest.fail(f"the run ended before it could be killed: {process.stderr.read().decode()[-800:]}")
    if not ready():
        process.kill()
        pytest.fail(f"the run was not ready to be killed within {timeout} s")
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
