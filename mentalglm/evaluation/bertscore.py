"""BERTScore of explanations against gold explanations, with a model the user names (never downloaded).

Zhang et al.'s BERTScore as the ``bert-score`` package computes it by default (no idf weighting,
no baseline rescaling): both texts go through the encoder with its special tokens; each
token's hidden state at ``layer`` is L2-normalised; precision is the mean, over the candidate's
own tokens (the ``[CLS]``/``[SEP]`` markers left out), of the best cosine with any reference position; recall
the same the other way; F1 their harmonic mean. A text with no tokens of its own scores 0.

The model is read from a local folder only (``local_files_only``, no ``trust_remote_code``):
offline by default, as everything else. For Chinese, a Chinese BERT such as ``bert-base-chinese``
(bert-score's default for ``lang="zh"``, layer 8) is the usual choice.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from mentalglm.core.errors import MentalGLMError


class BERTScorer:
    """Scores candidate texts against references with one local encoder.

    Args:
        model: a folder holding a transformers encoder and its tokenizer.
        layer: the hidden layer to use (1-based, as bert-score's ``num_layers``); default: the last.
        batch_size: texts encoded together.

    Raises:
        MentalGLMError: no such folder, or one that transformers cannot load offline.
    """

    def __init__(self, model: str | Path, *, layer: int | None = None, batch_size: int = 16):
        try:
            import torch  # noqa: F401  (the torch extra)
            from transformers import AutoModel, AutoTokenizer
        except ImportError:
            raise MentalGLMError("BERTScore needs the torch extra: pip install 'mentalglm[torch]'") from None
        folder = Path(model)
        if not folder.is_dir():
            raise MentalGLMError(f"{folder}: no such model folder for BERTScore (give a local encoder folder)")
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
            self.model = AutoModel.from_pretrained(folder, local_files_only=True).eval()
        except (OSError, ValueError) as exc:
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise MentalGLMError(f"{folder}: cannot load an encoder for BERTScore: {reason}") from None
        layers = self.model.config.num_hidden_layers
        self.layer = layer or layers
        if not 1 <= self.layer <= layers:
            raise MentalGLMError(f"BERTScore layer {self.layer}: the model has layers 1 to {layers}")
        self.batch_size = batch_size
        self.name = folder.name
        limit = self.tokenizer.model_max_length
        self.max_length = limit if isinstance(limit, int) and 0 < limit <= 4096 else 512

    def _embed(self, texts: Sequence[str]):
        """Per text: (normalised hidden states of all its positions, mask of its own, non-special tokens)."""
        import torch

        # As bert-score: only the sentence markers are not the text's own tokens (an unknown one is).
        special = {self.tokenizer.cls_token_id, self.tokenizer.sep_token_id} - {None}
        found = []
        for start in range(0, len(texts), self.batch_size):
            encoded = self.tokenizer(list(texts[start:start + self.batch_size]), padding=True, truncation=True,
                                     max_length=self.max_length, return_tensors="pt")
            with torch.no_grad():
                states = self.model(**encoded, output_hidden_states=True).hidden_states[self.layer]
            states = torch.nn.functional.normalize(states.float(), dim=-1)
            for row, ids, mask in zip(states, encoded["input_ids"], encoded["attention_mask"]):
                length = int(mask.sum())
                own = torch.tensor([int(t) not in special for t in ids[:length]])
                found.append((row[:length], own))
        return found

    def score(self, candidates: Sequence[str], references: Sequence[str]) -> list[tuple[float, float, float]]:
        """``(precision, recall, F1)`` of each candidate against its reference."""
        results = []
        for (cand, cand_own), (ref, ref_own) in zip(self._embed(candidates), self._embed(references)):
            if not cand_own.any() or not ref_own.any():
                results.append((0.0, 0.0, 0.0))
                continue
            similarity = cand @ ref.T  # every candidate position × every reference position
            precision = float(similarity.max(dim=1).values[cand_own].mean())
            recall = float(similarity.max(dim=0).values[ref_own].mean())
            f1 = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
            results.append((precision, recall, f1))
        return results
