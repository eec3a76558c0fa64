"""Tiny GLM models and a tiny GLM-4-style tokenizer, built offline with random weights.

No weights can be downloaded in tests, the demo or benchmarks, so this factory builds models
of the real architectures (transformers' ``GlmForCausalLM`` / ``Glm4ForCausalLM``) at any size,
with a byte-level BPE trained on the shipped synthetic samples using GLM-4's pre-tokenizer
and special tokens. It also writes a model in the original THUDM ChatGLM layout (the layout
of the released MentalGLM checkpoints) so the importer can be tested end to end.

Example:
    >>> from mentalglm.demo.tiny import build_tiny_glm
    >>> model_dir = build_tiny_glm("/tmp/tiny-glm")          # doctest: +SKIP
    >>> # AutoModelForCausalLM.from_pretrained(model_dir) — no trust_remote_code needed

Heavy libraries (torch, transformers, tokenizers) are imported inside the functions.
"""

from __future__ import annotations

import json
import math
import shutil
from importlib import resources
from pathlib import Path

from mentalglm.converters.tiktoken_bpe import write_tiktoken
from mentalglm.modelfiles.tokens import (
    GLM4_CHAT_TEMPLATE,
    GLM4_PRETOKENIZE_REGEX,
    GLM4_SPECIAL_TOKENS,
    GLM4_STOP_TOKENS,
    str_to_token,
)

__all__ = [
    "GLM4_CHAT_TEMPLATE", "GLM4_PRETOKENIZE_REGEX", "GLM4_SPECIAL_TOKENS", "GLM4_STOP_TOKENS",
    "TOKENIZER_CHECK_TEXTS", "corpus_texts", "build_tokenizer", "build_tiny_glm", "write_chatglm_layout",
    "parameter_count",
]

_ARCHS = {"glm": ("GlmConfig", "GlmForCausalLM"), "glm4": ("Glm4Config", "Glm4ForCausalLM")}
_DTYPES = ("float32", "float16", "bfloat16")
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")

# Besides the samples: English, digits, emoji and odd whitespace, so common bytes of those get
# merges too (every byte is in the vocabulary anyway).
_EXTRA_TEXTS = (
    "I feel so depressed and tired. I can't sleep, I don't want to talk to anyone.",
    "Today is 2024-05-20, 12:30. Score: 1234567 / 100.0%",
    "0123456789 10 20 30 40 50 60 70 80 90 100 1000 2023 2024 2025",
    "😭😭😭 🙂 😊 ❤️ 👍 🙏 😔 💔 ……",
    "Hello, world!\r\nSecond line\tTabbed  double  space\n\n",
    "“引号”‘单引号’（括号）【方括号】《书名》——破折号……省略号；分号：冒号！？",
)

#: Varied text for tokenizer parity checks (HF vs imported vs llama.cpp): full-width punctuation,
#: emoji, digit runs, English, LF and CRLF, a long repeat, odd spacing.
TOKENIZER_CHECK_TEXTS = (
    "最近总是失眠，什么都不想做。",
    "你为什么不开心？“我也不知道”！",
    "我真的好累😭😭，但今天还行🙂",
    "2024年我工作了1234567个小时",
    "I feel so depressed",
    "第一行\n第二行\r\n第三行\n\n",
    "啊" * 30,
    "  前面两个空格   中间三个\t制表符 结尾空格 ",
    "混合 English 和中文，数字 42、99.5%，还有 emoji 👍！",
    "标签：抑郁\n解释：发帖者自述“什么都不想做”……",
)


def corpus_texts() -> list[str]:
    """Training text for the tiny tokenizer.

    Returns:
        Every instruction, input and output of the shipped synthetic samples
        (``mentalglm/samples/*.jsonl``, in file-name order, duplicates dropped), then a few lines
        of English, digits and emoji.
    """
    folder = resources.files("mentalglm") / "samples"
    texts: list[str] = []
    seen: set[str] = set()
    for entry in sorted(folder.iterdir(), key=lambda p: p.name):
        if not entry.name.endswith(".jsonl"):
            continue
        for line in entry.read_text(encoding="utf-8").splitlines():
            if not line.strip():
                continue
            record = json.loads(line)
            for key in ("instruction", "input", "output"):
                value = record.get(key)
                if isinstance(value, str) and value and value not in seen:
                    seen.add(value)
                    texts.append(value)
    texts.extend(_EXTRA_TEXTS)
    return texts


def build_tokenizer(out_dir, *, vocab_size: int = 1024, texts=None, model_max_length: int = 2048) -> Path:
    """Train a GLM-4-style byte-level BPE and save it as an ordinary HF tokenizer directory.

    The BPE is trained with ``tokenizers`` (GLM-4 pre-tokenizer regex, then byte-level; all 256
    byte tokens exist), then its merges are re-derived from the token ranks exactly as for a
    tiktoken vocabulary, like the real GLM-4 ``tokenizer.json`` — so the tiktoken
    ``tokenizer.model`` written by :func:`write_chatglm_layout` converts back to the same file.
    The ten GLM-4 special tokens follow the regular vocabulary (ids ``n_regular`` …, as 151329…
    in the real GLM-4). A ``[gMASK] <sop>`` post-processor prepends the GLM prefix, so callers
    that render whole prompts tokenize with ``add_special_tokens=False``.

    Args:
        out_dir: directory to write ``tokenizer.json`` and ``tokenizer_config.json`` into
            (created if needed).
        vocab_size: regular vocabulary size the trainer aims for (at least 257; a small corpus
            may give fewer tokens).
        texts: training texts; default :func:`corpus_texts`.
        model_max_length: written to ``tokenizer_config.json``.

    Returns:
        ``out_dir`` as a Path. Training is deterministic: the same texts give the same files.

    Raises:
        ValueError: ``vocab_size`` below 257 or no training text.
    """
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

    from mentalglm.converters.tiktoken_bpe import glm4_tokenizer, vocab_ranks, write_hf_tokenizer

    if vocab_size < 257:
        raise ValueError(f"vocab_size must be at least 257 (256 byte tokens + merges), got {vocab_size}")
    texts = corpus_texts() if texts is None else list(texts)
    if not texts:
        raise ValueError("no training texts")
    trained = Tokenizer(models.BPE())
    trained.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(GLM4_PRETOKENIZE_REGEX), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    trained.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False, special_tokens=[])
    trained.train_from_iterator(texts, trainer=trainer)

    ranks = vocab_ranks(trained)
    first_special = max(ranks.values()) + 1
    special_tokens = {first_special + i: text for i, text in enumerate(GLM4_SPECIAL_TOKENS)}
    tokenizer = glm4_tokenizer(ranks, special_tokens)
    return write_hf_tokenizer(tokenizer, out_dir, special_tokens=special_tokens, chat_template=GLM4_CHAT_TEMPLATE,
                              model_max_length=model_max_length)


def _tokenizer_specials(tokenizer_dir: Path) -> dict[str, int]:
    data = json.loads((tokenizer_dir / "tokenizer.json").read_text(encoding="utf-8"))
    return {t["content"]: t["id"] for t in data.get("added_tokens", [])}


def _tokenizer_size(tokenizer_dir: Path) -> int:
    data = json.loads((tokenizer_dir / "tokenizer.json").read_text(encoding="utf-8"))
    ids = list(data["model"]["vocab"].values()) + [t["id"] for t in data.get("added_tokens", [])]
    return max(ids) + 1


def _init_weights(model, seed: int) -> None:
    """Seeded random weights that give well-spread logits and non-trivial norms and biases.

    Linear weights get std 1/sqrt(fan_in) (activations stay O(1), attention is far from uniform,
    so a rope or layout mistake moves the logits visibly); embeddings std 1; norm weights
    around 1 and biases around 0 but random, so a swapped or dropped norm/bias changes outputs.
    """
    import torch

    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in sorted(model.named_parameters(), key=lambda item: item[0]):
            noise = torch.randn(param.shape, generator=generator, dtype=torch.float32)
            if name.endswith("norm.weight"):
                values = 1.0 + 0.2 * noise
            elif name.endswith(".bias"):
                values = 0.2 * noise
            elif "embed_tokens" in name:
                values = noise
            else:
                values = noise / math.sqrt(param.shape[-1])
            param.copy_(values.to(param.dtype))


def build_tiny_glm(out_dir, *, arch: str = "glm", hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2,
                   head_dim=None, intermediate_size=128, rope_theta=10000.0, partial_rotary_factor=0.5,
                   rms_norm_eps=1e-5, max_position_embeddings=2048, vocab_size=None, seed=0,
                   dtype="float32", tokenizer_dir=None, tokenizer_vocab_size=1024) -> Path:
    """A GLM causal LM with seeded random weights, saved as a transformers-native model directory.

    ``arch="glm"`` gives ``GlmForCausalLM`` (the GLM-4-9B family, MentalGLM's base);
    ``arch="glm4"`` gives ``Glm4ForCausalLM`` (GLM-4-0414, with post-attention and post-MLP
    norms). q/k/v have biases like GLM-4. The directory holds ``model.safetensors``,
    ``config.json``, ``generation_config.json`` (eos = ``<|endoftext|>``, ``<|user|>``,
    ``<|observation|>``; pad = ``<|endoftext|>``) and the tokenizer files.

    Args:
        out_dir: output directory (created if needed).
        arch: ``"glm"`` or ``"glm4"``.
        hidden_size, num_layers, num_heads, num_kv_heads, intermediate_size: model shape; tests
            use hidden 64–128 and 2 layers, benchmarks ~50–150M parameters.
        head_dim: per-head size; default ``hidden_size // num_heads``.
        rope_theta, partial_rotary_factor, rms_norm_eps, max_position_embeddings: as in the
            transformers config (GLM-4-9B-chat: 5e6, 0.5, 1.5625e-7, 131072).
        vocab_size: embedding rows; default the tokenizer size rounded up to a multiple of 64
            (GLM pads its vocabulary, so ids without a token exist).
        seed: seed of the weights (same seed, same weights).
        dtype: ``"float32"``, ``"float16"`` or ``"bfloat16"`` for the saved weights.
        tokenizer_dir: reuse the tokenizer files of this directory instead of training one.
        tokenizer_vocab_size: regular vocabulary size when a tokenizer is trained.

    Returns:
        ``out_dir`` as a Path.

    Raises:
        ValueError: an unknown ``arch`` or ``dtype``, heads that do not divide, or a
            ``vocab_size`` smaller than the tokenizer.
    """
    if arch not in _ARCHS:
        raise ValueError(f"unknown arch {arch!r}; expected one of {sorted(_ARCHS)}")
    if dtype not in _DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; expected one of {list(_DTYPES)}")
    if num_heads % num_kv_heads:
        raise ValueError(f"num_heads ({num_heads}) must be a multiple of num_kv_heads ({num_kv_heads})")
    if head_dim is None:
        if hidden_size % num_heads:
            raise ValueError(f"hidden_size ({hidden_size}) is not divisible by num_heads ({num_heads}); give head_dim")
        head_dim = hidden_size // num_heads

    import torch
    import transformers
    from transformers import GenerationConfig

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if tokenizer_dir is None:
        build_tokenizer(out_dir, vocab_size=tokenizer_vocab_size, model_max_length=max_position_embeddings)
    else:
        tokenizer_dir = Path(tokenizer_dir)
        if tokenizer_dir.resolve() != out_dir.resolve():
            for name in _TOKENIZER_FILES:
                shutil.copyfile(tokenizer_dir / name, out_dir / name)
    specials = _tokenizer_specials(out_dir)
    n_tokens = _tokenizer_size(out_dir)
    if vocab_size is None:
        vocab_size = -(-n_tokens // 64) * 64
    elif vocab_size < n_tokens:
        raise ValueError(f"vocab_size {vocab_size} is smaller than the tokenizer ({n_tokens} tokens)")
    eos_ids = [specials[t] for t in GLM4_STOP_TOKENS]
    pad_id = specials["<|endoftext|>"]

    config_class, model_class = (getattr(transformers, name) for name in _ARCHS[arch])
    # transformers 5 keeps rope_theta / partial_rotary_factor in rope_parameters; passing the
    # dict is the form every 5.x constructor accepts. head_dim and pad_token_id must be explicit:
    # their defaults (128, 151329) are those of the 9B model, not derived from the sizes given.
    config = config_class(
        vocab_size=vocab_size, hidden_size=hidden_size, intermediate_size=intermediate_size,
        num_hidden_layers=num_layers, num_attention_heads=num_heads, num_key_value_heads=num_kv_heads,
        head_dim=head_dim, max_position_embeddings=max_position_embeddings, rms_norm_eps=rms_norm_eps,
        rope_parameters={"rope_type": "default", "rope_theta": float(rope_theta),
                         "partial_rotary_factor": float(partial_rotary_factor)},
        attention_bias=True, tie_word_embeddings=False,
        eos_token_id=eos_ids, pad_token_id=pad_id, bos_token_id=None,
    )
    config.architectures = [model_class.__name__]
    model = model_class(config)
    _init_weights(model, seed)
    model = model.to(getattr(torch, dtype))
    model.config.dtype = dtype
    model.generation_config = GenerationConfig(eos_token_id=eos_ids, pad_token_id=pad_id)
    # Safetensors is the only format transformers 5 writes (safe_serialization is gone); its
    # "Writing model shards" bar is noise on the stderr of tests and the demo.
    bars_were_on = transformers.utils.logging.is_progress_bar_enabled()
    transformers.utils.logging.disable_progress_bar()
    try:
        model.save_pretrained(out_dir)
    finally:
        if bars_were_on:
            transformers.utils.logging.enable_progress_bar()
    _set_tokenizer_max_length(out_dir, max_position_embeddings)
    return out_dir


def _set_tokenizer_max_length(model_dir: Path, length: int) -> None:
    path = model_dir / "tokenizer_config.json"
    config = json.loads(path.read_text(encoding="utf-8"))
    if config.get("model_max_length") != length:
        config["model_max_length"] = length
        path.write_text(json.dumps(config, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def write_chatglm_layout(hf_dir, out_dir, *, max_shard_size: int | None = None) -> Path:
    """Write an HF-native ``GlmForCausalLM`` directory in the original THUDM ChatGLM layout.

    This is the layout of the released MentalGLM / glm-4-9b-chat checkpoints: a ``chatglm``
    config.json (THUDM keys, ``padded_vocab_size`` and no ``vocab_size``), fused
    ``query_key_value`` and ``dense_h_to_4h`` tensors under ``transformer.``, a
    ``rotary_pos_emb.inv_freq`` buffer, and a tiktoken ``tokenizer.model`` with a
    ``ChatGLM4Tokenizer`` tokenizer_config.json. No remote-code files are written.

    Args:
        hf_dir: a transformers-native GLM directory (e.g. from :func:`build_tiny_glm`).
        out_dir: output directory (created if needed).
        max_shard_size: bytes per safetensors shard; above it the tensors are split into
            ``model-0000N-of-0000M.safetensors`` with ``model.safetensors.index.json``.
            Default: one ``model.safetensors``.

    Returns:
        ``out_dir`` as a Path.

    Raises:
        ValueError: not a ``GlmForCausalLM`` (``Glm4ForCausalLM``'s extra norms have no place in
            this layout), a partial rotary factor other than 0.5 (ChatGLM always rotates
            kv_channels // 2 dimensions), or a tokenizer that is not a byte-level BPE.
    """
    import torch

    from mentalglm.converters.chatglm import ShardWriter, TensorSource

    hf_dir, out_dir = Path(hf_dir), Path(out_dir)
    config = _read_json(hf_dir / "config.json")
    if config.get("model_type") != "glm":
        raise ValueError(f"{hf_dir}: model_type {config.get('model_type')!r}; the ChatGLM layout holds only "
                         "'glm' (GlmForCausalLM) models")
    rope = config.get("rope_parameters") or {}
    factor = rope.get("partial_rotary_factor", config.get("partial_rotary_factor", 0.5))
    theta = rope.get("rope_theta", config.get("rope_theta", 10000.0))
    if factor != 0.5:
        raise ValueError(f"{hf_dir}: partial_rotary_factor {factor}; ChatGLM always rotates kv_channels // 2 "
                         "dimensions (factor 0.5)")
    heads, kv_heads = config["num_attention_heads"], config["num_key_value_heads"]
    head_dim = config.get("head_dim") or config["hidden_size"] // heads
    layers = config["num_hidden_layers"]
    dtype_name = config.get("dtype") or config.get("torch_dtype") or "float32"
    generation = _read_json(hf_dir / "generation_config.json") if (hf_dir / "generation_config.json").exists() else {}
    eos = generation.get("eos_token_id", config.get("eos_token_id"))
    pad = generation.get("pad_token_id", config.get("pad_token_id"))

    out_dir.mkdir(parents=True, exist_ok=True)
    chatglm_config = {
        "_name_or_path": "mentalglm-tiny-chatglm",
        "architectures": ["ChatGLMModel"],
        "model_type": "chatglm",
        "auto_map": {
            "AutoConfig": "configuration_chatglm.ChatGLMConfig",
            "AutoModel": "modeling_chatglm.ChatGLMForConditionalGeneration",
            "AutoModelForCausalLM": "modeling_chatglm.ChatGLMForConditionalGeneration",
        },
        "add_bias_linear": False,
        "add_qkv_bias": bool(config.get("attention_bias", True)),
        "apply_query_key_layer_scaling": True,
        "apply_residual_connection_post_layernorm": False,
        "attention_dropout": 0.0,
        "attention_softmax_in_fp32": True,
        "bias_dropout_fusion": True,
        "ffn_hidden_size": config["intermediate_size"],
        "fp32_residual_connection": False,
        "hidden_dropout": 0.0,
        "hidden_size": config["hidden_size"],
        "kv_channels": head_dim,
        "layernorm_epsilon": config["rms_norm_eps"],
        "multi_query_attention": True,
        "multi_query_group_num": kv_heads,
        "num_attention_heads": heads,
        "num_layers": layers,
        "num_hidden_layers": layers,
        "original_rope": True,
        "padded_vocab_size": config["vocab_size"],
        "post_layer_norm": True,
        "rmsnorm": True,
        "rope_ratio": theta / 10000.0,
        "seq_length": config["max_position_embeddings"],
        "use_cache": True,
        "torch_dtype": dtype_name,
        "tie_word_embeddings": False,
        "eos_token_id": eos,
        "pad_token_id": pad,
    }
    (out_dir / "config.json").write_text(json.dumps(chatglm_config, indent=2) + "\n", encoding="utf-8")

    source = TensorSource(hf_dir)
    q_rows, kv_rows = heads * head_dim, kv_heads * head_dim
    with ShardWriter(out_dir, max_shard_size=max_shard_size) as writer:
        writer.add("transformer.embedding.word_embeddings.weight", source.get("model.embed_tokens.weight"))
        for n in range(layers):
            src, dst = f"model.layers.{n}.", f"transformer.encoder.layers.{n}."
            writer.add(dst + "input_layernorm.weight", source.get(src + "input_layernorm.weight"))
            for kind in ("weight", "bias"):
                names = [f"{src}self_attn.{p}_proj.{kind}" for p in "qkv"]
                if kind == "bias" and names[0] not in source:
                    continue
                fused = torch.cat([source.get(name) for name in names], dim=0)
                assert fused.shape[0] == q_rows + 2 * kv_rows
                writer.add(f"{dst}self_attention.query_key_value.{kind}", fused)
            writer.add(dst + "self_attention.dense.weight", source.get(src + "self_attn.o_proj.weight"))
            writer.add(dst + "post_attention_layernorm.weight", source.get(src + "post_attention_layernorm.weight"))
            writer.add(dst + "mlp.dense_h_to_4h.weight", source.get(src + "mlp.gate_up_proj.weight"))
            writer.add(dst + "mlp.dense_4h_to_h.weight", source.get(src + "mlp.down_proj.weight"))
        writer.add("transformer.encoder.final_layernorm.weight", source.get("model.norm.weight"))
        writer.add("transformer.output_layer.weight", source.get("lm_head.weight"))
        # The buffer exactly as ChatGLM's RotaryEmbedding(kv_channels // 2).__init__ registers it:
        # base 10000 in the checkpoint dtype. rope_ratio is applied only in its forward pass, so
        # the stored buffer never carries it; importers drop it.
        rot_dim = head_dim // 2
        torch_dtype = getattr(torch, dtype_name)
        inv_freq = 1.0 / (10000 ** (torch.arange(0, rot_dim, 2).to(dtype=torch_dtype) / rot_dim))
        writer.add("transformer.rotary_pos_emb.inv_freq", inv_freq)

    _write_chatglm_tokenizer(hf_dir, out_dir, config)
    if generation:
        (out_dir / "generation_config.json").write_text(json.dumps(generation, indent=2) + "\n", encoding="utf-8")
    return out_dir


def _write_chatglm_tokenizer(hf_dir: Path, out_dir: Path, config: dict) -> None:
    data = _read_json(hf_dir / "tokenizer.json")
    model = data.get("model") or {}
    if model.get("type") != "BPE":
        raise ValueError(f"{hf_dir / 'tokenizer.json'}: not a byte-level BPE tokenizer")
    ranks = {str_to_token(text): i for text, i in model["vocab"].items()}
    write_tiktoken(out_dir / "tokenizer.model", ranks)
    hf_tok_config = _read_json(hf_dir / "tokenizer_config.json")
    added = sorted((t["id"], t["content"]) for t in data.get("added_tokens", []))
    tok_config = {
        "added_tokens_decoder": {
            str(i): {"content": text, "lstrip": False, "normalized": False, "rstrip": False,
                     "single_word": False, "special": True}
            for i, text in added
        },
        "additional_special_tokens": [text for _, text in added],
        "auto_map": {"AutoTokenizer": ["tokenization_chatglm.ChatGLM4Tokenizer", None]},
        "chat_template": hf_tok_config.get("chat_template", GLM4_CHAT_TEMPLATE),
        "clean_up_tokenization_spaces": False,
        "do_lower_case": False,
        "eos_token": hf_tok_config.get("eos_token", "<|endoftext|>"),
        "model_max_length": config["max_position_embeddings"],
        "pad_token": hf_tok_config.get("pad_token", "<|endoftext|>"),
        "padding_side": "left",
        "remove_space": False,
        "tokenizer_class": "ChatGLM4Tokenizer",
    }
    (out_dir / "tokenizer_config.json").write_text(json.dumps(tok_config, ensure_ascii=False, indent=2) + "\n",
                                                   encoding="utf-8")


def parameter_count(model_dir) -> int:
    """Number of parameters in a model directory's safetensors files, read from their headers only.

    Buffers such as ChatGLM's ``rotary_pos_emb.inv_freq`` are not counted.
    """
    from mentalglm.converters.chatglm import TensorSource

    source = TensorSource(model_dir)
    total = 0
    for name in source.names():
        if name.endswith("inv_freq"):
            continue
        count = 1
        for size in source.shape(name):
            count *= size
        total += count
    return total
