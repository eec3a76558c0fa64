"""How many layers of a GGUF model fit a GPU-memory budget, from the file's own tensor sizes.

llama.cpp offloads whole layers (``n_gpu_layers``); a layer costs its weights plus its share
of the KV cache at ``n_ctx`` — for every parallel sequence, since each has a window of its own
(``n_seq``). ``n_layers + 1`` also puts the output matrix on the GPU. A fixed reserve covers
llama.cpp's compute buffers, which the file cannot tell.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from mentalglm.core.errors import OptionsError

_UNITS = {"": 1, "b": 1, "k": 10**3, "kb": 10**3, "kib": 2**10, "m": 10**6, "mb": 10**6, "mib": 2**20,
          "g": 10**9, "gb": 10**9, "gib": 2**30, "t": 10**12, "tb": 10**12, "tib": 2**40}
#: Compute buffers and CUDA context llama.cpp needs beyond weights and KV cache.
DEFAULT_RESERVE = 512 * 2**20


def parse_bytes(text: str) -> int:
    """``6GiB``, ``6 GB``, ``6000MiB``, ``512m`` or a plain byte count → bytes.

    Raises:
        OptionsError: text that is not a size.
    """
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", str(text))
    unit = match and match.group(2).lower()
    if not match or unit not in _UNITS:
        raise OptionsError(f"'{text}' is not a memory size (examples: 6GiB, 8GB, 5500MiB)")
    return int(float(match.group(1)) * _UNITS[unit])


@dataclass(frozen=True)
class LayerCosts:
    """Bytes the GPU needs per offloaded part of one model at one context length."""

    n_layers: int
    layer_bytes: tuple[int, ...]  # weights + KV cache of each block
    output_bytes: int             # the output matrix and final norm (the "+1" layer)

    def layers_that_fit(self, budget: int, reserve: int = DEFAULT_RESERVE) -> int:
        """The ``n_gpu_layers`` to pass: how many blocks fit, ``n_layers + 1`` if the output fits too."""
        left = budget - reserve
        count = 0
        for cost in self.layer_bytes:
            if cost > left:
                return count
            left -= cost
            count += 1
        return count + 1 if self.output_bytes <= left else count


def kv_cache_bytes(n_ctx: int, n_kv_heads: int, head_dim: int, bytes_per_value: float = 2, n_seq: int = 1) -> int:
    """KV-cache bytes of one layer: keys and values of ``n_ctx`` positions for each of ``n_seq`` sequences."""
    return int(2 * n_ctx * n_seq * n_kv_heads * head_dim * bytes_per_value)


def layer_costs(gguf_path: str | Path, n_ctx: int, kv_bytes_per_value: float = 2, n_seq: int = 1) -> LayerCosts:
    """Per-layer GPU cost of a GGUF file at ``n_ctx`` (f16 KV cache by default) for ``n_seq`` parallel sequences."""
    import gguf

    from mentalglm.modelfiles.gguf_fields import field_value

    reader = gguf.GGUFReader(str(gguf_path))

    def get(key):
        return field_value(reader.fields[key]) if key in reader.fields else None

    arch = get("general.architecture")
    n_layers = int(get(f"{arch}.block_count"))
    n_kv_heads = int(get(f"{arch}.attention.head_count_kv"))
    head_dim = get(f"{arch}.attention.key_length")
    if head_dim is None:
        head_dim = int(get(f"{arch}.embedding_length")) // int(get(f"{arch}.attention.head_count"))
    weights = [0] * n_layers
    output = 0
    for tensor in reader.tensors:
        found = re.match(r"blk\.(\d+)\.", tensor.name)
        if found:
            weights[int(found.group(1))] += int(tensor.n_bytes)
        elif tensor.name.startswith("output"):
            output += int(tensor.n_bytes)
    kv = kv_cache_bytes(n_ctx, n_kv_heads, int(head_dim), kv_bytes_per_value, n_seq)
    return LayerCosts(n_layers, tuple(w + kv for w in weights), output)

