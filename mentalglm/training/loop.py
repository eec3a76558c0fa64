"""The training loop: LoRA SFT over one or more stages, with checkpoints, resume, DDP and validation.

Everything that can be wrong with the input is checked before the model is loaded: the data
files (every record, against the task when one is given), the eval data, the prompt length of
every record against ``max_length``, the run folder — and the whole run is planned
(:func:`plan_run`: a :class:`RunPlan` with one frozen :class:`StagePlan` per stage, holding its
data, steps, epochs, learning rate and warm-up). Then:

- the base model is loaded (fp32, or bf16/fp16 on a GPU) and wrapped with a fresh LoRA
  adapter seeded by ``seed``;
- each stage gets its own AdamW optimizer and warm-up + decay schedule, and continues the
  adapter the previous stage left (the paper's two-stage recipe: English IMHI, then C-IMHI);
- an optimizer step sums the token losses of its micro-batches and divides by the number of
  response tokens in the step over all processes, so gradient accumulation and DDP give the
  same update as one big batch in one process;
- after every epoch the adapter is scored on ``eval_data`` through the Analyzer and the torch
  backend, exactly as ``mentalglm evaluate`` scores it (:mod:`~mentalglm.training.validation`);
- checkpoints are written every ``save_every`` steps and at every epoch end; rerunning the same
  command continues from the newest one and, on CPU, ends with bit-identical adapter weights.

The loop itself is :class:`_Trainer`: stage → epoch → step, each a short method, with the
position to resume from passed in rather than kept in flags.
"""

from __future__ import annotations

import contextlib
import importlib.util
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from mentalglm.core.errors import MentalGLMError
from mentalglm.core.files import read_json_object, write_json
from mentalglm.training import checkpoint as ckpt
from mentalglm.training import rundir
from mentalglm.training.config import TrainConfig
from mentalglm.training.dataset import (
    IGNORE_INDEX,
    collate,
    epoch_order,
    step_batches,
)
from mentalglm.training.plan import Reporter, RunPlan, StagePlan, plan_run, quiet_transformers

_SCHEDULERS = {"linear": "linear", "cosine": "cosine", "constant": "constant_with_warmup"}
_DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


@dataclass
class TrainResult:
    """What :func:`train` did.

    Attributes:
        output: the run folder.
        adapter: the final adapter folder (``output/adapter``).
        steps: optimizer steps of the whole run.
        final_loss: the loss of the last step (None when no step ran).
        resumed_from: the checkpoint step this invocation continued from, if any.
        already_finished: the folder held a finished run; nothing was trained.
        truncated: examples whose response was cut by ``max_length``, over all stages.
        evaluations: per-epoch validation results (see ``metrics.json``).
    """

    output: Path
    adapter: Path
    steps: int = 0
    final_loss: float | None = None
    resumed_from: int | None = None
    already_finished: bool = False
    truncated: int = 0
    evaluations: list[dict] = field(default_factory=list)

    def to_dict(self) -> dict:
        """JSON-ready form (what ``mentalglm train --json`` prints)."""
        data = asdict(self)
        data["output"], data["adapter"] = str(self.output), str(self.adapter)
        return data


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's generators (CUDA included)."""
    import random

    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _linear_names(model) -> list[str]:
    import torch

    return sorted({name.rsplit(".", 1)[-1] for name, module in model.named_modules()
                   if isinstance(module, torch.nn.Linear) and name})


def build_peft_model(config: TrainConfig, precision: str, device):
    """Load the base model and wrap it with a fresh LoRA adapter.

    The adapter's initialisation is seeded with ``config.seed`` (identical on every rank and
    every rerun). LoRA weights stay in fp32 under bf16/fp16 (peft's default), so the optimizer
    updates full-precision values.

    Returns:
        The peft model on ``device``.

    Raises:
        MentalGLMError: the model cannot be loaded, or a target module matches nothing in it.
    """
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    dtype = getattr(torch, _DTYPES[precision])
    # Straight onto the GPU when accelerate is there (no full copy in CPU memory first);
    # otherwise load on the CPU and move.
    direct = device.type == "cuda" and importlib.util.find_spec("accelerate") is not None
    try:
        with quiet_transformers():
            model = AutoModelForCausalLM.from_pretrained(
                config.model, dtype=dtype, trust_remote_code=config.trust_remote_code,
                device_map={"": str(device)} if direct else None)
    except (OSError, ValueError, KeyError) as exc:
        raise MentalGLMError(f"{config.model}: cannot load the model: {str(exc).splitlines()[0]}") from None
    linear = _linear_names(model)
    missing = [t for t in config.target_modules if t not in linear]
    if missing:
        raise MentalGLMError(f"--target-modules: '{missing[0]}' is not a linear layer of this model "
                             f"(linear layers: {', '.join(n for n in linear if n != 'lm_head')})")
    if config.gradient_checkpointing:
        # Non-reentrant checkpointing works with frozen inputs, so no enable_input_require_grads hack.
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.config.use_cache = False
    alpha = int(config.lora_alpha) if float(config.lora_alpha).is_integer() else config.lora_alpha
    lora = LoraConfig(r=config.lora_r, lora_alpha=alpha, lora_dropout=config.lora_dropout,
                      target_modules=list(config.target_modules), bias="none", task_type="CAUSAL_LM")
    torch.manual_seed(config.seed)
    with warnings.catch_warnings():
        # peft still asks transformers 5 for a deprecated attribute; the warning is not the user's to act on.
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        peft_model = get_peft_model(model, lora)
    return peft_model.to(device)


# -- the training loop ------------------------------------------------------------------------
@dataclass
class _Optimizer:
    """A stage's AdamW optimizer, warm-up + decay schedule and (fp16) grad scaler."""

    optimizer: Any
    scheduler: Any
    scaler: Any
    stage: int

    def restore(self, checkpoint: ckpt.Checkpoint) -> None:
        """Load the checkpoint's optimizer state if it was taken in this stage (a new stage starts afresh)."""
        if checkpoint.state.get("optimizer_stage") != self.stage:
            return
        self.optimizer.load_state_dict(checkpoint.optimizer)
        self.scheduler.load_state_dict(checkpoint.state["scheduler"])
        if self.scaler is not None and checkpoint.state.get("scaler"):
            self.scaler.load_state_dict(checkpoint.state["scaler"])


def _claim_folder(out: Path, plan: RunPlan, dist) -> None:
    """Write ``train_config.json`` for a new run (once the model has loaded, so a model that
    fails to load leaves no half-started run behind) and clear half-written checkpoints."""
    if dist.is_main:
        if plan.state == "new":
            try:
                out.mkdir(parents=True, exist_ok=True)
                write_json(out / rundir.TRAIN_CONFIG, plan.manifest)
            except OSError as exc:
                raise MentalGLMError(f"{out}: cannot write the run folder: {exc.strerror or exc}") from None
        ckpt.remove_partial(out)
    dist.barrier()


def _wrap_for_ddp(peft_model, dist):
    """``peft_model`` itself in a world of one, else its DDP replica (gradients all-reduced)."""
    if not dist.distributed:
        return peft_model
    from torch.nn.parallel import DistributedDataParallel

    ids = [dist.device.index] if dist.device.type == "cuda" else None
    return DistributedDataParallel(peft_model, device_ids=ids)


class _Trainer:
    """Trains the planned stages from a start position; all state is set here in ``__init__``.

    Args:
        config: the settings.
        dist: this process's place in the job.
        plan: the run's plan.
        peft_model: the adapter-wrapped model (freshly initialised, or with a checkpoint's weights).
        train_model: what the forward passes run: ``peft_model``, or its DDP wrapper.
        checkpoint: the checkpoint to continue from, or None.
        report: where progress goes.
    """

    def __init__(self, config: TrainConfig, dist, plan: RunPlan, peft_model, train_model,
                 checkpoint: ckpt.Checkpoint | None, report: Reporter):
        self.config, self.dist, self.plan, self.report = config, dist, plan, report
        self.out = Path(config.output)
        self.peft_model, self.train_model = peft_model, train_model
        self.checkpoint = checkpoint
        self.start = checkpoint.position if checkpoint else ckpt.Position()
        self.global_step = self.start.global_step
        self.history: list[dict] = list(checkpoint.state.get("loss", [])) if checkpoint else []
        self.evaluations: list[dict] = list(checkpoint.state.get("evaluations", [])) if checkpoint else []

    def run(self) -> None:
        """Train every stage from the start position on."""
        for stage in self.plan.stages[self.start.stage:]:
            here = self.checkpoint is not None and stage.index == self.start.stage
            self.train_stage(stage, self.checkpoint if here else None)

    def train_stage(self, stage: StagePlan, checkpoint: ckpt.Checkpoint | None) -> None:
        """One stage with its own optimizer, from the checkpoint's position when it was taken in this stage."""
        optim = self.new_optimizer(stage)
        position = ckpt.Position(self.global_step, stage.index)
        if checkpoint is not None:
            optim.restore(checkpoint)
            # After the optimizer and model are built: those consumed random numbers too.
            ckpt.restore_rng(checkpoint.rng[self.dist.rank], self.dist.device)
            position = checkpoint.position
        stage_step = position.stage_step
        for epoch in range(position.epoch, stage.epochs):
            first = position.step_in_epoch if epoch == position.epoch else 0
            stage_step = self.train_epoch(stage, epoch, first, stage_step, optim)
            self.end_epoch(stage, epoch, stage_step, optim)
            if stage_step >= stage.steps:
                break

    def train_epoch(self, stage: StagePlan, epoch: int, first: int, stage_step: int, optim: _Optimizer) -> int:
        """The epoch's optimizer steps from step ``first`` on; returns the stage's step count after them."""
        steps = step_batches(epoch_order(len(stage.data.examples), seed=self.config.seed, stage=stage.index,
                                         epoch=epoch, world_size=self.dist.world_size, rank=self.dist.rank),
                             self.config.batch_size, self.config.gradient_accumulation)
        for index in range(first, len(steps)):
            if stage_step >= stage.steps:
                break
            stats = self.step(steps[index], stage.data.examples, optim)
            self.global_step += 1
            stage_step += 1
            self.record(stage, epoch, stats, final=stage_step == stage.steps)
            ends_epoch = index == len(steps) - 1 or stage_step >= stage.steps
            if self.config.save_every and self.global_step % self.config.save_every == 0 and not ends_epoch:
                self.save(ckpt.Position(self.global_step, stage.index, epoch, index + 1, stage_step), optim)
        return stage_step

    def end_epoch(self, stage: StagePlan, epoch: int, stage_step: int, optim: _Optimizer) -> None:
        """Validate, then checkpoint with the position of the next thing to do."""
        done = stage_step >= stage.steps
        self.validate(stage, epoch, complete=stage.epoch_complete(stage_step))
        # The position names the next thing to do, so a resumed run neither repeats this
        # epoch's evaluation nor reuses this stage's optimizer in the next stage.
        following = (ckpt.Position(self.global_step, stage.index + 1) if done
                     else ckpt.Position(self.global_step, stage.index, epoch + 1, 0, stage_step))
        self.save(following, optim)

    def record(self, stage: StagePlan, epoch: int, stats: dict, final: bool) -> None:
        """Append a step to the loss history and print progress every ``log_every`` steps."""
        self.history.append({"step": self.global_step, "stage": stage.index + 1, "stage_name": stage.name,
                             "epoch": epoch + 1, "loss": stats["loss"], "lr": stats["lr"],
                             "grad_norm": stats["grad_norm"], "tokens": stats["tokens"]})
        if self.global_step % self.config.log_every == 0 or final:
            self.report.progress(f"step {self.global_step}/{self.plan.total_steps} {stage.name} "
                                 f"epoch {epoch + 1}/{stage.epochs} loss {stats['loss']:.4f} lr {stats['lr']:.2e}")

    # -- one optimizer step ---------------------------------------------------------------------
    def autocast(self):
        """Mixed precision for forward passes under bf16/fp16; nothing under fp32."""
        import torch

        if self.plan.precision == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.dist.device.type, dtype=getattr(torch, _DTYPES[self.plan.precision]))

    def new_optimizer(self, stage: StagePlan) -> _Optimizer:
        """A fresh AdamW, schedule and scaler for ``stage``."""
        import torch
        from transformers import get_scheduler

        params = [p for p in self.peft_model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=stage.learning_rate, weight_decay=self.config.weight_decay)
        scheduler = get_scheduler(_SCHEDULERS[self.config.lr_scheduler], optimizer,
                                  num_warmup_steps=stage.warmup_steps, num_training_steps=stage.steps)
        scaler = torch.amp.GradScaler("cuda") if self.plan.precision == "fp16" else None
        return _Optimizer(optimizer, scheduler, scaler, stage.index)

    def step(self, micro_batches: list[list[int]], examples, optim: _Optimizer) -> dict:
        """One optimizer step over its micro-batches; returns loss, tokens, lr and grad norm."""
        self.train_model.train()
        batches = [collate([examples[i] for i in batch], self.plan.pad_id) for batch in micro_batches]
        tokens = sum(int((b["labels"][:, 1:] != IGNORE_INDEX).sum()) for b in batches)
        # Normalise by the response tokens of the whole step on all processes; DDP averages
        # gradients over processes, hence the world-size factor. The update then equals a
        # single process training the same examples in one batch.
        all_tokens = self.dist.sum([float(tokens)])[0]
        scale = self.dist.world_size / max(all_tokens, 1.0)
        loss_sum = 0.0
        for index, batch in enumerate(batches):
            loss_sum += self.backward(batch, scale, optim.scaler, last=index == len(batches) - 1)
        grad_norm, lr = self.update(optim)
        total_loss = self.dist.sum([loss_sum])[0]
        return {"loss": total_loss / max(all_tokens, 1.0), "tokens": int(all_tokens), "lr": lr,
                "grad_norm": grad_norm}

    def backward(self, batch: dict, scale: float, scaler, last: bool) -> float:
        """Forward and backward one micro-batch; returns its summed token loss."""
        import torch.nn.functional as F

        device = self.dist.device
        # Gradients are all-reduced once per optimizer step, with its last micro-batch.
        sync = self.train_model.no_sync() if self.dist.distributed and not last else contextlib.nullcontext()
        with sync:
            with self.autocast():
                logits = self.train_model(input_ids=batch["input_ids"].to(device),
                                          attention_mask=batch["attention_mask"].to(device), use_cache=False).logits
            labels = batch["labels"][:, 1:].to(device)
            mask = labels != IGNORE_INDEX
            # Only the response positions are upcast: the full-vocabulary fp32 logits of a
            # whole batch would dwarf the model's own activations.
            summed = F.cross_entropy(logits[:, :-1][mask].float(), labels[mask], reduction="sum")
            loss = summed * scale
            (scaler.scale(loss) if scaler is not None else loss).backward()
        return float(summed.detach())

    def update(self, optim: _Optimizer) -> tuple[float, float]:
        """Clip, step the optimizer and schedule, clear the gradients; returns (grad norm, lr used)."""
        import torch

        params = [p for p in self.peft_model.parameters() if p.requires_grad]
        if optim.scaler is not None:
            optim.scaler.unscale_(optim.optimizer)
        limit = self.config.max_grad_norm if self.config.max_grad_norm > 0 else float("inf")
        grad_norm = float(torch.nn.utils.clip_grad_norm_(params, limit))
        lr = optim.optimizer.param_groups[0]["lr"]
        if optim.scaler is not None:
            optim.scaler.step(optim.optimizer)
            optim.scaler.update()
        else:
            optim.optimizer.step()
        optim.scheduler.step()
        optim.optimizer.zero_grad(set_to_none=True)
        return grad_norm, lr

    # -- validation and checkpoints ---------------------------------------------------------------
    def validate(self, stage: StagePlan, epoch: int, complete: bool) -> None:
        """Score the adapter on the eval data (rank 0), without disturbing the training RNG streams."""
        import torch

        validator = self.plan.validator
        if validator is None:
            return
        if self.dist.is_main:
            started = time.monotonic()
            devices = [self.dist.device] if self.dist.device.type == "cuda" else []
            self.peft_model.eval()  # no dropout while generating
            try:
                with torch.random.fork_rng(devices=devices):
                    result = validator.run(self.peft_model, self.plan.tokenizer, self.dist.device)
            finally:
                self.peft_model.train()
            entry = {"step": self.global_step, "stage": stage.index + 1, "stage_name": stage.name,
                     "epoch": epoch + 1, "epoch_complete": complete, **result,
                     "seconds": round(time.monotonic() - started, 3)}
            self.evaluations = [e for e in self.evaluations if e["step"] != self.global_step] + [entry]
            self.write_metrics()
            value = result["primary_value"]
            shown = f"{value:.4f}" if isinstance(value, float) else str(value)
            self.report.notice(f"eval after {stage.name} epoch {epoch + 1} (step {self.global_step}): "
                               f"{result['primary_metric']} = {shown}, invalid {result['counts']['invalid']}"
                               f"/{result['counts']['posts']}")
        self.dist.barrier()

    def write_metrics(self) -> None:
        """``metrics.json``: the evaluations so far and the ``mentalglm evaluate`` options that reproduce them."""
        document = self.plan.validator.document(self.config.model, str(self.out / "adapter"), self.evaluations)
        write_json(self.out / "metrics.json", document)

    def save(self, position: ckpt.Position, optim: _Optimizer) -> None:
        """A checkpoint (all ranks gather their RNG states; rank 0 writes), and loss.json."""
        from mentalglm.training.curves import write_loss_json

        rng = self.dist.gather(ckpt.capture_rng(self.dist.device))
        if self.dist.is_main:
            ckpt.write_checkpoint(self.out, peft_model=self.peft_model, optimizer=optim.optimizer, position=position,
                                  rng_by_rank=rng, scheduler=optim.scheduler, scaler=optim.scaler,
                                  extra={"optimizer_stage": optim.stage, "loss": self.history,
                                         "evaluations": self.evaluations},
                                  keep=self.config.keep_checkpoints)
            write_loss_json(self.out / "loss.json", self.history, self.plan.stage_names)
        self.dist.barrier()

    # -- the end ------------------------------------------------------------------------------------
    def finish(self, result: TrainResult, started: float) -> TrainResult:
        """Write the final adapter, curves, metrics and summary (rank 0); fill in ``result``."""
        result.steps, result.evaluations = self.global_step, self.evaluations
        result.final_loss = self.history[-1]["loss"] if self.history else None
        if self.dist.is_main:
            self.save_adapter(result.adapter)
            self.write_curves()
            if self.evaluations:
                self.write_metrics()
            self.write_summary(result, started)
            loss = f"{result.final_loss:.4f}" if result.final_loss is not None else "-"
            self.report.progress(f"done: {self.global_step} steps, final loss {loss}; adapter in {result.adapter}")
        self.dist.barrier()
        return result

    def save_adapter(self, adapter: Path) -> None:
        """The final adapter, written beside its place and renamed into it."""
        import shutil

        partial = self.out / ".adapter.partial"
        shutil.rmtree(partial, ignore_errors=True)
        self.peft_model.save_pretrained(partial, safe_serialization=True)
        shutil.rmtree(adapter, ignore_errors=True)
        partial.replace(adapter)

    def write_curves(self) -> None:
        """``loss.json`` and ``loss.png``."""
        from mentalglm.training.curves import plot_loss, write_loss_json

        write_loss_json(self.out / "loss.json", self.history, self.plan.stage_names)
        plot_loss(self.out / "loss.png", self.history, self.plan.stage_names,
                  title=f"LoRA r={self.config.lora_r} on {Path(self.config.model).name}")

    def write_summary(self, result: TrainResult, started: float) -> None:
        """``train_summary.json``, written last: its presence marks the run finished."""
        stages = []
        for stage in self.plan.stages:
            losses = [s["loss"] for s in self.history if s["stage"] == stage.index + 1]
            stages.append({"name": stage.name, "steps": len(losses), "first_loss": losses[0] if losses else None,
                           "last_loss": losses[-1] if losses else None, "truncated": stage.data.truncated})
        write_json(self.out / rundir.SUMMARY, {
            "steps": self.global_step, "final_loss": result.final_loss, "stages": stages,
            "adapter": str(result.adapter), "resumed_from": result.resumed_from,
            "seconds_this_invocation": round(time.monotonic() - started, 3),
            "last_evaluation": self.evaluations[-1] if self.evaluations else None})


def _already_finished(out: Path, result: TrainResult, report: Reporter) -> TrainResult:
    summary = read_json_object(out / rundir.SUMMARY, "training summary")
    result.already_finished, result.steps = True, summary.get("steps", 0)
    result.final_loss = summary.get("final_loss")
    report.notice(f"{out}: this training run already finished ({result.steps} steps); the adapter is in "
                  f"{result.adapter}")
    return result


def _latest_checkpoint(out: Path, peft_model, report: Reporter) -> ckpt.Checkpoint | None:
    """The newest complete checkpoint, its adapter weights loaded into ``peft_model``; None for a fresh run."""
    found = ckpt.list_checkpoints(out)
    if not found:
        return None
    checkpoint = ckpt.read_checkpoint(found[-1][1])
    ckpt.load_adapter_weights(peft_model, checkpoint.path)
    report.notice(f"resuming from {checkpoint.path} (step {checkpoint.position.global_step})")
    return checkpoint


def _execute(config: TrainConfig, dist) -> TrainResult:
    """Plan, load, train, finish: one invocation of :func:`train` in this process."""
    started = time.monotonic()
    out, report = Path(config.output), Reporter(dist.is_main, config.quiet)
    plan = plan_run(config, dist, report)
    result = TrainResult(output=out, adapter=out / "adapter", truncated=plan.truncated)
    if plan.state == "done":
        return _already_finished(out, result, report)
    peft_model = build_peft_model(config, plan.precision, dist.device)
    _claim_folder(out, plan, dist)
    train_model = _wrap_for_ddp(peft_model, dist)
    # Dropout streams differ per rank (seeded apart from the adapter's initialisation).
    seed_everything(config.seed + 1 + dist.rank)
    checkpoint = _latest_checkpoint(out, peft_model, report)
    result.resumed_from = checkpoint.position.global_step if checkpoint else None
    trainer = _Trainer(config, dist, plan, peft_model, train_model, checkpoint, report)
    trainable = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    report.progress(f"{len(plan.stages)} stage(s), {plan.total_steps} steps, {trainable:,} LoRA parameters, "
                    f"{dist.device.type} {plan.precision}, {dist.world_size} process(es)")
    trainer.run()
    return trainer.finish(result, started)


def train(config: TrainConfig) -> TrainResult:
    """Run (or resume) LoRA fine-tuning as ``config`` says.

    Under ``torchrun``/``accelerate launch`` (``WORLD_SIZE`` > 1) every process calls this; they
    train DDP replicas on disjoint shards of each epoch and only rank 0 writes files.

    Args:
        config: the validated settings.

    Returns:
        What was done; ``already_finished`` when the folder held a finished run.

    Raises:
        MentalGLMError: bad data (file, line and field named), unknown names, a folder holding
            another run, a model that cannot be loaded, or a precision the device lacks.
    """
    from mentalglm.training.distributed import setup

    dist = setup(config.device)
    try:
        return _execute(config, dist)
    finally:
        dist.close()
