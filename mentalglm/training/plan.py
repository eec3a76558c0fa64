"""The plan of a training run: everything checked and decided before the model loads.

:func:`plan_run` reads and checks the data files (against the task when one is given), the
eval data, the prompt length of every record and the run folder, tokenizes every stage, and
returns a :class:`RunPlan` with one frozen :class:`StagePlan` per stage (data, steps, epochs,
learning rate, warm-up). The loop (:mod:`~mentalglm.training.loop`) only carries it out.
"""

from __future__ import annotations

import contextlib
import math
import sys
from dataclasses import dataclass
from typing import Any

from mentalglm.core.errors import MentalGLMError
from mentalglm.training import rundir
from mentalglm.training.config import TrainConfig
from mentalglm.training.dataset import (
    EndToken,
    StageData,
    encode_stage,
    read_stage_records,
    resolve_end_token,
    steps_per_epoch,
)
from mentalglm.training.validation import Validator, decoding_options, load_eval_set


def resolve_precision(setting: str, device) -> str:
    """The precision to train in on ``device``.

    Args:
        setting: ``auto``, ``fp32``, ``bf16`` or ``fp16``.
        device: the ``torch.device``.

    Returns:
        ``fp32``, ``bf16`` or ``fp16`` (``auto``: bf16 on a GPU that supports it, else fp32).

    Raises:
        MentalGLMError: bf16/fp16 on the CPU, or bf16 on a GPU without it.
    """
    import torch

    if device.type != "cuda":
        if setting in ("bf16", "fp16"):
            raise MentalGLMError(f"--precision {setting} needs a CUDA GPU and this run is on the CPU; "
                                 "use --precision fp32")
        return "fp32"
    bf16 = torch.cuda.is_bf16_supported()
    if setting == "auto":
        return "bf16" if bf16 else "fp32"
    if setting == "bf16" and not bf16:
        raise MentalGLMError(f"--precision bf16: {torch.cuda.get_device_name(device)} has no bf16; use fp16 or fp32")
    return setting


@contextlib.contextmanager
def quiet_transformers():
    """Hide transformers' progress bars while loading (noise on stderr)."""
    import transformers

    was_on = transformers.utils.logging.is_progress_bar_enabled()
    transformers.utils.logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_on:
            transformers.utils.logging.enable_progress_bar()


def load_tokenizer(model_dir: str, trust_remote_code: bool = False):
    """The model folder's tokenizer.

    Raises:
        MentalGLMError: it cannot be loaded (for the original ChatGLM layout, which needs
            remote code, the message says to run ``mentalglm convert`` first).
    """
    from transformers import AutoTokenizer

    try:
        with quiet_transformers():
            return AutoTokenizer.from_pretrained(model_dir, trust_remote_code=trust_remote_code)
    except (OSError, ValueError, KeyError) as exc:
        hint = ("; a ChatGLM-layout checkpoint needs `mentalglm convert` first (or --trust-remote-code)"
                if not trust_remote_code else "")
        raise MentalGLMError(f"{model_dir}: cannot load the tokenizer: {str(exc).splitlines()[0]}{hint}") from None


class Reporter:
    """Progress and notices on stderr, from rank 0 only."""

    def __init__(self, main: bool, quiet: bool):
        self.main, self.quiet = main, quiet

    def progress(self, message: str) -> None:
        """A progress line (silenced by ``quiet``)."""
        if self.main and not self.quiet:
            print(f"mentalglm train: {message}", file=sys.stderr, flush=True)

    def notice(self, message: str) -> None:
        """A line the user should see even with ``quiet``."""
        if self.main:
            print(f"mentalglm train: {message}", file=sys.stderr, flush=True)


@dataclass(frozen=True)
class StagePlan:
    """One stage of the run, computed up front.

    Attributes:
        index: 0-based stage index.
        name: display name (``stage N`` unless configured).
        data: the stage's tokenized examples, files and truncation count.
        steps_per_epoch: optimizer steps in one pass over the data (per process).
        steps: optimizer steps the stage trains.
        epochs: epochs it starts (the last one may stop early at ``steps``).
        learning_rate: peak learning rate.
        warmup_steps: steps of linear warm-up from 0.
        max_steps: the stage's own ``max_steps`` setting (recorded, not used).
    """

    index: int
    name: str
    data: StageData
    steps_per_epoch: int
    steps: int
    epochs: int
    learning_rate: float
    warmup_steps: int
    max_steps: int | None

    def epoch_complete(self, stage_step: int) -> bool:
        """Whether an epoch ending at ``stage_step`` went through all its data (the last may stop early)."""
        return stage_step < self.steps or stage_step == self.epochs * self.steps_per_epoch

    def to_manifest(self) -> dict:
        """What ``train_config.json`` records about the stage."""
        return {"name": self.name, "files": [f.to_dict() for f in self.data.files],
                "examples": len(self.data.examples), "truncated": self.data.truncated,
                "steps_per_epoch": self.steps_per_epoch, "steps": self.steps, "epochs": self.epochs,
                "learning_rate": self.learning_rate, "max_steps": self.max_steps}


@dataclass(frozen=True)
class RunPlan:
    """What an invocation of :func:`train` will do, decided before the model loads.

    Attributes:
        stages: the stages, in order.
        tokenizer: the base model's tokenizer.
        end_token: the token appended to every response, or None.
        pad_id: the id padding uses (masked out of attention and loss).
        precision: ``fp32``, ``bf16`` or ``fp16``.
        validator: per-epoch validation, or None without ``eval_data``.
        manifest: the ``train_config.json`` document.
        state: ``new``, ``resume`` or ``done`` (see :func:`rundir.run_state`).
    """

    stages: tuple[StagePlan, ...]
    tokenizer: Any
    end_token: EndToken | None
    pad_id: int
    precision: str
    validator: Validator | None
    manifest: dict
    state: str

    @property
    def total_steps(self) -> int:
        """Optimizer steps over all stages."""
        return sum(stage.steps for stage in self.stages)

    @property
    def truncated(self) -> int:
        """Examples whose response was cut, over all stages."""
        return sum(stage.data.truncated for stage in self.stages)

    @property
    def stage_names(self) -> list[str]:
        """Display names of the stages, in order."""
        return [stage.name for stage in self.stages]


def _plan_stage(config: TrainConfig, index: int, data: StageData, world_size: int) -> StagePlan:
    per_epoch = steps_per_epoch(len(data.examples), config.batch_size, config.gradient_accumulation, world_size)
    steps, epochs = config.stage_length(index, per_epoch)
    return StagePlan(index=index, name=config.stage_name(index), data=data, steps_per_epoch=per_epoch, steps=steps,
                     epochs=epochs, learning_rate=config.stage_learning_rate(index),
                     warmup_steps=math.ceil(config.warmup_ratio * steps), max_steps=config.stages[index].max_steps)


def _pad_id(tokenizer, end_token: EndToken | None) -> int:
    # Padding is masked out of attention and loss, so any id will do; prefer the tokenizer's own.
    candidates = (tokenizer.pad_token_id, end_token.id if end_token else None, tokenizer.eos_token_id, 0)
    return next(i for i in candidates if i is not None)


def _validator(config: TrainConfig, task, style) -> Validator | None:
    if not config.eval_data:
        return None
    evalset = load_eval_set(config.eval_data, task, data_mapping(config))
    return Validator(evalset=evalset, task=task, style=style, system=config.system,
                     batch_size=config.eval_batch_size, options=decoding_options(config.eval_max_new_tokens))


def data_mapping(config: TrainConfig):
    """How the run's data files are read (the ``data_mapping`` setting), or None."""
    from mentalglm.data.mapping import DataMapping

    return DataMapping.from_dict(config.data_mapping, origin="data_mapping") if config.data_mapping else None


def plan_run(config: TrainConfig, dist, report: Reporter) -> RunPlan:
    """Check every input and decide the whole run, before the model is loaded.

    Reads and checks the data files (against the task when one is given), the eval data, the
    prompt length of every record, and the run folder; tokenizes every stage.

    Raises:
        MentalGLMError: anything wrong with the input (see :func:`train`).
    """
    from mentalglm.core.plugin_manager import get_plugin_manager

    plugins = get_plugin_manager()
    style = plugins.prompt(config.prompt)
    task = plugins.task(config.task) if config.task else None
    if config.system and not style.system_template and style.name != "auto":
        raise MentalGLMError(f"prompt style '{style.name}' has no system turn; drop --system")
    base = rundir.base_model_info(config.model)
    files = [read_stage_records(stage.data, task, data_mapping(config)) for stage in config.stages]
    tokenizer = load_tokenizer(config.model, config.trust_remote_code)
    if style.name == "auto":  # the base model's own chat template, as the torch backend renders it
        from mentalglm.backends.torch_backend import tokenizer_chat_template
        from mentalglm.core.prompt import ChatTemplatePrompt

        style = ChatTemplatePrompt.for_model(tokenizer_chat_template(tokenizer, config.model), config.model,
                                             config.system)
    validator = _validator(config, task, style)
    precision = resolve_precision(config.precision, dist.device)
    end_token = resolve_end_token(tokenizer, style, config.end_token)
    stages = tuple(_plan_stage(config, index, encode_stage(tokenizer, style, f, end_token=end_token,
                                                           max_length=config.max_length, system=config.system),
                               dist.world_size)
                   for index, f in enumerate(files))
    for stage in stages:
        if stage.data.truncated:
            report.notice(f"{stage.name}: {stage.data.truncated} of {len(stage.data.examples)} records are longer "
                          f"than --max-length {config.max_length} tokens; their responses were cut (and their end "
                          "token is not learnt)")
    resolved = {"precision": precision, "device": dist.device.type, "world_size": dist.world_size,
                "end_token": {"text": end_token.text, "id": end_token.id, "reason": end_token.reason}
                if end_token else None}
    manifest = rundir.build_manifest(config, base_model=base, stages=[s.to_manifest() for s in stages],
                                     evaluation=validator.evalset.to_dict() if validator else None, resolved=resolved)
    state = rundir.run_state(config.output, manifest)
    dist.barrier()  # every rank has read the folder before rank 0 writes to it
    return RunPlan(stages=stages, tokenizer=tokenizer, end_token=end_token, pad_id=_pad_id(tokenizer, end_token),
                   precision=precision, validator=validator, manifest=manifest, state=state)


