"""The GLM-4 tokenizer as GGUF metadata: byte-level BPE (``gpt2``) with the ``chatglm-bpe`` pre-tokenizer.

Reads ``tokenizer.json`` (transformers-native directories) or the tiktoken ``tokenizer.model`` of
the original ChatGLM layout, and yields tokens, token types, merges, special-token ids and the
chat template. Ids the model has but the tokenizer lacks (GLM pads its vocabulary) become
``[PAD{id}]`` tokens of type UNUSED, as llama.cpp expects.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from mentalglm.core.errors import MentalGLMError

#: GGUF token types (llama.cpp's llama_token_type).
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6

#: Generation ends at any of these (GLM-4 turn markers).
END_OF_GENERATION = ("<|endoftext|>", "<|user|>", "<|observation|>")


@dataclass
class GGUFVocab:
    """Everything llama.cpp needs to tokenize like the source tokenizer."""

    tokens: list[str]
    token_types: list[int]
    merges: list[str]
    special_ids: dict[str, int] = field(default_factory=dict)
    chat_template: str | None = None

    def id_of(self, text: str) -> int:
        """The id of a token by its text; MentalGLMError if absent."""
        try:
            return self.tokens.index(text)
        except ValueError:
            raise MentalGLMError(f"tokenizer has no token {text!r}") from None


def _merges_as_strings(merges: list) -> list[str]:
    return [" ".join(m) if isinstance(m, list) else m for m in merges]


def _from_tokenizer_json(model_dir: Path) -> tuple[dict[str, int], list[str], dict[int, tuple[str, bool]]]:
    path = model_dir / "tokenizer.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise MentalGLMError(f"{path}: unreadable ({exc})") from None
    model = data.get("model") or {}
    if model.get("type") != "BPE":
        raise MentalGLMError(f"{path}: field 'model.type': {model.get('type')!r}; GLM-4 needs a byte-level BPE")
    added = {t["id"]: (t["content"], bool(t.get("special"))) for t in data.get("added_tokens", [])}
    return dict(model["vocab"]), _merges_as_strings(model.get("merges", [])), added


def _from_tiktoken(model_dir: Path) -> tuple[dict[str, int], list[str], dict[int, tuple[str, bool]]]:
    from mentalglm.converters.chatglm import tokenizer_json_from_tiktoken

    data = tokenizer_json_from_tiktoken(model_dir)
    added = {t["id"]: (t["content"], bool(t.get("special"))) for t in data.get("added_tokens", [])}
    return dict(data["model"]["vocab"]), _merges_as_strings(data["model"]["merges"]), added


def _chat_template(model_dir: Path) -> str | None:
    from mentalglm.converters.chatglm import chat_template

    path = model_dir / "tokenizer_config.json"
    config: dict = {}
    if path.exists():
        try:
            config = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise MentalGLMError(f"{path}: unreadable ({exc})") from None
    return chat_template(model_dir, config)


def read_vocab(model_dir: str | Path, vocab_size: int) -> GGUFVocab:
    """The GGUF vocabulary of a GLM model directory, padded to the model's ``vocab_size``.

    Raises:
        MentalGLMError: no tokenizer (``tokenizer.json`` or ``tokenizer.model``), a non-BPE
            tokenizer, a tokenizer larger than the model's vocabulary, or a missing GLM-4 token.
    """
    model_dir = Path(model_dir)
    if (model_dir / "tokenizer.json").exists():
        vocab, merges, added = _from_tokenizer_json(model_dir)
    elif (model_dir / "tokenizer.model").exists():
        vocab, merges, added = _from_tiktoken(model_dir)
    else:
        raise MentalGLMError(f"{model_dir}: no tokenizer.json or tokenizer.model found")
    by_id: dict[int, tuple[str, int]] = {i: (text, NORMAL) for text, i in vocab.items()}
    for i, (text, special) in added.items():
        by_id[i] = (text, CONTROL if special else USER_DEFINED)
    largest = max(by_id) + 1
    if largest > vocab_size:
        raise MentalGLMError(f"{model_dir}: tokenizer has ids up to {largest - 1} but the model's vocabulary "
                             f"has {vocab_size} rows")
    tokens, types = [], []
    for i in range(vocab_size):
        text, kind = by_id.get(i, (f"[PAD{i}]", UNUSED))
        tokens.append(text)
        types.append(kind)
    result = GGUFVocab(tokens, types, merges, chat_template=_chat_template(model_dir))
    result.special_ids = {
        "eos": result.id_of("<|endoftext|>"),
        "eot": result.id_of("<|user|>"),
        "eom": result.id_of("<|observation|>"),
        "pad": result.id_of("<|endoftext|>"),
        "unk": result.id_of("<|endoftext|>"),
        "bos": result.id_of("[gMASK]"),
    }
    return result
