"""Lazy, streaming reads of safetensors checkpoints without torch.

Tensors are read from disk with ordinary file reads, a block of rows at a time, so converting
a 9B model never holds more than one tensor (or one block) in memory and never maps the whole
file into the process. bf16 is widened to float32 bit-exactly (numpy has no bfloat16).
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from mentalglm.core.errors import MentalGLMError

_DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": np.uint16,
           "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_}
_INDEX = "model.safetensors.index.json"


@dataclass(frozen=True)
class TensorEntry:
    """Where one tensor lives: its file, safetensors dtype, shape and byte range."""

    name: str
    path: Path
    dtype: str
    shape: tuple[int, ...]
    start: int
    end: int

    @property
    def nbytes(self) -> int:
        """Bytes on disk."""
        return self.end - self.start

    @property
    def numel(self) -> int:
        """Number of elements."""
        return int(np.prod(self.shape, dtype=np.int64)) if self.shape else 1


def _read_header(path: Path) -> dict[str, TensorEntry]:
    try:
        with open(path, "rb") as handle:
            (length,) = struct.unpack("<Q", handle.read(8))
            if length > 100_000_000:
                raise ValueError("header too large")
            header = json.loads(handle.read(length))
    except (OSError, ValueError, struct.error) as exc:
        raise MentalGLMError(f"{path}: not a readable safetensors file ({exc})") from None
    base = 8 + length
    entries = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        if info["dtype"] not in _DTYPES:
            raise MentalGLMError(f"{path}: tensor '{name}' has unsupported dtype {info['dtype']}")
        start, end = info["data_offsets"]
        entries[name] = TensorEntry(name, path, info["dtype"], tuple(info["shape"]), base + start, base + end)
    return entries


def checkpoint_files(model_dir: str | Path) -> list[Path]:
    """The safetensors files of a model directory: the shards its index lists, or every ``*.safetensors``.

    Raises:
        MentalGLMError: no safetensors files (pickle ``.bin``/``.pt`` checkpoints are refused
            for safety: loading them can run code), a broken index, or a listed shard missing.
    """
    model_dir = Path(model_dir)
    index = model_dir / _INDEX
    if index.exists():
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
            files = sorted({model_dir / name for name in weight_map.values()})
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise MentalGLMError(f"{index}: broken safetensors index ({exc})") from None
    else:
        files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        pickles = sorted(p for pattern in ("*.bin", "*.pt", "*.pth") for p in model_dir.glob(pattern))
        if pickles:
            raise MentalGLMError(f"{pickles[0]}: pickle checkpoints are not loaded for safety; "
                                 "convert them to safetensors first")
        raise MentalGLMError(f"{model_dir}: no *.safetensors weights found")
    missing = [path for path in files if not path.exists()]
    if missing:
        raise MentalGLMError(f"{missing[0]}: listed in {_INDEX} but missing")
    return files


class SafetensorsCheckpoint:
    """All tensors of a model directory (one ``*.safetensors`` file or an indexed set of shards).

    Args:
        model_dir: the directory.

    Raises:
        MentalGLMError: no safetensors files (pickle ``.bin`` checkpoints are refused for
            safety), a broken index, or an unreadable file.
    """

    def __init__(self, model_dir: str | Path):
        self.dir = Path(model_dir)
        self.entries: dict[str, TensorEntry] = {}
        for path in checkpoint_files(self.dir):
            self.entries.update(_read_header(path))

    def __contains__(self, name: str) -> bool:
        return name in self.entries

    def names(self) -> list[str]:
        """Tensor names, in file order."""
        return list(self.entries)

    def entry(self, name: str) -> TensorEntry:
        """The entry of ``name``; raises MentalGLMError naming the directory if it is absent."""
        try:
            return self.entries[name]
        except KeyError:
            raise MentalGLMError(f"{self.dir}: tensor '{name}' not found in the checkpoint") from None

    def dtypes(self) -> set[str]:
        """The safetensors dtypes used by floating-point tensors."""
        return {e.dtype for e in self.entries.values() if e.dtype in ("F32", "F16", "BF16", "F64")}

    def read(self, name: str, rows: slice | None = None) -> np.ndarray:
        """Tensor ``name`` (or a block of its first-dimension rows) as float32 (floats) or its own dtype."""
        entry = self.entry(name)
        shape = entry.shape
        item = np.dtype(_DTYPES[entry.dtype]).itemsize
        start, count, out_shape = entry.start, entry.numel, shape
        if rows is not None and shape:
            first, last, _ = rows.indices(shape[0])
            row_elems = int(np.prod(shape[1:], dtype=np.int64)) if len(shape) > 1 else 1
            start += first * row_elems * item
            count = (last - first) * row_elems
            out_shape = (last - first, *shape[1:])
        with open(entry.path, "rb") as handle:
            handle.seek(start)
            data = np.fromfile(handle, dtype=_DTYPES[entry.dtype], count=count)
        if data.size != count:
            raise MentalGLMError(f"{entry.path}: tensor '{name}' is truncated")
        if entry.dtype == "BF16":
            data = (data.astype(np.uint32) << 16).view(np.float32)
        elif entry.dtype in ("F16", "F64"):
            data = data.astype(np.float32)
        return data.reshape(out_shape)

    def row_blocks(self, name: str, max_bytes: int = 8 << 20) -> Iterator[tuple[slice, np.ndarray]]:
        """Yield (row slice, float32 block) pairs covering tensor ``name`` in at most ~max_bytes blocks."""
        entry = self.entry(name)
        if len(entry.shape) < 2:
            yield slice(None), self.read(name)
            return
        row_bytes = max(1, entry.numel // entry.shape[0] * 4)
        step = max(1, max_bytes // row_bytes)
        for first in range(0, entry.shape[0], step):
            block = slice(first, min(first + step, entry.shape[0]))
            yield block, self.read(name, block)
