"""Validation during training: the adapter as it stands, scored with the task's own metrics.

After each epoch the in-memory peft model (adapter unmerged, dropout off) generates greedily
for every eval post; outputs are parsed with ``task.parse`` and scored with
``task.compute_metrics`` — the numbers ``mentalglm evaluate`` would report for the saved
adapter. Generating in memory avoids writing and reloading the adapter through a backend
every epoch. Decoding is free (no response-format constraint): during training the point is
to see whether the model learns the format, and invalid answers are counted. Under DDP only
rank 0 evaluates while the others wait.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable, Sequence

from mentalglm.core.data import read_posts, resolve_path
from mentalglm.core.errors import DataError
from mentalglm.core.prompt import PromptStyle


@dataclass
class EvalSet:
    """Gold-labelled posts ready to generate for.

    Attributes:
        spec: the file as given.
        path: its resolved path.
        sha256: hash of its bytes.
        ids: post ids.
        prompts: rendered prompts (each post's own C-IMHI instruction, or the task's).
        golds: gold answers, aligned with ``prompts``.
    """

    spec: str
    path: str
    sha256: str
    ids: list[str]
    prompts: list[str]
    golds: list

    def to_dict(self) -> dict:
        """What ``train_config.json`` records about the eval data."""
        return {"spec": self.spec, "path": self.path, "sha256": self.sha256, "posts": len(self.ids)}


def load_eval_set(spec: str, task, style: PromptStyle, system: str | None = None) -> EvalSet:
    """Read gold-labelled posts or C-IMHI records for validation.

    Raises:
        DataError: a bad file, a label outside the task, or a post without a gold answer.
    """
    from mentalglm.training.dataset import file_sha256

    path = resolve_path(spec)
    posts = read_posts(path, task)
    for post in posts:
        if post.gold is None:
            raise DataError(path, post.line, "label", "missing; --eval-data needs a gold answer for every post")
    prompts = [style.render(p.instruction or task.instruction, p.text, system) for p in posts]
    return EvalSet(spec=spec, path=str(path.resolve()), sha256=file_sha256(path), ids=[p.id for p in posts],
                   prompts=prompts, golds=[p.gold for p in posts])


def generate_greedy(model, tokenizer, prompts: Sequence[str], *, device, max_new_tokens: int, batch_size: int,
                    stop_ids: Sequence[int], stop_strings: Sequence[str], pad_id: int,
                    autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext) -> list[str]:
    """Greedy completions, left-padded in batches, cut at the first stop token or stop string.

    Args:
        model: a causal LM (the peft model during training).
        tokenizer: its tokenizer.
        prompts: rendered prompts (tokenized without added special tokens).
        device: where the model is.
        max_new_tokens: generation budget per prompt.
        batch_size: prompts per ``generate`` call.
        stop_ids: token ids that end a completion.
        stop_strings: texts that end a completion (for stops that are not single tokens).
        pad_id: padding id.
        autocast: a context-manager factory for mixed precision.

    Returns:
        One completion text per prompt.
    """
    import torch
    from transformers import GenerationConfig

    config = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=list(stop_ids) or None,
                              pad_token_id=pad_id, use_cache=True)
    stops = set(stop_ids)
    texts: list[str] = []
    for start in range(0, len(prompts), batch_size):
        encoded = [tokenizer(p, add_special_tokens=False).input_ids for p in prompts[start:start + batch_size]]
        width = max(len(ids) for ids in encoded)
        input_ids = torch.full((len(encoded), width), pad_id, dtype=torch.long)
        attention = torch.zeros((len(encoded), width), dtype=torch.long)
        for row, ids in enumerate(encoded):
            input_ids[row, width - len(ids):] = torch.tensor(ids, dtype=torch.long)
            attention[row, width - len(ids):] = 1
        with torch.no_grad(), autocast():
            output = model.generate(input_ids=input_ids.to(device), attention_mask=attention.to(device),
                                    generation_config=config)
        for row in output[:, width:].tolist():
            cut = next((i for i, token in enumerate(row) if token in stops), len(row))
            text = tokenizer.decode(row[:cut], skip_special_tokens=True)
            for stop in stop_strings:
                text = text.split(stop, 1)[0]
            texts.append(text)
    return texts


def score(task, golds: Sequence, outputs: Sequence[str]) -> dict:
    """The task's metrics for model outputs.

    Returns:
        ``{"primary_metric", "primary_value", "counts": {"posts", "valid", "invalid"}, "metrics"}``.
    """
    responses = [task.parse(text) for text in outputs]
    metrics = task.compute_metrics(list(golds), responses)
    invalid = sum(not r.valid for r in responses)
    return {"primary_metric": task.primary_metric, "primary_value": metrics.get(task.primary_metric),
            "counts": {"posts": len(responses), "valid": len(responses) - invalid, "invalid": invalid},
            "metrics": metrics}
