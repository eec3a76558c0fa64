"""The GLM-4 tokenizer in its two forms: tiktoken ranks (THUDM ``tokenizer.model``) and HF byte-level BPE.

GLM-4 was trained as a tiktoken BPE: a token's rank is its id, and merges are implicit (the
lowest-ranked pair is merged first). The transformers-native ``tokenizer.json`` spells the same
thing as a byte-level BPE with an explicit merge list. Going from ranks to merges: for each
multi-byte token, run BPE over its bytes using only ranks lower than its own; the two parts
left are its merge. Going back: the vocabulary's byte-level strings decoded to raw bytes.

Both the tiny test tokenizer and the ChatGLM importer build their ``tokenizer.json`` here, so
an HF-native → ChatGLM → HF-native round trip gives back the same file.

Only ``tokenizers`` is needed (imported lazily); no remote code, no tiktoken package.
"""

from __future__ import annotations

import base64
import binascii
import json
from pathlib import Path
from typing import Mapping

from mentalglm.core.errors import MentalGLMError
from mentalglm.modelfiles.tokens import (
    GLM4_CHAT_TEMPLATE,
    GLM4_PRETOKENIZE_REGEX,
    str_to_token,
    token_to_str,
)


def read_tiktoken(path: str | Path) -> dict[bytes, int]:
    """Read a tiktoken rank file (``base64(token bytes) rank`` per line).

    Raises:
        MentalGLMError: missing file, or a malformed / duplicate line (file and line named).
    """
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise MentalGLMError(f"{path}: tokenizer file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise MentalGLMError(f"{path}: unreadable ({exc})") from None
    ranks: dict[bytes, int] = {}
    seen_ranks: set[int] = set()
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        parts = line.split()
        try:
            if len(parts) != 2:
                raise ValueError("expected 'base64 rank'")
            token, rank = base64.b64decode(parts[0], validate=True), int(parts[1])
        except (ValueError, binascii.Error) as exc:
            raise MentalGLMError(f"{path}:{number}: not a tiktoken line ({exc})") from None
        if token in ranks or rank in seen_ranks:
            raise MentalGLMError(f"{path}:{number}: duplicate token or rank {rank}")
        ranks[token] = rank
        seen_ranks.add(rank)
    if not ranks:
        raise MentalGLMError(f"{path}: no tokens")
    return ranks


def write_tiktoken(path: str | Path, ranks: Mapping[bytes, int]) -> Path:
    """Write ``ranks`` as a tiktoken rank file, lowest rank first."""
    path = Path(path)
    lines = [f"{base64.b64encode(tok).decode('ascii')} {rank}\n"
             for tok, rank in sorted(ranks.items(), key=lambda item: item[1])]
    path.write_text("".join(lines), encoding="utf-8")
    return path


def _bpe_parts(ranks: Mapping[bytes, int], token: bytes, max_rank: int) -> list[bytes]:
    parts = [token[i:i + 1] for i in range(len(token))]
    while len(parts) > 1:
        best_at, best_rank = -1, max_rank
        for i in range(len(parts) - 1):
            rank = ranks.get(parts[i] + parts[i + 1])
            if rank is not None and rank < best_rank:
                best_at, best_rank = i, rank
        if best_at < 0:
            break
        parts[best_at:best_at + 2] = [parts[best_at] + parts[best_at + 1]]
    return parts


def recover_merges(ranks: Mapping[bytes, int]) -> list[tuple[bytes, bytes]]:
    """The merge list that makes a rank-ordered BPE tokenize like tiktoken, in rank order.

    A token whose bytes do not reduce to exactly two lower-ranked parts (possible in vocabularies
    not trained as tiktoken) falls back to the split whose two halves have the lowest ranks,
    so every token stays reachable; with no such split it gets no merge.
    """
    merges: list[tuple[bytes, bytes]] = []
    for token, rank in sorted(ranks.items(), key=lambda item: item[1]):
        if len(token) < 2:
            continue
        parts = _bpe_parts(ranks, token, rank)
        if len(parts) != 2:
            splits = [(max(ranks[token[:i]], ranks[token[i:]]), i) for i in range(1, len(token))
                      if token[:i] in ranks and token[i:] in ranks]
            if not splits:
                continue
            cut = min(splits)[1]
            parts = [token[:cut], token[cut:]]
        merges.append((parts[0], parts[1]))
    return merges


def glm4_tokenizer(ranks: Mapping[bytes, int], special_tokens: Mapping[int, str]):
    """A ``tokenizers.Tokenizer`` for GLM-4: byte-level BPE from tiktoken ranks plus special tokens.

    Args:
        ranks: token bytes → id (the regular vocabulary).
        special_tokens: id → text of the added special tokens (``<|endoftext|>`` …); they must
            include ``[gMASK]`` and ``<sop>``, which the post-processor prepends like GLM-4's
            own tokenizer does.

    Returns:
        The tokenizer, its added tokens at exactly the given ids.

    Raises:
        MentalGLMError: a special id that collides with a regular token, or no ``[gMASK]`` /
            ``<sop>``.
    """
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors

    clash = sorted(set(special_tokens) & set(ranks.values()))
    if clash:
        raise MentalGLMError(f"special token id {clash[0]} ({special_tokens[clash[0]]!r}) is also a regular token")
    by_text = {text: i for i, text in special_tokens.items()}
    for needed in ("[gMASK]", "<sop>"):
        if needed not in by_text:
            raise MentalGLMError(f"the tokenizer has no {needed} special token")
    vocab = {token_to_str(tok): rank for tok, rank in ranks.items()}
    merges = [(token_to_str(a), token_to_str(b)) for a, b in recover_merges(ranks)]
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=merges, ignore_merges=False, fuse_unk=False,
                                     byte_fallback=False))
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(GLM4_PRETOKENIZE_REGEX), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False),
    ])
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[gMASK]:0 <sop>:0 $A:0",
        pair="[gMASK]:0 <sop>:0 $A:0 $B:1",
        special_tokens=[("[gMASK]", by_text["[gMASK]"]), ("<sop>", by_text["<sop>"])],
    )
    # add_special_tokens() would number them itself; the JSON form takes explicit ids.
    data = json.loads(tokenizer.to_str())
    data["added_tokens"] = [
        {"id": i, "content": text, "single_word": False, "lstrip": False, "rstrip": False,
         "normalized": False, "special": True}
        for i, text in sorted(special_tokens.items())
    ]
    return Tokenizer.from_str(json.dumps(data, ensure_ascii=False))


def vocab_ranks(tokenizer) -> dict[bytes, int]:
    """The regular (non-added) vocabulary of a byte-level BPE ``tokenizers.Tokenizer`` as tiktoken ranks."""
    vocab = json.loads(tokenizer.to_str())["model"]["vocab"]
    return {str_to_token(text): i for text, i in vocab.items()}


def write_hf_tokenizer(tokenizer, out_dir: str | Path, *, special_tokens: Mapping[int, str],
                       chat_template: str = GLM4_CHAT_TEMPLATE, eos_token: str = "<|endoftext|>",
                       pad_token: str = "<|endoftext|>", model_max_length: int = 2048) -> Path:
    """Save ``tokenizer.json`` and a ``tokenizer_config.json`` that transformers loads as PreTrainedTokenizerFast.

    The config is written by hand (not by ``save_pretrained``) so it carries the chat template
    itself and loads the same in transformers 4.x and 5.x.

    Returns:
        ``out_dir``.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "tokenizer.json").write_text(
        json.dumps(json.loads(tokenizer.to_str()), ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    config = {
        "added_tokens_decoder": {
            str(i): {"content": text, "lstrip": False, "normalized": False, "rstrip": False,
                     "single_word": False, "special": True}
            for i, text in sorted(special_tokens.items())
        },
        "chat_template": chat_template,
        "clean_up_tokenization_spaces": False,
        "eos_token": eos_token,
        "model_input_names": ["input_ids", "attention_mask"],
        "model_max_length": model_max_length,
        "pad_token": pad_token,
        "padding_side": "left",
        "tokenizer_class": "PreTrainedTokenizerFast",
    }
    (out_dir / "tokenizer_config.json").write_text(
        json.dumps(config, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    return out_dir

