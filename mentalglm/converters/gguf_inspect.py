"""A readable summary of a GGUF file: architecture, size, tensor types, tokenizer, template, provenance."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from mentalglm.core.errors import MentalGLMError
from mentalglm.modelfiles.gguf_fields import field_value

#: Metadata keys (after the ``{arch}.`` prefix) shown as the model's shape.
SHAPE_KEYS = ("context_length", "embedding_length", "feed_forward_length", "block_count",
              "attention.head_count", "attention.head_count_kv", "attention.key_length",
              "attention.layer_norm_rms_epsilon", "rope.dimension_count", "rope.freq_base")


def expected_size(path: Path) -> int | None:
    """The file size a GGUF file's own header promises (end of its last tensor), or None if unreadable.

    Reads the header and tensor table only, so a truncated file can be told from a foreign one.
    """
    import gguf
    import numpy as np

    class _HeaderOnly(gguf.GGUFReader):
        # gguf-py maps every tensor while reading the header, and a cut-off tensor fails there
        # with a reshape error; this reader only adds up where the tensors end.
        def _build_tensors(self, start_offs, fields):
            end = start_offs
            for field in fields:
                _, _, _, dims, raw_dtype, offset = field.parts
                block, size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType(int(raw_dtype[0]))]
                end = max(end, start_offs + int(offset[0]) + int(np.prod(dims)) * size // block)
            self.expected_bytes, self.tensors = end, []

    try:
        return _HeaderOnly(path).expected_bytes
    except Exception:  # a header cut short or a foreign file: the full reader says what is wrong
        return None


def inspect_gguf(path: str | Path) -> dict:
    """Summarise a GGUF file as a JSON-ready dict.

    Raises:
        MentalGLMError: the file is missing or not a GGUF file.
    """
    import gguf

    path = Path(path)
    if not path.is_file():
        raise MentalGLMError(f"{path}: no such file")
    expected = expected_size(path)
    if expected is not None and expected > path.stat().st_size:
        raise MentalGLMError(f"{path}: truncated: expected {expected:,} bytes, found {path.stat().st_size:,} "
                             "(an interrupted copy or download?)")
    try:
        reader = gguf.GGUFReader(path)
    except Exception as exc:  # gguf raises ValueError/struct errors on foreign files
        raise MentalGLMError(f"{path}: not a readable GGUF file ({exc})") from None
    fields = {name: field for name, field in reader.fields.items()}

    def get(key, default=None):
        return field_value(fields[key]) if key in fields else default

    arch = get("general.architecture")
    types = Counter(t.tensor_type.name for t in reader.tensors)
    bytes_by_type = Counter()
    for tensor in reader.tensors:
        bytes_by_type[tensor.tensor_type.name] += int(tensor.n_bytes)
    tokens = get("tokenizer.ggml.tokens", [])
    token_types = get("tokenizer.ggml.token_type", [])

    def token(key):
        index = get(key)
        return None if index is None or index >= len(tokens) else {"id": index, "text": tokens[index]}

    return {
        "file": str(path),
        "file_bytes": path.stat().st_size,
        "architecture": arch,
        "name": get("general.name"),
        "file_type": get("general.file_type"),
        "parameters": int(sum(int(t.n_elements) for t in reader.tensors)),
        "tensors": len(reader.tensors),
        "tensor_types": dict(types),
        "tensor_bytes_by_type": dict(bytes_by_type),
        "shape": {key: get(f"{arch}.{key}") for key in SHAPE_KEYS if f"{arch}.{key}" in fields},
        "tokenizer": {
            "model": get("tokenizer.ggml.model"), "pre": get("tokenizer.ggml.pre"), "tokens": len(tokens),
            "merges": len(get("tokenizer.ggml.merges", [])),
            "control_tokens": [t for t, k in zip(tokens, token_types) if k == 3],
            "bos": token("tokenizer.ggml.bos_token_id"), "eos": token("tokenizer.ggml.eos_token_id"),
            "eot": token("tokenizer.ggml.eot_token_id"), "pad": token("tokenizer.ggml.padding_token_id"),
            "add_bos": get("tokenizer.ggml.add_bos_token"),
        },
        "chat_template": get("tokenizer.chat_template"),
        "provenance": {key: get(key) for key in fields if key.startswith("mentalglm.")},
    }


def render_inspection(info: dict) -> str:
    """The human-readable form of :func:`inspect_gguf`'s result."""
    size = info["file_bytes"]
    lines = [f"{info['file']}: {info['architecture']} '{info['name']}', {info['parameters']:,} parameters, "
             f"{size / 2**20:,.1f} MiB, {info['tensors']} tensors"]
    lines.append("tensor types: " + ", ".join(f"{k} ×{v} ({info['tensor_bytes_by_type'][k] / 2**20:,.1f} MiB)"
                                              for k, v in sorted(info["tensor_types"].items())))
    lines.append("shape: " + ", ".join(f"{k}={v}" for k, v in info["shape"].items()))
    tok = info["tokenizer"]
    special = ", ".join(f"{k}={v['text']}({v['id']})" for k in ("bos", "eos", "eot", "pad") if (v := tok[k]))
    lines.append(f"tokenizer: {tok['model']} / pre {tok['pre']}, {tok['tokens']} tokens, {tok['merges']} merges, "
                 f"add_bos={tok['add_bos']}; {special}")
    lines.append(f"control tokens: {' '.join(tok['control_tokens'])}")
    template = info["chat_template"]
    lines.append("chat template: "
                 + (repr(template[:120]) + ("…" if len(template) > 120 else "") if template else "none"))
    if info["provenance"]:
        lines.append("provenance: " + ", ".join(f"{k.split('.', 1)[1]}={v}" for k, v in info["provenance"].items()))
    return "\n".join(lines)
