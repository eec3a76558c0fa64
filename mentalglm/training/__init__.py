"""LoRA supervised fine-tuning on C-IMHI records — the MentalGLM recipe (``mentalglm train``).

Each record (``instruction``, ``input``, ``output``) is rendered through a prompt style
(``glm4-chat`` by default); the model learns the ``output`` followed by an end token, with the
loss on the response tokens only. Training may run in stages (the paper first tunes on English
IMHI, then on C-IMHI, continuing the same adapter), resumes from atomic checkpoints, runs under
``torchrun`` / ``accelerate launch`` with DDP, and can score the adapter with the task's own
metrics after every epoch.

Modules, one job each:

- :mod:`~mentalglm.training.config` — typed settings and config files;
- :mod:`~mentalglm.training.dataset` — reading, checking and tokenizing records, loss masks,
  batches and the data order;
- :mod:`~mentalglm.training.checkpoint` — atomic checkpoints (safetensors + JSON) and resume;
- :mod:`~mentalglm.training.rundir` — the output folder: ``train_config.json``, refusing a
  different run, the finished marker;
- :mod:`~mentalglm.training.distributed` — ``torch.distributed`` (DDP) set-up;
- :mod:`~mentalglm.training.validation` — per-epoch evaluation through the Analyzer and the torch
  backend, the numbers ``mentalglm evaluate`` reports;
- :mod:`~mentalglm.training.curves` — ``loss.json`` and ``loss.png``;
- :mod:`~mentalglm.training.loop` — the training loop;

Importing this package is cheap: torch, transformers, peft and matplotlib are imported inside
the functions that need them.

Example:
    >>> from mentalglm.training import TrainConfig, train          # doctest: +SKIP
    >>> config = TrainConfig(model="glm-4-9b-chat-hf", output="runs/lora",
    ...                      stages=[{"data": ["c-imhi-train.jsonl"]}], task="depression")
    >>> result = train(config)                                      # doctest: +SKIP
"""

from __future__ import annotations

from mentalglm.training.config import DEFAULT_TARGET_MODULES, StageConfig, TrainConfig, load_config_file

__all__ = ["DEFAULT_TARGET_MODULES", "StageConfig", "TrainConfig", "TrainResult", "load_config_file", "train"]


def __getattr__(name: str):
    # The loop imports nothing heavy at module level either, but keeping it lazy means
    # ``import mentalglm.training`` never pulls in more than the settings.
    if name in ("train", "TrainResult"):
        from mentalglm.training import loop

        return getattr(loop, name)
    raise AttributeError(name)
