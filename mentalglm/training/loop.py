"""The training loop: LoRA SFT over one or more stages, with checkpoints, resume, DDP and validation.

Everything that can be wrong with the input is checked before the model is loaded: the data
files (every record, against the task when one is given), the eval data, the prompt length of
every record against ``max_length``, the run folder. Then:

- the base model is loaded (fp32, or bf16/fp16 on a GPU) and wrapped with a fresh LoRA
  adapter seeded by ``seed``;
- each stage gets its own AdamW optimizer and warm-up + decay schedule, and continues the
  adapter the previous stage left (the paper's two-stage recipe: English IMHI, then C-IMHI);
- an optimizer step sums the token losses of its micro-batches and divides by the number of
  response tokens in the step over all processes, so gradient accumulation and DDP give the
  same update as one big batch in one process;
- checkpoints are written every ``save_every`` steps and at every epoch end; rerunning the same
  command continues from the newest one and, on CPU, ends with bit-identical adapter weights.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import math
import sys
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

from mentalglm.core.errors import MentalGLMError
from mentalglm.training import checkpoint as ckpt
from mentalglm.training import rundir
from mentalglm.training.config import TrainConfig
from mentalglm.training.dataset import (
    IGNORE_INDEX,
    StageData,
    collate,
    encode_stage,
    epoch_order,
    read_stage_records,
    resolve_end_token,
    step_batches,
    steps_per_epoch,
)

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


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's generators (CUDA included)."""
    import random

    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@contextlib.contextmanager
def _quiet_transformers():
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
        with _quiet_transformers():
            return AutoTokenizer.from_pretrained(model_dir, trust_remote_code=trust_remote_code)
    except (OSError, ValueError, KeyError) as exc:
        hint = ("; a ChatGLM-layout checkpoint needs `mentalglm convert` first (or --trust-remote-code)"
                if not trust_remote_code else "")
        raise MentalGLMError(f"{model_dir}: cannot load the tokenizer: {str(exc).splitlines()[0]}{hint}") from None


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
        with _quiet_transformers():
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


class _Reporter:
    """Progress and notices on stderr, from rank 0 only."""

    def __init__(self, main: bool, quiet: bool):
        self.main, self.quiet = main, quiet

    def progress(self, message: str) -> None:
        if self.main and not self.quiet:
            print(f"mentalglm train: {message}", file=sys.stderr, flush=True)

    def notice(self, message: str) -> None:
        if self.main:
            print(f"mentalglm train: {message}", file=sys.stderr, flush=True)


class _Run:
    """One invocation of :func:`train` (state shared by the phases below)."""

    def __init__(self, config: TrainConfig, dist):
        self.config, self.dist = config, dist
        self.out = Path(config.output)
        self.report = _Reporter(dist.is_main, config.quiet)
        self.history: list[dict] = []
        self.evaluations: list[dict] = []

    # -- before the model: check everything ------------------------------------------------
    def prepare(self) -> str:
        from mentalglm.core.plugins import get_plugin_manager
        from mentalglm.training.validation import load_eval_set

        config = self.config
        plugins = get_plugin_manager()
        self.style = plugins.prompt(config.prompt)
        self.task = plugins.task(config.task) if config.task else None
        if config.system and not self.style.system_template:
            raise MentalGLMError(f"prompt style '{self.style.name}' has no system turn; drop --system")
        base = rundir.base_model_info(config.model)
        files = [read_stage_records(stage.data, self.task) for stage in config.stages]
        self.evalset = (load_eval_set(config.eval_data, self.task, self.style, config.system)
                        if config.eval_data else None)
        self.precision = resolve_precision(config.precision, self.dist.device)
        self.tokenizer = load_tokenizer(config.model, config.trust_remote_code)
        self.end_token = resolve_end_token(self.tokenizer, self.style, config.end_token)
        # Padding is masked out of attention and loss, so any id will do; prefer the tokenizer's own.
        candidates = (self.tokenizer.pad_token_id, self.end_token.id if self.end_token else None,
                      self.tokenizer.eos_token_id, 0)
        self.pad_id = next(i for i in candidates if i is not None)
        self.stages: list[StageData] = [
            encode_stage(self.tokenizer, self.style, f, end_token=self.end_token, max_length=config.max_length,
                         system=config.system) for f in files]
        self.plan = []  # per stage: (steps per epoch, total steps, epochs)
        stage_docs = []
        for index, data in enumerate(self.stages):
            per_epoch = steps_per_epoch(len(data.examples), config.batch_size, config.gradient_accumulation,
                                        self.dist.world_size)
            total, epochs = config.stage_length(index, per_epoch)
            self.plan.append((per_epoch, total, epochs))
            stage = config.stages[index]
            stage_docs.append({"name": config.stage_name(index), "files": [f.to_dict() for f in data.files],
                               "examples": len(data.examples), "truncated": data.truncated,
                               "steps_per_epoch": per_epoch, "steps": total, "epochs": epochs,
                               "learning_rate": config.stage_learning_rate(index),
                               "max_steps": stage.max_steps})
            if data.truncated:
                self.report.notice(f"{config.stage_name(index)}: {data.truncated} of {len(data.examples)} records are "
                                   f"longer than --max-length {config.max_length} tokens; their responses were cut "
                                   "(and their end token is not learnt)")
        resolved = {"precision": self.precision, "device": self.dist.device.type,
                    "world_size": self.dist.world_size,
                    "end_token": {"text": self.end_token.text, "id": self.end_token.id, "reason": self.end_token.reason}
                    if self.end_token else None}
        self.manifest = rundir.build_manifest(config, base_model=base, stages=stage_docs,
                                              evaluation=self.evalset.to_dict() if self.evalset else None,
                                              resolved=resolved)
        state = rundir.run_state(self.out, self.manifest)
        self.dist.barrier()  # every rank has read the folder before rank 0 writes to it
        return state

    def claim_folder(self, state: str) -> None:
        """Write ``train_config.json`` for a new run (once the model has loaded, so a model that
        fails to load leaves no half-started run behind) and clear half-written checkpoints."""
        if self.dist.is_main:
            if state == "new":
                try:
                    self.out.mkdir(parents=True, exist_ok=True)
                    rundir.write_json_atomic(self.out / rundir.TRAIN_CONFIG, self.manifest)
                except OSError as exc:
                    raise MentalGLMError(f"{self.out}: cannot write the run folder: {exc.strerror or exc}") from None
            ckpt.remove_partial(self.out)
        self.dist.barrier()

    # -- pieces of the loop ------------------------------------------------------------------
    def autocast(self):
        import torch

        if self.precision == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.dist.device.type, dtype=getattr(torch, _DTYPES[self.precision]))

    def new_optimizer(self, stage: int):
        import torch
        from transformers import get_scheduler

        params = [p for p in self.peft_model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=self.config.stage_learning_rate(stage),
                                      weight_decay=self.config.weight_decay)
        total = self.plan[stage][1]
        scheduler = get_scheduler(_SCHEDULERS[self.config.lr_scheduler], optimizer,
                                  num_warmup_steps=math.ceil(self.config.warmup_ratio * total),
                                  num_training_steps=total)
        scaler = torch.amp.GradScaler("cuda") if self.precision == "fp16" else None
        return optimizer, scheduler, scaler

    def step(self, micro_batches: list[list[int]], examples, optimizer, scheduler, scaler) -> dict:
        """One optimizer step over its micro-batches; returns loss, tokens, lr and grad norm."""
        import torch
        import torch.nn.functional as F

        device = self.dist.device
        self.train_model.train()
        batches = [collate([examples[i] for i in batch], self.pad_id) for batch in micro_batches]
        tokens = sum(int((b["labels"][:, 1:] != IGNORE_INDEX).sum()) for b in batches)
        # Normalise by the response tokens of the whole step on all processes; DDP averages
        # gradients over processes, hence the world-size factor. The update then equals a
        # single process training the same examples in one batch.
        all_tokens = self.dist.sum([float(tokens)])[0]
        scale = self.dist.world_size / max(all_tokens, 1.0)
        loss_sum = 0.0
        for index, batch in enumerate(batches):
            last = index == len(batches) - 1
            sync = (self.train_model.no_sync() if self.dist.distributed and not last else contextlib.nullcontext())
            with sync:
                with self.autocast():
                    logits = self.train_model(input_ids=batch["input_ids"].to(device),
                                              attention_mask=batch["attention_mask"].to(device),
                                              use_cache=False).logits
                labels = batch["labels"][:, 1:].to(device)
                mask = labels != IGNORE_INDEX
                # Only the response positions are upcast: the full-vocabulary fp32 logits of a
                # whole batch would dwarf the model's own activations.
                summed = F.cross_entropy(logits[:, :-1][mask].float(), labels[mask], reduction="sum")
                loss = summed * scale
                (scaler.scale(loss) if scaler is not None else loss).backward()
                loss_sum += float(summed.detach())
        params = [p for p in self.peft_model.parameters() if p.requires_grad]
        if scaler is not None:
            scaler.unscale_(optimizer)
        limit = self.config.max_grad_norm if self.config.max_grad_norm > 0 else float("inf")
        grad_norm = float(torch.nn.utils.clip_grad_norm_(params, limit))
        lr = optimizer.param_groups[0]["lr"]
        if scaler is not None:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        total_loss = self.dist.sum([loss_sum])[0]
        return {"loss": total_loss / max(all_tokens, 1.0), "tokens": int(all_tokens), "lr": lr,
                "grad_norm": grad_norm}

    def evaluate(self, stage: int, epoch: int, complete: bool, global_step: int) -> None:
        """Score the adapter on the eval data (rank 0), without disturbing the training RNG streams."""
        import torch

        from mentalglm.training.validation import generate_greedy, score

        if self.evalset is None:
            return
        if self.dist.is_main:
            started = time.monotonic()
            single = [self.tokenizer(s, add_special_tokens=False).input_ids for s in self.style.stop]
            stop_ids = sorted({ids[0] for ids in single if len(ids) == 1} |
                              ({self.end_token.id} if self.end_token else set()))
            devices = [self.dist.device] if self.dist.device.type == "cuda" else []
            self.peft_model.eval()
            with torch.random.fork_rng(devices=devices):
                outputs = generate_greedy(self.peft_model, self.tokenizer, self.evalset.prompts,
                                          device=self.dist.device, max_new_tokens=self.config.eval_max_new_tokens,
                                          batch_size=self.config.eval_batch_size, stop_ids=stop_ids,
                                          stop_strings=self.style.stop, pad_id=self.pad_id, autocast=self.autocast)
            self.peft_model.train()
            result = score(self.task, self.evalset.golds, outputs)
            entry = {"step": global_step, "stage": stage + 1, "stage_name": self.config.stage_name(stage),
                     "epoch": epoch + 1, "epoch_complete": complete, **result,
                     "seconds": round(time.monotonic() - started, 3)}
            self.evaluations = [e for e in self.evaluations if e["step"] != global_step] + [entry]
            self.write_metrics()
            value = result["primary_value"]
            shown = f"{value:.4f}" if isinstance(value, float) else str(value)
            self.report.notice(f"eval after {entry['stage_name']} epoch {epoch + 1} (step {global_step}): "
                               f"{result['primary_metric']} = {shown}, invalid {result['counts']['invalid']}"
                               f"/{result['counts']['posts']}")
        self.dist.barrier()

    def write_metrics(self) -> None:
        rundir.write_json_atomic(self.out / "metrics.json", {
            "task": self.task.name, "eval_data": self.evalset.spec, "primary_metric": self.task.primary_metric,
            "decoding": {"greedy": True, "max_new_tokens": self.config.eval_max_new_tokens, "constrained": False},
            "evaluations": self.evaluations})

    def stage_names(self) -> list[str]:
        return [self.config.stage_name(i) for i in range(len(self.config.stages))]

    def save(self, position: ckpt.Position, optimizer, scheduler, scaler, optimizer_stage: int) -> None:
        """A checkpoint (all ranks gather their RNG states; rank 0 writes), and loss.json."""
        from mentalglm.training.curves import write_loss_json

        rng = self.dist.gather(ckpt.capture_rng(self.dist.device))
        if self.dist.is_main:
            ckpt.write_checkpoint(self.out, peft_model=self.peft_model, optimizer=optimizer, position=position,
                                  rng_by_rank=rng, scheduler=scheduler, scaler=scaler,
                                  extra={"optimizer_stage": optimizer_stage, "loss": self.history,
                                         "evaluations": self.evaluations},
                                  keep=self.config.keep_checkpoints)
            write_loss_json(self.out / "loss.json", self.history, self.stage_names())
        self.dist.barrier()

    # -- the run -----------------------------------------------------------------------------
    def execute(self) -> TrainResult:
        started = time.monotonic()
        state = self.prepare()
        truncated = sum(s.truncated for s in self.stages)
        result = TrainResult(output=self.out, adapter=self.out / "adapter", truncated=truncated)
        if state == "done":
            summary = json.loads((self.out / rundir.SUMMARY).read_text(encoding="utf-8"))
            result.already_finished, result.steps = True, summary.get("steps", 0)
            result.final_loss = summary.get("final_loss")
            self.report.notice(f"{self.out}: this training run already finished ({result.steps} steps); "
                               f"the adapter is in {result.adapter}")
            return result

        self.peft_model = build_peft_model(self.config, self.precision, self.dist.device)
        self.claim_folder(state)
        self.train_model = self.peft_model
        if self.dist.distributed:
            from torch.nn.parallel import DistributedDataParallel

            ids = [self.dist.device.index] if self.dist.device.type == "cuda" else None
            self.train_model = DistributedDataParallel(self.peft_model, device_ids=ids)
        # Dropout streams differ per rank (seeded apart from the adapter's initialisation).
        seed_everything(self.config.seed + 1 + self.dist.rank)

        position, checkpoint = ckpt.Position(), None
        found = ckpt.list_checkpoints(self.out)
        if found:
            checkpoint = ckpt.read_checkpoint(found[-1][1])
            ckpt.load_adapter_weights(self.peft_model, checkpoint.path)
            position = checkpoint.position
            self.history = list(checkpoint.state.get("loss", []))
            self.evaluations = list(checkpoint.state.get("evaluations", []))
            result.resumed_from = position.global_step
            self.report.notice(f"resuming from {checkpoint.path} (step {position.global_step})")

        total_steps = sum(total for _, total, _ in self.plan)
        trainable = sum(p.numel() for p in self.peft_model.parameters() if p.requires_grad)
        self.report.progress(f"{len(self.stages)} stage(s), {total_steps} steps, {trainable:,} LoRA parameters, "
                             f"{self.dist.device.type} {self.precision}, {self.dist.world_size} process(es)")
        global_step = position.global_step
        for stage in range(position.stage, len(self.stages)):
            examples = self.stages[stage].examples
            per_epoch, total, epochs = self.plan[stage]
            optimizer, scheduler, scaler = self.new_optimizer(stage)
            here = checkpoint is not None and stage == position.stage
            if here and checkpoint.state.get("optimizer_stage") == stage:
                optimizer.load_state_dict(checkpoint.optimizer)
                scheduler.load_state_dict(checkpoint.state["scheduler"])
                if scaler is not None and checkpoint.state.get("scaler"):
                    scaler.load_state_dict(checkpoint.state["scaler"])
            if here:
                # After the optimizer and model are built: those consumed random numbers too.
                ckpt.restore_rng(checkpoint.rng[self.dist.rank], self.dist.device)
            stage_step = position.stage_step if here else 0
            first_epoch = position.epoch if here else 0
            for epoch in range(first_epoch, epochs):
                order = epoch_order(len(examples), seed=self.config.seed, stage=stage, epoch=epoch,
                                    world_size=self.dist.world_size, rank=self.dist.rank)
                steps = step_batches(order, self.config.batch_size, self.config.gradient_accumulation)
                first = position.step_in_epoch if here and epoch == first_epoch else 0
                for index in range(first, len(steps)):
                    if stage_step >= total:
                        break
                    stats = self.step(steps[index], examples, optimizer, scheduler, scaler)
                    global_step += 1
                    stage_step += 1
                    self.history.append({"step": global_step, "stage": stage + 1,
                                         "stage_name": self.config.stage_name(stage), "epoch": epoch + 1,
                                         "loss": stats["loss"], "lr": stats["lr"], "grad_norm": stats["grad_norm"],
                                         "tokens": stats["tokens"]})
                    if global_step % self.config.log_every == 0 or stage_step == total:
                        self.report.progress(f"step {global_step}/{total_steps} {self.config.stage_name(stage)} "
                                             f"epoch {epoch + 1}/{epochs} loss {stats['loss']:.4f} "
                                             f"lr {stats['lr']:.2e}")
                    ends_epoch = index == len(steps) - 1 or stage_step >= total
                    if self.config.save_every and global_step % self.config.save_every == 0 and not ends_epoch:
                        self.save(ckpt.Position(global_step, stage, epoch, index + 1, stage_step),
                                  optimizer, scheduler, scaler, stage)
                stage_done = stage_step >= total
                self.evaluate(stage, epoch, complete=not stage_done or stage_step == epochs * per_epoch,
                              global_step=global_step)
                # The position names the next thing to do, so a resumed run neither repeats
                # this epoch's evaluation nor reuses this stage's optimizer in the next stage.
                following = (ckpt.Position(global_step, stage + 1, 0, 0, 0) if stage_done
                             else ckpt.Position(global_step, stage, epoch + 1, 0, stage_step))
                self.save(following, optimizer, scheduler, scaler, stage)
                if stage_done:
                    break
            checkpoint = None
        return self.finish(result, global_step, started)

    def finish(self, result: TrainResult, global_step: int, started: float) -> TrainResult:
        import shutil

        from mentalglm.training.curves import plot_loss, write_loss_json

        result.steps, result.evaluations = global_step, self.evaluations
        result.final_loss = self.history[-1]["loss"] if self.history else None
        if self.dist.is_main:
            partial = self.out / ".adapter.partial"
            shutil.rmtree(partial, ignore_errors=True)
            self.peft_model.save_pretrained(partial, safe_serialization=True)
            shutil.rmtree(result.adapter, ignore_errors=True)
            partial.replace(result.adapter)
            write_loss_json(self.out / "loss.json", self.history, self.stage_names())
            plot_loss(self.out / "loss.png", self.history, self.stage_names(),
                      title=f"LoRA r={self.config.lora_r} on {Path(self.config.model).name}")
            if self.evaluations:
                self.write_metrics()
            stages = []
            for index, name in enumerate(self.stage_names(), 1):
                losses = [s["loss"] for s in self.history if s["stage"] == index]
                stages.append({"name": name, "steps": len(losses), "first_loss": losses[0] if losses else None,
                               "last_loss": losses[-1] if losses else None,
                               "truncated": self.stages[index - 1].truncated})
            rundir.write_json_atomic(self.out / rundir.SUMMARY, {
                "steps": global_step, "final_loss": result.final_loss, "stages": stages,
                "adapter": str(result.adapter), "resumed_from": result.resumed_from,
                "seconds_this_invocation": round(time.monotonic() - started, 3),
                "last_evaluation": self.evaluations[-1] if self.evaluations else None})
            loss = f"{result.final_loss:.4f}" if result.final_loss is not None else "-"
            self.report.progress(f"done: {global_step} steps, final loss {loss}; adapter in {result.adapter}")
        self.dist.barrier()
        return result


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
        return _Run(config, dist).execute()
    finally:
        dist.close()
