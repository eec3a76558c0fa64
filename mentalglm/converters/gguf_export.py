"""GLM → GGUF, streamed tensor by tensor, optionally merging a LoRA adapter on the way.

Out types ``f32``, ``f16``, ``bf16`` and ``q8_0`` are written directly (gguf-py's quantizer is
byte-identical to llama.cpp's for these); ``q4_k_m``, ``q5_k_m`` and ``q6_k`` go through
llama.cpp's own quantizer from a lossless intermediate file that is removed afterwards.
Each tensor is converted a block of rows at a time into its output buffer and written before
the next is read, so peak memory stays near the largest tensor, not the model. The output
appears under its name only when complete (written to a temporary name, then renamed).

Example:
    >>> export_gguf("MentalGLM-chat-hf", "mentalglm-q4_k_m.gguf", outtype="q4_k_m")  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mentalglm.converters.gguf_vocab import read_vocab
from mentalglm.converters.glm_spec import DROPPED, GLMSpec, read_spec
from mentalglm.converters.lora import LoraAdapter
from mentalglm.core.errors import MentalGLMError
from mentalglm.modelfiles.safetensors import SafetensorsCheckpoint

log = logging.getLogger(__name__)

DIRECT_TYPES = ("f32", "f16", "bf16", "q8_0")
K_QUANT_TYPES = ("q4_k_m", "q5_k_m", "q6_k")
OUTTYPES = DIRECT_TYPES + K_QUANT_TYPES


@dataclass
class ExportResult:
    """What an export produced."""

    path: Path
    outtype: str
    arch: str
    n_tensors: int
    file_bytes: int
    seconds: float
    spec: GLMSpec

    def memory_needed(self, n_ctx: int) -> int:
        """Bytes llama.cpp needs at ``n_ctx``: the weights plus an f16 KV cache (compute buffers excluded)."""
        return self.file_bytes + self.spec.kv_cache_bytes(n_ctx)


def _ggml_type(outtype: str, shape: tuple[int, ...]):
    import gguf

    Q = gguf.GGMLQuantizationType
    if len(shape) < 2:  # norms and biases stay f32, as llama.cpp's converter keeps them
        return Q.F32
    chosen = {"f32": Q.F32, "f16": Q.F16, "bf16": Q.BF16, "q8_0": Q.Q8_0}[outtype]
    block, _ = gguf.GGML_QUANT_SIZES[chosen]
    return chosen if shape[-1] % block == 0 else Q.F16


def _file_type(outtype: str) -> int:
    import gguf

    F = gguf.LlamaFileType
    return {"f32": F.ALL_F32, "f16": F.MOSTLY_F16, "bf16": F.MOSTLY_BF16, "q8_0": F.MOSTLY_Q8_0,
            "q4_k_m": F.MOSTLY_Q4_K_M, "q5_k_m": F.MOSTLY_Q5_K_M, "q6_k": F.MOSTLY_Q6_K}[outtype]


def _plan(spec: GLMSpec, checkpoint: SafetensorsCheckpoint) -> list[tuple[str, str]]:
    """(GGUF name, source name) for every tensor, in GGUF order; unknown source tensors are an error."""
    mapping = spec.tensor_map()
    plan = []
    for source, target in mapping.items():
        if source in checkpoint:
            plan.append((target, source))
        elif target == "output.weight" and spec.tie_embeddings:
            plan.append((target, spec.embedding_name))  # tied: llama.cpp still wants an output matrix
        elif not target.endswith(".bias"):
            raise MentalGLMError(f"{checkpoint.dir}: tensor '{source}' missing for a {spec.architecture} "
                                 f"with {spec.n_layers} layers")
    unknown = [n for n in checkpoint.names() if n not in mapping and not DROPPED.search(n)]
    if unknown:
        raise MentalGLMError(f"{checkpoint.dir}: tensor '{unknown[0]}' has no place in a {spec.arch} GGUF "
                             f"({len(unknown)} unknown tensors)")
    return plan


def add_shape_metadata(writer, spec: GLMSpec) -> None:
    """The hyper-parameters llama.cpp builds the model from (``{arch}.*`` keys)."""
    writer.add_context_length(spec.context_length)
    writer.add_embedding_length(spec.hidden_size)
    writer.add_feed_forward_length(spec.ffn_size)
    writer.add_block_count(spec.n_layers)
    writer.add_head_count(spec.n_heads)
    writer.add_head_count_kv(spec.n_kv_heads)
    writer.add_key_length(spec.head_dim)
    writer.add_value_length(spec.head_dim)
    writer.add_layer_norm_rms_eps(spec.rms_eps)
    writer.add_rope_dimension_count(spec.rope_dim)
    writer.add_rope_freq_base(spec.rope_base)


def _write_metadata(writer, spec: GLMSpec, model_dir: Path, outtype: str, name: str, adapter: str | None,
                    label: str) -> None:
    import gguf

    from mentalglm import __version__

    vocab = read_vocab(model_dir, spec.vocab_size)
    writer.add_type(gguf.GGUFType.MODEL)
    writer.add_name(name)
    add_shape_metadata(writer, spec)
    writer.add_vocab_size(spec.vocab_size)
    writer.add_file_type(_file_type(outtype))
    if outtype != "f32":
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("chatglm-bpe")
    writer.add_token_list(vocab.tokens)
    writer.add_token_types(vocab.token_types)
    writer.add_token_merges(vocab.merges)
    ids = vocab.special_ids
    writer.add_bos_token_id(ids["bos"])
    writer.add_eos_token_id(ids["eos"])
    writer.add_eot_token_id(ids["eot"])
    writer.add_eom_token_id(ids["eom"])
    writer.add_pad_token_id(ids["pad"])
    writer.add_unk_token_id(ids["unk"])
    writer.add_add_bos_token(False)  # prompts are rendered with [gMASK]<sop> already
    if vocab.chat_template:
        writer.add_chat_template(vocab.chat_template)
    writer.add_string("mentalglm.version", __version__)
    writer.add_string("mentalglm.source_model", model_dir.resolve().name)
    writer.add_string("mentalglm.source_architecture", spec.architecture)
    writer.add_string("mentalglm.outtype", label)
    if adapter:
        writer.add_string("mentalglm.adapter", adapter)


def _write_direct(model_dir: Path, out_path: Path, outtype: str, adapter_dir: Path | None, name: str,
                  label: str) -> tuple[GLMSpec, int]:
    """Write a GGUF whose tensors are ``outtype``; ``label`` is the out type recorded as provenance."""
    import gguf

    spec = read_spec(model_dir)
    checkpoint = SafetensorsCheckpoint(model_dir)
    adapter = LoraAdapter(adapter_dir) if adapter_dir else None
    if adapter:
        adapter.check_base(checkpoint)
    plan = _plan(spec, checkpoint)
    writer = gguf.GGUFWriter(out_path, spec.arch)
    try:
        _write_metadata(writer, spec, model_dir, outtype, name, adapter.dir.name if adapter else None, label)
        kinds = []
        for target, source in plan:
            shape = checkpoint.entry(source).shape
            kind = _ggml_type(outtype, shape)
            if kind in (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16):
                byte_shape, dtype = shape, (np.float32 if kind == gguf.GGMLQuantizationType.F32 else np.float16)
            else:  # bf16 and block quants are stored as raw bytes
                byte_shape, dtype = gguf.quant_shape_to_byte_shape(shape, kind), np.uint8
            nbytes = int(np.prod(byte_shape, dtype=np.int64)) * np.dtype(dtype).itemsize
            writer.add_tensor_info(target, byte_shape, np.dtype(dtype), nbytes, raw_dtype=kind)
            kinds.append((kind, byte_shape, dtype))
        writer.write_header_to_file(out_path)
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        for (_, source), (kind, byte_shape, dtype) in zip(plan, kinds):
            out = np.empty(byte_shape, dtype=dtype)
            for rows, block in checkpoint.row_blocks(source):
                if adapter:
                    block = adapter.merged_block(checkpoint, source, rows, block)
                out[rows] = _encode(block, kind).reshape(out[rows].shape)
            writer.write_tensor_data(out)
            del out
    finally:
        writer.close()
    return spec, len(plan)


def _encode(block: np.ndarray, kind) -> np.ndarray:
    import gguf

    if kind == gguf.GGMLQuantizationType.F32:
        return block.astype(np.float32, copy=False)
    if kind == gguf.GGMLQuantizationType.F16:
        return block.astype(np.float16)
    encoded = gguf.quants.quantize(np.ascontiguousarray(block, dtype=np.float32), kind)
    return encoded.view(np.uint8)


def _k_quantize(source: Path, target: Path, outtype: str) -> None:
    import ctypes

    from mentalglm.backends.llamacpp_native import llama_cpp_quiet

    with llama_cpp_quiet() as llama_cpp:
        params = llama_cpp.llama_model_quantize_default_params()
        params.ftype = _file_type(outtype)
        params.nthread = os.cpu_count() or 1
        status = llama_cpp.llama_model_quantize(str(source).encode(), str(target).encode(), ctypes.byref(params))
    if status != 0:
        raise MentalGLMError(f"llama.cpp's quantizer failed ({status}) turning {source.name} into {outtype}")


def _check_output(out_path: Path) -> None:
    parent = out_path.parent if str(out_path.parent) else Path(".")
    if out_path.is_dir():
        raise MentalGLMError(f"{out_path}: is a directory; give a file name ending in .gguf")
    if not parent.is_dir():
        raise MentalGLMError(f"{out_path}: folder {parent} does not exist")
    if not os.access(parent, os.W_OK):
        raise MentalGLMError(f"{out_path}: folder {parent} is not writable")


def export_gguf(model_dir: str | Path, out_path: str | Path, *, outtype: str = "f16",
                adapter_dir: str | Path | None = None, name: str | None = None) -> ExportResult:
    """Convert a GLM model directory (optionally with a LoRA adapter) into one GGUF file.

    Args:
        model_dir: a ``GlmForCausalLM``, ``Glm4ForCausalLM`` or original ChatGLM directory
            with safetensors weights and its tokenizer.
        out_path: the ``.gguf`` file to write; replaced only once the new file is complete.
        outtype: one of :data:`OUTTYPES`.
        adapter_dir: a peft LoRA adapter merged into the weights while converting.
        name: ``general.name`` (default: the model directory's name, plus the adapter's).

    Returns:
        An ExportResult with the size, tensor count and model shape.

    Raises:
        MentalGLMError: bad input (missing files, unsupported architecture, unknown outtype,
            unwritable output, an adapter for another base model).
    """
    started = time.time()
    model_dir, out_path = Path(model_dir), Path(out_path)
    outtype = outtype.lower()
    if outtype not in OUTTYPES:
        raise MentalGLMError(f"unknown outtype '{outtype}'; choose one of {', '.join(OUTTYPES)}")
    _check_output(out_path)
    spec = read_spec(model_dir)  # fail fast on bad configs, before any weights are read
    name = name or (model_dir.resolve().name + (f"+{Path(adapter_dir).resolve().name}" if adapter_dir else ""))
    partial = out_path.with_name(f".{out_path.name}.partial-{os.getpid()}")
    intermediate = out_path.with_name(f".{out_path.name}.intermediate-{os.getpid()}")
    try:
        if outtype in DIRECT_TYPES:
            spec, count = _write_direct(model_dir, partial, outtype, adapter_dir, name, outtype)
        else:
            lossless = _lossless_type(SafetensorsCheckpoint(model_dir).dtypes())
            spec, count = _write_direct(model_dir, intermediate, lossless, adapter_dir, name, outtype)
            _k_quantize(intermediate, partial, outtype)
        partial.replace(out_path)
    finally:
        for leftover in (partial, intermediate):
            if leftover.exists():
                leftover.unlink()
    return ExportResult(out_path, outtype, spec.arch, count, out_path.stat().st_size, time.time() - started, spec)


def _lossless_type(dtypes: set[str]) -> str:
    """The intermediate type that loses nothing from the source weights."""
    if dtypes <= {"BF16"}:
        return "bf16"
    if dtypes <= {"F16"}:
        return "f16"
    return "f32"
