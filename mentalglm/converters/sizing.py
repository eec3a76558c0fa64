"""File size and memory of a GLM model per GGUF out type, from its config alone.

For the direct types the per-tensor choice is ours (see :mod:`gguf_export`). For K-quants,
llama.cpp decides per tensor (Q4_K_M puts some layers in Q6_K, and rows not divisible by 256 —
GLM-4-9B's ``ffn_down`` — fall back to Q5_0/Q8_0), so the estimate asks llama.cpp itself:
its quantizer runs on a skeleton file with the real names, layer count and row lengths but
only two rows per tensor, and the chosen types are then applied to the real shapes. Weights
are exact; the tokenizer metadata (a few MB for a 151k vocabulary) is not counted.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mentalglm.converters.glm_spec import GLMSpec


@dataclass(frozen=True)
class SizeEstimate:
    """Tensor bytes of one out type, in total and by GGML type."""

    outtype: str
    tensor_bytes: int
    bytes_by_type: dict[str, int]

    def memory_needed(self, spec: GLMSpec, n_ctx: int) -> int:
        """Weights plus an f16 KV cache at ``n_ctx`` (llama.cpp's compute buffers come on top)."""
        return self.tensor_bytes + spec.kv_cache_bytes(n_ctx)


def _tensor_bytes(shape: tuple[int, ...], kind) -> int:
    import gguf

    block, size = gguf.GGML_QUANT_SIZES[kind]
    return int(np.prod(shape, dtype=np.int64)) // block * size


def _k_quant_types(spec: GLMSpec, outtype: str) -> dict[str, object]:
    import gguf

    from mentalglm.converters.gguf_export import _k_quantize, add_shape_metadata

    shapes = spec.gguf_shapes()
    with tempfile.TemporaryDirectory(prefix="mentalglm-sizing-") as folder:
        skeleton, quantized = Path(folder) / "skeleton.gguf", Path(folder) / "quantized.gguf"
        writer = gguf.GGUFWriter(skeleton, spec.arch)
        add_shape_metadata(writer, spec)
        writer.add_file_type(gguf.LlamaFileType.ALL_F32)
        for name, shape in shapes.items():
            # Two rows keep a matrix a matrix (one row would count as a vector and stay f32).
            writer.add_tensor(name, np.zeros(shape if len(shape) == 1 else (2, shape[-1]), np.float32))
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        _k_quantize(skeleton, quantized, outtype)
        return {t.name: t.tensor_type for t in gguf.GGUFReader(quantized).tensors}


def estimate(spec: GLMSpec, outtype: str) -> SizeEstimate:
    """Tensor bytes of ``spec`` exported as ``outtype`` (K-quants: as llama.cpp would choose)."""
    from mentalglm.converters.gguf_export import DIRECT_TYPES, _ggml_type

    shapes = spec.gguf_shapes()
    if outtype in DIRECT_TYPES:
        types = {name: _ggml_type(outtype, shape) for name, shape in shapes.items()}
    else:
        types = _k_quant_types(spec, outtype)
    by_type: dict[str, int] = {}
    for name, shape in shapes.items():
        kind = types[name]
        by_type[kind.name] = by_type.get(kind.name, 0) + _tensor_bytes(shape, kind)
    return SizeEstimate(outtype, sum(by_type.values()), by_type)


def parallel_kv_cache_bytes(spec: GLMSpec, n_ctx: int, n_seq: int, bytes_per_value: int = 2) -> int:
    """KV cache of the llamacpp backend with ``n_seq`` parallel sequences: each has its own ``n_ctx`` window."""
    return n_seq * spec.kv_cache_bytes(n_ctx, bytes_per_value)


def parameter_count(spec: GLMSpec) -> int:
    """Parameters of the GGUF model (what llama.cpp loads)."""
    return sum(int(np.prod(shape, dtype=np.int64)) for shape in spec.gguf_shapes().values())
