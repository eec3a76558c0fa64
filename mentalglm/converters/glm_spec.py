"""What a GLM checkpoint is: its architecture, hyper-parameters and how its tensors map to GGUF.

Three source layouts are understood:

- ``GlmForCausalLM`` — transformers-native GLM-4-9B(-chat) → llama.cpp arch ``chatglm``;
- ``Glm4ForCausalLM`` — GLM-4-0414 (adds post-attention / post-MLP norms) → arch ``glm4``;
- ``ChatGLMModel`` — the original THUDM layout of the released MentalGLM weights → ``chatglm``.

Hyper-parameters are read from the keys each layout really uses. llama.cpp's own converter
reads only the THUDM keys (``seq_length``, ``rope_ratio``, ``layernorm_epsilon``) and silently
falls back to defaults for HF-native configs; here a missing key is an error instead.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from mentalglm.core.errors import MentalGLMError

SUPPORTED = {
    "GlmForCausalLM": ("chatglm", "hf"),
    "Glm4ForCausalLM": ("glm4", "hf"),
    "ChatGLMModel": ("chatglm", "chatglm"),
    "ChatGLMForConditionalGeneration": ("chatglm", "chatglm"),
}
SUPPORTED_TEXT = ("GlmForCausalLM (GLM-4-9B, transformers), Glm4ForCausalLM (GLM-4-0414), "
                  "ChatGLMModel (THUDM original layout, e.g. MentalGLM)")

#: Source tensors that carry no weights llama.cpp needs.
DROPPED = re.compile(r"(^|\.)rotary_pos_emb\.inv_freq$|(^|\.)rotary_emb\.inv_freq$")


@dataclass(frozen=True)
class GLMSpec:
    """The shape of a GLM model, whatever its source layout.

    Attributes:
        arch: llama.cpp architecture name (``chatglm`` or ``glm4``).
        layout: ``hf`` (transformers-native) or ``chatglm`` (THUDM original).
        architecture: the ``architectures[0]`` of config.json.
    """

    arch: str
    layout: str
    architecture: str
    n_layers: int
    hidden_size: int
    ffn_size: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    rope_dim: int
    rope_base: float
    rms_eps: float
    context_length: int
    vocab_size: int
    tie_embeddings: bool
    qkv_bias: bool = True

    def kv_cache_bytes(self, n_ctx: int, bytes_per_value: int = 2) -> int:
        """KV-cache size at ``n_ctx`` tokens (f16 cache by default)."""
        return 2 * self.n_layers * n_ctx * self.n_kv_heads * self.head_dim * bytes_per_value

    def gguf_shapes(self) -> dict[str, tuple[int, ...]]:
        """GGUF tensor name → shape (numpy order: rows, columns), derived from the hyper-parameters alone."""
        q, kv, hidden = self.n_heads * self.head_dim, self.n_kv_heads * self.head_dim, self.hidden_size
        per_layer: dict[str, tuple[int, ...]] = {
            "attn_norm.weight": (hidden,), "ffn_norm.weight": (hidden,),
            "attn_output.weight": (hidden, q), "ffn_up.weight": (2 * self.ffn_size, hidden),
            "ffn_down.weight": (hidden, self.ffn_size)}
        if self.layout == "chatglm":
            per_layer["attn_qkv.weight"] = (q + 2 * kv, hidden)
            biases = {"attn_qkv.bias": (q + 2 * kv,)}
        else:
            per_layer.update({"attn_q.weight": (q, hidden), "attn_k.weight": (kv, hidden),
                              "attn_v.weight": (kv, hidden)})
            biases = {"attn_q.bias": (q,), "attn_k.bias": (kv,), "attn_v.bias": (kv,)}
        if self.qkv_bias:
            per_layer.update(biases)
        if self.arch == "glm4":
            per_layer.update({"post_attention_norm.weight": (hidden,), "post_ffw_norm.weight": (hidden,)})
        shapes = {"token_embd.weight": (self.vocab_size, hidden), "output_norm.weight": (hidden,),
                  "output.weight": (self.vocab_size, hidden)}
        for n in range(self.n_layers):
            shapes.update({f"blk.{n}.{name}": shape for name, shape in per_layer.items()})
        return shapes

    def tensor_map(self) -> dict[str, str]:
        """Source tensor name → GGUF tensor name, for every tensor the GGUF file holds."""
        mapping: dict[str, str] = {}
        if self.layout == "hf":
            mapping["model.embed_tokens.weight"] = "token_embd.weight"
            mapping["model.norm.weight"] = "output_norm.weight"
            mapping["lm_head.weight"] = "output.weight"
            per_layer = {
                "input_layernorm.weight": "attn_norm.weight",
                "self_attn.q_proj.weight": "attn_q.weight", "self_attn.q_proj.bias": "attn_q.bias",
                "self_attn.k_proj.weight": "attn_k.weight", "self_attn.k_proj.bias": "attn_k.bias",
                "self_attn.v_proj.weight": "attn_v.weight", "self_attn.v_proj.bias": "attn_v.bias",
                "self_attn.o_proj.weight": "attn_output.weight",
                "post_attention_layernorm.weight": "ffn_norm.weight",
                "mlp.gate_up_proj.weight": "ffn_up.weight",
                "mlp.down_proj.weight": "ffn_down.weight",
            }
            if self.arch == "glm4":
                per_layer["post_self_attn_layernorm.weight"] = "post_attention_norm.weight"
                per_layer["post_mlp_layernorm.weight"] = "post_ffw_norm.weight"
            prefix = "model.layers.{n}."
        else:
            mapping["transformer.embedding.word_embeddings.weight"] = "token_embd.weight"
            mapping["transformer.encoder.final_layernorm.weight"] = "output_norm.weight"
            mapping["transformer.output_layer.weight"] = "output.weight"
            per_layer = {
                "input_layernorm.weight": "attn_norm.weight",
                "self_attention.query_key_value.weight": "attn_qkv.weight",
                "self_attention.query_key_value.bias": "attn_qkv.bias",
                "self_attention.dense.weight": "attn_output.weight",
                "post_attention_layernorm.weight": "ffn_norm.weight",
                "mlp.dense_h_to_4h.weight": "ffn_up.weight",
                "mlp.dense_4h_to_h.weight": "ffn_down.weight",
            }
            prefix = "transformer.encoder.layers.{n}."
        for n in range(self.n_layers):
            for source, target in per_layer.items():
                mapping[prefix.format(n=n) + source] = f"blk.{n}.{target}"
        return mapping

    @property
    def embedding_name(self) -> str:
        """The source name of the token embedding (written as ``output`` too when tied)."""
        return "model.embed_tokens.weight" if self.layout == "hf" else "transformer.embedding.word_embeddings.weight"


def config_path(model: str | Path) -> Path:
    """The config.json of a model directory; ``model`` may also be the config.json itself."""
    model = Path(model)
    if model.suffix == ".json" and model.is_file():
        return model
    if not model.is_dir():
        raise MentalGLMError(f"{model}: not a model directory")
    return model / "config.json"


def read_config(model: str | Path) -> dict:
    """The parsed config.json of a model; a one-line MentalGLMError if it is missing or broken."""
    path = config_path(model)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise MentalGLMError(f"{path}: missing; a model directory needs config.json") from None
    except (OSError, ValueError) as exc:
        raise MentalGLMError(f"{path}: unreadable ({exc})") from None


def _need(config: dict, key: str, path: Path):
    if key not in config or config[key] is None:
        raise MentalGLMError(f"{path}: field '{key}': missing")
    return config[key]


def read_spec(model_dir: str | Path) -> GLMSpec:
    """Read a GLM model directory's config into a GLMSpec.

    Raises:
        MentalGLMError: missing config, an unsupported architecture (named, with the supported
            ones), or a missing hyper-parameter.
    """
    config = read_config(model_dir)
    path = config_path(model_dir)
    architectures = config.get("architectures") or []
    architecture = architectures[0] if architectures else None
    if architecture is None and config.get("model_type") == "chatglm":
        architecture = "ChatGLMModel"
    if architecture not in SUPPORTED:
        shown = architecture or f"model_type {config.get('model_type')!r}"
        raise MentalGLMError(f"{path}: unsupported architecture {shown}; supported: {SUPPORTED_TEXT}")
    arch, layout = SUPPORTED[architecture]
    if layout == "chatglm":
        return _chatglm_spec(config, path, architecture)
    hidden = _need(config, "hidden_size", path)
    heads = _need(config, "num_attention_heads", path)
    head_dim = config.get("head_dim") or hidden // heads
    rope = config.get("rope_parameters") or config.get("rope_scaling") or {}
    rope_theta = rope.get("rope_theta", config.get("rope_theta"))
    if rope_theta is None:
        raise MentalGLMError(f"{path}: field 'rope_theta': missing (neither rope_parameters.rope_theta nor rope_theta)")
    factor = rope.get("partial_rotary_factor", config.get("partial_rotary_factor", 0.5))
    return GLMSpec(
        arch=arch, layout=layout, architecture=architecture,
        n_layers=_need(config, "num_hidden_layers", path), hidden_size=hidden,
        ffn_size=_need(config, "intermediate_size", path), n_heads=heads,
        n_kv_heads=config.get("num_key_value_heads") or heads, head_dim=head_dim,
        rope_dim=int(head_dim * factor), rope_base=float(rope_theta),
        rms_eps=float(_need(config, "rms_norm_eps", path)),
        context_length=_need(config, "max_position_embeddings", path),
        vocab_size=_need(config, "vocab_size", path),
        tie_embeddings=bool(config.get("tie_word_embeddings", False)),
        qkv_bias=bool(config.get("attention_bias", True)))


def _chatglm_spec(config: dict, path: Path, architecture: str) -> GLMSpec:
    hidden = _need(config, "hidden_size", path)
    heads = _need(config, "num_attention_heads", path)
    head_dim = config.get("kv_channels") or hidden // heads
    kv_heads = config.get("multi_query_group_num") if config.get("multi_query_attention") else heads
    vocab = config.get("padded_vocab_size") or config.get("vocab_size")
    if vocab is None:
        raise MentalGLMError(f"{path}: field 'padded_vocab_size': missing")
    return GLMSpec(
        arch="chatglm", layout="chatglm", architecture=architecture,
        n_layers=config.get("num_layers") or _need(config, "num_hidden_layers", path), hidden_size=hidden,
        ffn_size=_need(config, "ffn_hidden_size", path), n_heads=heads, n_kv_heads=kv_heads or heads,
        head_dim=head_dim, rope_dim=head_dim // 2,  # ChatGLM rotates half of each head
        rope_base=10000.0 * float(config.get("rope_ratio", 1.0)),
        rms_eps=float(config.get("layernorm_epsilon", 1e-5)),
        context_length=_need(config, "seq_length", path), vocab_size=vocab,
        tie_embeddings=bool(config.get("tie_word_embeddings", False)),
        qkv_bias=bool(config.get("add_qkv_bias", True)))
