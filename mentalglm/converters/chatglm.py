"""Import the original THUDM ChatGLM layout into transformers' native ``GlmForCausalLM``.

The released MentalGLM weights (like THUDM's glm-4-9b / glm-4-9b-chat) use the ChatGLM
layout: fused ``query_key_value`` and ``dense_h_to_4h`` tensors under ``transformer.``, a
``chatglm`` config.json with THUDM keys (``padded_vocab_size``, ``rope_ratio``,
``layernorm_epsilon``, ``seq_length`` …), a tiktoken ``tokenizer.model`` and remote code.
:func:`import_chatglm` rewrites such a directory as an ordinary transformers model directory
that loads with ``AutoModelForCausalLM`` / ``AutoTokenizer`` — without running the remote code
or its tokenizer class.

Tensors are streamed one at a time with ``safetensors.safe_open``; pickle (``.bin``)
checkpoints are refused, because loading them can execute code.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from mentalglm.core.errors import MentalGLMError
from mentalglm.core.files import read_json_object
from mentalglm.modelfiles.layout import is_chatglm_layout
from mentalglm.modelfiles.safetensors import checkpoint_files

__all__ = ["is_chatglm_layout", "import_chatglm", "tokenizer_json_from_tiktoken", "TensorSource", "ShardWriter"]

_INDEX = "model.safetensors.index.json"
_DTYPE_NAMES = {"float32": "float32", "fp32": "float32", "float16": "float16", "fp16": "float16",
                "half": "float16", "bfloat16": "bfloat16", "bf16": "bfloat16"}
# GLM-4's remote tokenizer class numbers these after the tiktoken ranks when a
# tokenizer_config.json does not list them.
_REMOTE_SPECIAL_TOKENS = ("<|endoftext|>", "[MASK]", "[gMASK]", "[sMASK]", "<sop>", "<eop>", "<|system|>",
                          "<|user|>", "<|assistant|>", "<|observation|>", "<|begin_of_image|>",
                          "<|end_of_image|>", "<|begin_of_video|>", "<|end_of_video|>")
_DEFAULT_SHARD_BYTES = 2 << 30


class TensorSource:
    """The tensors of a model directory, read one at a time.

    Reads ``model.safetensors``, shards listed in ``model.safetensors.index.json``, or every
    ``*.safetensors`` file.

    Args:
        model_dir: the directory.

    Raises:
        MentalGLMError: only pickle checkpoints (``.bin``/``.pt``) are present, no weights at all,
            a broken index or a shard it lists that is missing.
    """

    def __init__(self, model_dir):
        from safetensors import safe_open

        self.dir = Path(model_dir)
        files = checkpoint_files(self.dir)
        index = self.dir / _INDEX
        self.where = str(index if index.exists() else files[0] if len(files) == 1 else self.dir)
        self._handles: dict[Path, Any] = {}
        self._file_of: dict[str, Path] = {}
        for path in files:
            try:
                handle = safe_open(str(path), framework="pt")
            except Exception as exc:  # safetensors raises its own error types
                raise MentalGLMError(f"{path}: not a readable safetensors file ({exc})") from None
            self._handles[path] = handle
            for name in handle.keys():
                self._file_of[name] = path

    def __contains__(self, name: str) -> bool:
        return name in self._file_of

    def names(self) -> list[str]:
        """Every tensor name."""
        return list(self._file_of)

    def _file(self, name: str) -> Path:
        try:
            return self._file_of[name]
        except KeyError:
            raise MentalGLMError(f"{self.where}: tensor '{name}' is missing") from None

    def shape(self, name: str) -> tuple[int, ...]:
        """Shape of ``name`` from the file header, without reading the data."""
        return tuple(self._handles[self._file(name)].get_slice(name).get_shape())

    def get(self, name: str):
        """Tensor ``name`` as a torch tensor (its own storage)."""
        return self._handles[self._file(name)].get_tensor(name)


class ShardWriter:
    """Collects tensors and writes them as safetensors shards of at most ``max_shard_size`` bytes.

    One shard is written as ``model.safetensors``; several as ``model-0000N-of-0000M.safetensors``
    with ``model.safetensors.index.json``. Only the current shard is held in memory. Use as a
    context manager; the files appear when it exits without an error.
    """

    def __init__(self, out_dir, *, max_shard_size: int | None = None):
        self.out_dir = Path(out_dir)
        self.max_bytes = max_shard_size
        self._current: dict[str, Any] = {}
        self._current_bytes = 0
        self._written: list[tuple[Path, list[str]]] = []
        self.total_bytes = 0

    def __enter__(self) -> "ShardWriter":
        self.out_dir.mkdir(parents=True, exist_ok=True)
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()

    def add(self, name: str, tensor) -> None:
        """Queue ``tensor`` under ``name``; flushes the current shard first when it would overflow."""
        tensor = tensor.detach().contiguous()
        size = tensor.numel() * tensor.element_size()
        if self.max_bytes is not None and self._current and self._current_bytes + size > self.max_bytes:
            self._flush()
        self._current[name] = tensor
        self._current_bytes += size
        self.total_bytes += size

    def _flush(self) -> None:
        from safetensors.torch import save_file

        path = self.out_dir / f"model.part{len(self._written) + 1}.safetensors.tmp"
        save_file(self._current, str(path), metadata={"format": "pt"})
        self._written.append((path, list(self._current)))
        self._current, self._current_bytes = {}, 0

    def close(self) -> None:
        """Write the last shard, give the shards their final names and write the index if needed."""
        if self._current or not self._written:
            self._flush()
        if len(self._written) == 1:
            self._written[0][0].replace(self.out_dir / "model.safetensors")
            return
        count = len(self._written)
        weight_map = {}
        for number, (path, names) in enumerate(self._written, 1):
            final = f"model-{number:05d}-of-{count:05d}.safetensors"
            path.replace(self.out_dir / final)
            weight_map.update({name: final for name in names})
        index = {"metadata": {"total_size": self.total_bytes}, "weight_map": weight_map}
        (self.out_dir / _INDEX).write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")


def _token_text(value) -> str | None:
    if isinstance(value, dict):  # serialized AddedToken
        return value.get("content")
    return value


def chat_template(model_dir: Path, tok_config: dict) -> str | None:
    """The chat template of a model folder: tokenizer_config.json's (its default entry when the
    templates are named), else ``chat_template.jinja`` (where transformers 5 saves it), else None."""
    template = tok_config.get("chat_template")
    if isinstance(template, list):  # named templates: the default one
        template = next((t.get("template") for t in template if t.get("name") == "default"), None)
    if template is None and (model_dir / "chat_template.jinja").exists():
        template = (model_dir / "chat_template.jinja").read_text(encoding="utf-8")
    return template


def _chatglm_tokenizer(model_dir: Path):
    """(tokenizers.Tokenizer, special tokens id → text, tokenizer_config.json dict) of a ChatGLM directory."""
    from mentalglm.converters.tiktoken_bpe import glm4_tokenizer, read_tiktoken

    ranks = read_tiktoken(model_dir / "tokenizer.model")
    config_path = model_dir / "tokenizer_config.json"
    tok_config = read_json_object(config_path, "tokenizer config") if config_path.exists() else {}
    decoder = tok_config.get("added_tokens_decoder")
    if decoder:
        try:
            specials = {int(i): _token_text(entry) for i, entry in decoder.items()}
        except (TypeError, ValueError, AttributeError) as exc:
            raise MentalGLMError(f"{config_path}: field 'added_tokens_decoder': not id → token ({exc})") from None
    else:
        first = max(ranks.values()) + 1
        specials = {first + i: text for i, text in enumerate(_REMOTE_SPECIAL_TOKENS)}
    try:
        tokenizer = glm4_tokenizer(ranks, specials)
    except MentalGLMError as exc:
        raise MentalGLMError(f"{model_dir / 'tokenizer.model'}: {exc}") from None
    return tokenizer, specials, tok_config


def tokenizer_json_from_tiktoken(model_dir) -> dict:
    """The ``tokenizer.json`` content (as a dict) for a ChatGLM directory's tiktoken ``tokenizer.model``.

    Special tokens come from ``tokenizer_config.json``'s ``added_tokens_decoder`` (or GLM-4's
    fixed list, numbered after the ranks, when it has none).

    Raises:
        MentalGLMError: no or malformed ``tokenizer.model``, or special ids that clash.
    """
    tokenizer, _, _ = _chatglm_tokenizer(Path(model_dir))
    return json.loads(tokenizer.to_str())


def _need(config: dict, path: Path, *keys: str):
    for key in keys:
        if config.get(key) is not None:
            return config[key]
    raise MentalGLMError(f"{path}: field '{keys[0]}' is missing")


def _dtype_name(dtype) -> str | None:
    if dtype is None or dtype == "auto":
        return None
    name = str(dtype).replace("torch.", "")
    if name not in _DTYPE_NAMES:
        raise MentalGLMError(f"unknown dtype '{dtype}' (expected float32, float16 or bfloat16)")
    return _DTYPE_NAMES[name]


def import_chatglm(src_dir, out_dir, *, dtype=None, max_shard_size: int = _DEFAULT_SHARD_BYTES) -> Path:
    """Convert a ChatGLM-layout GLM-4 directory into a transformers-native ``GlmForCausalLM`` directory.

    Writes config.json (``GlmConfig``: vocab_size = padded_vocab_size, rope_theta =
    10000·rope_ratio, partial_rotary_factor 0.5, …), safetensors weights (``query_key_value``
    split into q/k/v, ``dense_h_to_4h`` → ``gate_up_proj``, ``rotary_pos_emb.inv_freq``
    dropped), ``tokenizer.json`` rebuilt from the tiktoken ``tokenizer.model`` (merges recovered
    from the ranks), tokenizer_config.json (PreTrainedTokenizerFast, chat template, eos/pad) and
    generation_config.json. No remote code runs.

    Args:
        src_dir: the ChatGLM directory (config.json, ``*.safetensors`` or shards + index,
            tokenizer.model, tokenizer_config.json).
        out_dir: output directory (created if needed).
        dtype: ``"float32"``, ``"float16"`` or ``"bfloat16"`` for the output weights; default:
            keep each tensor's dtype.
        max_shard_size: bytes per output safetensors shard (default 2 GiB).

    Returns:
        ``out_dir`` as a Path.

    Raises:
        MentalGLMError: a pickle checkpoint, a missing config / tokenizer / tensor (file and key
            named), a ChatGLM variant this layout cannot express (LayerNorm, linear biases,
            post-layernorm residuals), or tensor shapes that do not match the config.

    Example:
        >>> import_chatglm("MentalGLM-chat", "MentalGLM-chat-hf")   # doctest: +SKIP
    """
    import torch
    from transformers import GlmConfig

    src_dir, out_dir = Path(src_dir), Path(out_dir)
    config_path = src_dir / "config.json"
    config = read_json_object(config_path, "model config")
    if not is_chatglm_layout(src_dir):
        raise MentalGLMError(f"{config_path}: not a ChatGLM config (model_type {config.get('model_type')!r})")
    for key, unsupported, why in (("rmsnorm", False, "LayerNorm instead of RMSNorm"),
                                  ("add_bias_linear", True, "biases on dense/MLP layers"),
                                  ("apply_residual_connection_post_layernorm", True, "post-layernorm residuals"),
                                  ("post_layer_norm", False, "no final layer norm")):
        if key in config and bool(config[key]) == unsupported:
            raise MentalGLMError(f"{config_path}: field '{key}': {config[key]} ({why}) is not a GLM-4 "
                                 "model that GlmForCausalLM can hold")
    hidden = _need(config, config_path, "hidden_size")
    layers = _need(config, config_path, "num_layers", "num_hidden_layers")
    heads = _need(config, config_path, "num_attention_heads")
    ffn = _need(config, config_path, "ffn_hidden_size")
    vocab = _need(config, config_path, "padded_vocab_size", "vocab_size")
    head_dim = config.get("kv_channels") or hidden // heads
    kv_heads = (_need(config, config_path, "multi_query_group_num") if config.get("multi_query_attention")
                else heads)
    qkv_bias = bool(config.get("add_qkv_bias", False))
    rope_theta = 10000.0 * float(config.get("rope_ratio", 1) or 1)
    out_dtype = _dtype_name(dtype)
    source_dtype = _DTYPE_NAMES.get(str(config.get("torch_dtype") or config.get("dtype") or ""), None)

    # Everything is read and checked before anything is written.
    tokenizer, specials, tok_config = _chatglm_tokenizer(src_dir)
    source = TensorSource(src_dir)
    too_high = [i for i in specials if i >= vocab]
    if too_high:
        where = src_dir / ("tokenizer_config.json" if tok_config else "tokenizer.model")
        raise MentalGLMError(f"{where}: special token id {too_high[0]} ({specials[too_high[0]]!r}) is outside "
                             f"the model's {vocab} embedding rows")
    plan = _tensor_plan(layers, qkv_bias)
    needed = {name for _, names, _ in plan for name in names}
    for name in sorted(needed):
        if name not in source:
            raise MentalGLMError(f"{source.where}: tensor '{name}' is missing")
    unexpected = sorted(n for n in source.names() if n not in needed and not n.endswith("rotary_pos_emb.inv_freq"))
    if unexpected:
        raise MentalGLMError(f"{source.where}: unexpected tensor '{unexpected[0]}' (not part of a GLM-4 "
                             f"ChatGLM checkpoint; {len(unexpected)} in all)")
    qkv_rows = (heads + 2 * kv_heads) * head_dim
    expected_shapes = {
        "word_embeddings.weight": (vocab, hidden), "output_layer.weight": (vocab, hidden),
        "query_key_value.weight": (qkv_rows, hidden), "query_key_value.bias": (qkv_rows,),
        "dense.weight": (hidden, heads * head_dim), "dense_h_to_4h.weight": (2 * ffn, hidden),
        "dense_4h_to_h.weight": (hidden, ffn), "norm.weight": (hidden,),
    }
    for name in sorted(needed):
        want = next(shape for suffix, shape in expected_shapes.items() if name.endswith(suffix))
        if source.shape(name) != want:
            raise MentalGLMError(f"{source.where}: tensor '{name}' has shape {list(source.shape(name))}; "
                                 f"{config_path.name} implies {list(want)}")

    splits = [heads * head_dim, kv_heads * head_dim, kv_heads * head_dim]
    cast = getattr(torch, out_dtype) if out_dtype else None
    out_dir.mkdir(parents=True, exist_ok=True)
    with ShardWriter(out_dir, max_shard_size=max_shard_size) as writer:
        for targets, names, kind in plan:
            tensor = source.get(names[0])
            if cast is not None and tensor.is_floating_point():
                tensor = tensor.to(cast)
            if kind == "split_qkv":
                for target, part in zip(targets, torch.split(tensor, splits, dim=0)):
                    writer.add(target, part.clone())
            else:
                writer.add(targets[0], tensor)
            del tensor

    eos = config.get("eos_token_id")
    pad = config.get("pad_token_id")
    hf_config = GlmConfig(
        vocab_size=vocab, hidden_size=hidden, intermediate_size=ffn, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=kv_heads, head_dim=head_dim,
        max_position_embeddings=config.get("seq_length") or 2048,
        rms_norm_eps=config.get("layernorm_epsilon", 1e-5),
        rope_parameters={"rope_type": "default", "rope_theta": rope_theta, "partial_rotary_factor": 0.5},
        attention_bias=qkv_bias, attention_dropout=config.get("attention_dropout", 0.0) or 0.0,
        tie_word_embeddings=False, eos_token_id=eos, pad_token_id=pad, bos_token_id=None,
    )
    hf_config.architectures = ["GlmForCausalLM"]
    hf_config.dtype = out_dtype or source_dtype or "float32"
    hf_config.save_pretrained(out_dir)

    _write_tokenizer(src_dir, out_dir, tokenizer, specials, tok_config, hf_config.max_position_embeddings)
    _write_generation_config(src_dir, out_dir, eos, pad)
    return out_dir


def _tensor_plan(layers: int, qkv_bias: bool) -> list[tuple[list[str], list[str], str]]:
    """(HF names, ChatGLM source names, how) in the order transformers lists the parameters."""
    plan: list[tuple[list[str], list[str], str]] = [
        (["model.embed_tokens.weight"], ["transformer.embedding.word_embeddings.weight"], "copy")]
    for n in range(layers):
        src, dst = f"transformer.encoder.layers.{n}.", f"model.layers.{n}."
        kinds = ("weight", "bias") if qkv_bias else ("weight",)
        for kind in kinds:
            plan.append(([f"{dst}self_attn.{p}_proj.{kind}" for p in "qkv"],
                         [f"{src}self_attention.query_key_value.{kind}"], "split_qkv"))
        plan += [
            ([f"{dst}self_attn.o_proj.weight"], [f"{src}self_attention.dense.weight"], "copy"),
            ([f"{dst}mlp.gate_up_proj.weight"], [f"{src}mlp.dense_h_to_4h.weight"], "copy"),
            ([f"{dst}mlp.down_proj.weight"], [f"{src}mlp.dense_4h_to_h.weight"], "copy"),
            ([f"{dst}input_layernorm.weight"], [f"{src}input_layernorm.weight"], "copy"),
            ([f"{dst}post_attention_layernorm.weight"], [f"{src}post_attention_layernorm.weight"], "copy"),
        ]
    plan += [(["model.norm.weight"], ["transformer.encoder.final_layernorm.weight"], "copy"),
             (["lm_head.weight"], ["transformer.output_layer.weight"], "copy")]
    return plan


def _write_tokenizer(src_dir: Path, out_dir: Path, tokenizer, specials: dict[int, str], tok_config: dict,
                     max_length: int) -> None:
    from mentalglm.converters.tiktoken_bpe import write_hf_tokenizer
    from mentalglm.modelfiles.tokens import GLM4_CHAT_TEMPLATE

    template = chat_template(src_dir, tok_config) or GLM4_CHAT_TEMPLATE
    write_hf_tokenizer(
        tokenizer, out_dir, special_tokens=specials, chat_template=template,
        eos_token=_token_text(tok_config.get("eos_token")) or "<|endoftext|>",
        pad_token=_token_text(tok_config.get("pad_token")) or "<|endoftext|>",
        model_max_length=int(tok_config.get("model_max_length") or max_length),
    )


def _write_generation_config(src_dir: Path, out_dir: Path, eos, pad) -> None:
    path = src_dir / "generation_config.json"
    generation = read_json_object(path, "generation config") if path.exists() else {}
    if generation.get("eos_token_id") is None and eos is not None:
        generation["eos_token_id"] = eos
    if generation.get("pad_token_id") is None and pad is not None:
        generation["pad_token_id"] = pad
    (out_dir / "generation_config.json").write_text(json.dumps(generation, indent=2) + "\n", encoding="utf-8")
