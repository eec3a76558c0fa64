"""Typed training settings, from a YAML/JSON config file and command-line options.

Precedence: the defaults below < the config file (``--config``) < options given on the
command line. Unknown keys are errors (``extra="forbid"``), reported on one line with the
closest valid name. Relative paths in a config file are resolved against the file's folder,
so a config works from any working directory; ``sample:NAME`` data specs are kept as they are.

Example config::

    model: glm-4-9b-chat-hf
    output: runs/mentalglm-lora
    task: depression
    lora_r: 8
    stages:
      - data: [imhi-en-train.jsonl]        # stage 1: English IMHI
        epochs: 2
      - data: [c-imhi-train.jsonl]         # stage 2: C-IMHI, same adapter
        epochs: 3
        learning_rate: 1.0e-4
"""

from __future__ import annotations

import difflib
import os
from pathlib import Path
from typing import Any, Literal, Mapping

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from mentalglm.core.errors import MentalGLMError

#: LoRA targets for GLM-4 in transformers' native layout: every linear layer of attention and MLP.
DEFAULT_TARGET_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_up_proj", "down_proj")

#: Settings that change nothing in the trained weights; a rerun may change them freely.
COSMETIC_SETTINGS = ("output", "log_every", "quiet")


def _comma_list(value: Any) -> Any:
    """Accept ``"a,b"`` as well as ``["a", "b"]`` (the command line gives strings)."""
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


class StageConfig(BaseModel):
    """One training stage: data files trained on together, with optional overrides.

    Attributes:
        data: C-IMHI record files (JSON array or JSONL) or ``sample:NAME`` specs.
        name: a label for logs and ``loss.json`` (default ``stage N``).
        epochs: epochs of this stage (overrides the run's ``epochs`` and ``max_steps``).
        max_steps: optimizer steps of this stage (overrides everything else).
        learning_rate: peak learning rate of this stage (default: the run's).
    """

    model_config = ConfigDict(extra="forbid")

    data: list[str] = Field(min_length=1)
    name: str | None = None
    epochs: int | None = Field(None, ge=1)
    max_steps: int | None = Field(None, ge=1)
    learning_rate: float | None = Field(None, gt=0)

    _split_data = field_validator("data", mode="before")(_comma_list)


def cli(group: str, metavar: str | None = None, *aliases: str) -> dict:
    """Command-line hints for a :class:`TrainConfig` field (its ``json_schema_extra``).

    ``mentalglm train`` builds one option per field (:mod:`mentalglm.cli.train`): the name,
    type, choices, default and help come from the field itself; these hints only place it.

    Args:
        group: the help section the option is listed under.
        metavar: the value's placeholder in the help (default: derived from the type).
        aliases: more option strings (``-o``, ``--lr``).
    """
    hints: dict = {"cli_group": group}
    if metavar:
        hints["cli_metavar"] = metavar
    if aliases:
        hints["cli_aliases"] = list(aliases)
    return hints


_DATA, _LORA, _OPTIM, _RUN = "model and data", "LoRA", "optimisation", "checkpoints, validation, output"


class TrainConfig(BaseModel):
    """Every setting of a LoRA fine-tuning run (what ``train_config.json`` records).

    Each field's description says what it does; it is also the help of the field's
    ``mentalglm train`` option (``--lora-r`` for ``lora_r``), which is generated from this model.
    """

    model_config = ConfigDict(extra="forbid")

    model: str = Field(description="base model folder (transformers layout, e.g. glm-4-9b-chat-hf; a ChatGLM-layout "
                                   "checkpoint needs `mentalglm convert` first, or --trust-remote-code)",
                       json_schema_extra=cli(_DATA, "BASE"))
    output: str = Field(description="run folder: adapter/, train_config.json, loss.json, loss.png, metrics.json, "
                                    "checkpoints/; rerun to resume",
                        json_schema_extra=cli(_DATA, "DIR", "-o"))
    stages: list[StageConfig] = Field(min_length=1, json_schema_extra={"cli_flag": False},
                                      description="the training stages, in order; each continues the previous "
                                                  "stage's adapter (command line: --data, --stage)")
    prompt: str = Field("glm4-chat", description="prompt style (plain for base models, or a plugin's)",
                        json_schema_extra=cli(_DATA, "STYLE"))
    system: str | None = Field(None, description="system message for chat prompt styles",
                               json_schema_extra=cli(_DATA, "TEXT"))
    end_token: str = Field("auto", description="token appended to every response and learnt: auto (the tokenizer's "
                                               "eos when the prompt style stops on it — <|endoftext|> for glm4-chat — "
                                               "else the first single-token stop string, else eos), none, or a "
                                               "token's text",
                           json_schema_extra=cli(_DATA, "TOKEN"))
    task: str | None = Field(None, description="check that every record's output states a valid answer of this task "
                                               "(needed by --eval-data)",
                             json_schema_extra=cli(_DATA, "T"))
    max_length: int = Field(2048, ge=2, description="longest sequence in tokens; longer responses are cut and "
                                                    "counted, a prompt that alone does not fit is an error",
                            json_schema_extra=cli(_DATA))
    lora_r: int = Field(8, ge=1, description="LoRA rank", json_schema_extra=cli(_LORA, "R"))
    lora_alpha: float = Field(16.0, gt=0, description="LoRA alpha; the update is scaled by alpha/r",
                              json_schema_extra=cli(_LORA, "A"))
    lora_dropout: float = Field(0.05, ge=0, lt=1, description="dropout on the LoRA input",
                                json_schema_extra=cli(_LORA, "P"))
    target_modules: list[str] = Field(default_factory=lambda: list(DEFAULT_TARGET_MODULES), min_length=1,
                                      description="linear layers to adapt",
                                      json_schema_extra=cli(_LORA, "A,B,..."))
    learning_rate: float = Field(2e-4, gt=0, description="peak AdamW learning rate",
                                 json_schema_extra=cli(_OPTIM, "LR", "--lr"))
    lr_scheduler: Literal["linear", "cosine", "constant"] = Field(
        "linear", description="decay after warm-up", json_schema_extra=cli(_OPTIM))
    warmup_ratio: float = Field(0.03, ge=0, lt=1, description="fraction of each stage's steps spent warming up "
                                                              "linearly from 0",
                                json_schema_extra=cli(_OPTIM, "F"))
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay", json_schema_extra=cli(_OPTIM, "W"))
    max_grad_norm: float = Field(1.0, ge=0, description="clip the gradient norm (0: off)",
                                 json_schema_extra=cli(_OPTIM))
    epochs: int = Field(3, ge=1, description="epochs per stage (unless the stage says otherwise)",
                        json_schema_extra=cli(_OPTIM))
    max_steps: int | None = Field(None, ge=1, description="optimizer steps per stage; wins over --epochs",
                                  json_schema_extra=cli(_OPTIM))
    batch_size: int = Field(4, ge=1, description="sequences per forward pass, per process",
                            json_schema_extra=cli(_OPTIM))
    gradient_accumulation: int = Field(1, ge=1, description="forward passes per optimizer step",
                                       json_schema_extra=cli(_OPTIM))
    seed: int = Field(42, description="seed of the LoRA initialisation, the data order and dropout",
                      json_schema_extra=cli(_OPTIM))
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto", description="auto (bf16 on a GPU that has it, else fp32), fp32, bf16 or fp16; bf16/fp16 need a "
                            "CUDA GPU", json_schema_extra=cli(_OPTIM))
    gradient_checkpointing: bool = Field(False, description="recompute activations in the backward pass (less "
                                                            "memory, ~30% slower)",
                                         json_schema_extra=cli(_OPTIM))
    device: str = Field("auto", description="auto, cpu, cuda or cuda:N (under DDP each process uses its local rank)",
                        json_schema_extra=cli(_OPTIM, "DEV"))
    trust_remote_code: bool = Field(False, description="let transformers run the model folder's own code (never "
                                                       "needed for GLM-4 in transformers layout)",
                                    json_schema_extra=cli(_OPTIM))
    save_every: int = Field(200, ge=0, description="write a checkpoint every N optimizer steps (0: none between "
                                                   "epoch ends; checkpoints are written at every epoch end anyway)",
                            json_schema_extra=cli(_RUN))
    keep_checkpoints: int = Field(2, ge=1, description="how many checkpoints to keep", json_schema_extra=cli(_RUN))
    data_mapping: dict[str, Any] | None = Field(
        None, description="how the data files are read: text_field, label_field, id_field, label_map, columns, "
                          "encoding, format (the data mapping flags, or a config file table)",
        json_schema_extra={"cli_flag": False})
    eval_data: str | None = Field(None, description="gold-labelled posts or records scored with --task's metrics "
                                                    "after every epoch (metrics.json)",
                                  json_schema_extra=cli(_RUN, "FILE"))
    eval_max_new_tokens: int = Field(256, ge=1, description="generation budget per eval post",
                                     json_schema_extra=cli(_RUN))
    eval_batch_size: int = Field(8, ge=1, description="eval posts generated together", json_schema_extra=cli(_RUN))
    log_every: int = Field(10, ge=1, description="print a progress line every N steps", json_schema_extra=cli(_RUN))
    quiet: bool = Field(False, description="no progress lines on stderr", json_schema_extra=cli(_RUN))

    _split_modules = field_validator("target_modules", mode="before")(_comma_list)

    @field_validator("device")
    @classmethod
    def _device_name(cls, value: str) -> str:
        if value in ("auto", "cpu", "cuda") or (value.startswith("cuda:") and value[5:].isdigit()):
            return value
        raise ValueError("expected auto, cpu, cuda or cuda:N")

    @model_validator(mode="after")
    def _eval_needs_task(self) -> "TrainConfig":
        if self.eval_data and not self.task:
            raise ValueError("eval_data needs task (the metrics are the task's own)")
        return self

    def stage_name(self, index: int) -> str:
        """The display name of stage ``index`` (0-based)."""
        return self.stages[index].name or f"stage {index + 1}"

    def stage_learning_rate(self, index: int) -> float:
        """The peak learning rate of stage ``index``."""
        return self.stages[index].learning_rate or self.learning_rate

    def stage_length(self, index: int, steps_per_epoch: int) -> tuple[int, int]:
        """How long stage ``index`` trains.

        Args:
            index: 0-based stage index.
            steps_per_epoch: optimizer steps in one pass over the stage's data (per process).

        Returns:
            ``(total optimizer steps, epochs started)``. A stage's own ``max_steps`` wins, then
            its own ``epochs``, then the run's ``max_steps``, then the run's ``epochs``.
        """
        stage = self.stages[index]
        if stage.max_steps is not None:
            steps = stage.max_steps
        elif stage.epochs is not None:
            steps = stage.epochs * steps_per_epoch
        elif self.max_steps is not None:
            steps = self.max_steps
        else:
            steps = self.epochs * steps_per_epoch
        return steps, -(-steps // steps_per_epoch)

    def fingerprint(self) -> dict:
        """The settings that decide the trained weights (what a resumed run must share)."""
        return self.model_dump(mode="json", exclude=set(COSMETIC_SETTINGS))


def _resolve(value: str | None, base: Path) -> str | None:
    if value is None or value.startswith("sample:") or os.path.isabs(value):
        return value
    return str(base / value)


def load_config_file(path: str | os.PathLike) -> dict:
    """Read a YAML or JSON config file into a plain dict with paths made absolute.

    Args:
        path: the file (``.yaml``, ``.yml`` or ``.json``; YAML is a superset of JSON).

    Returns:
        The mapping of settings; ``model``, ``output``, ``eval_data`` and stage ``data`` paths
        are resolved against the file's folder.

    Raises:
        MentalGLMError: a missing or unreadable file, malformed YAML, or a top level that is not
            a mapping.
    """
    import yaml

    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise MentalGLMError(f"{path}: no such config file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise MentalGLMError(f"{path}: cannot read: {exc}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        raise MentalGLMError(f"{where}: malformed YAML: {getattr(exc, 'problem', None) or exc}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise MentalGLMError(f"{path}: expected a mapping of settings, got {type(data).__name__}")
    base = path.resolve().parent
    for key in ("model", "output", "eval_data"):
        if isinstance(data.get(key), str):
            data[key] = _resolve(data[key], base)
    stages = data.get("stages")
    if isinstance(stages, list):
        for stage in stages:
            if isinstance(stage, dict) and "data" in stage:
                files = _comma_list(stage["data"])
                if isinstance(files, list):
                    stage["data"] = [_resolve(f, base) if isinstance(f, str) else f for f in files]
    return data


def _field_path(loc: tuple) -> str:
    return ".".join(str(part) for part in loc) if loc else "(settings)"


def _suggest(loc: tuple, model: type[BaseModel]) -> str:
    name = str(loc[-1]) if loc else ""
    known = StageConfig.model_fields if len(loc) > 1 and loc[0] == "stages" else model.model_fields
    close = difflib.get_close_matches(name, list(known), n=1, cutoff=0.5)
    return f" (did you mean '{close[0]}'?)" if close else ""


def build_config(settings: Mapping[str, Any], *, source: str = "settings",
                 origins: Mapping[str, str] | None = None) -> TrainConfig:
    """Validate a mapping of settings into a :class:`TrainConfig`.

    Args:
        settings: the merged settings (config file values overlaid by command-line options).
        source: how to name their origin in errors (the config file, or ``command line``).
        origins: per top-level key, a better name for it in errors (``--lora-r`` for a value
            given on the command line); such keys are reported as ``command line: --lora-r: …``.

    Returns:
        The validated config.

    Raises:
        MentalGLMError: one line naming the first invalid or unknown setting, e.g.
            ``train.yaml: setting 'lora_rr': unknown (did you mean 'lora_r'?)``.
    """
    try:
        return TrainConfig.model_validate(dict(settings))
    except ValidationError as exc:
        error = exc.errors()[0]
        loc = tuple(error.get("loc", ()))
        if error["type"] == "extra_forbidden":
            message = f"unknown{_suggest(loc, TrainConfig)}"
        elif error["type"] == "missing":
            message = "missing" + (" (give --data FILE or --stage FILE, or a stages: list)"
                                   if loc == ("stages",) else "")
        else:
            message = error["msg"].removeprefix("Value error, ")
        more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
        if not loc:
            raise MentalGLMError(f"{source}: {message}{more}") from None
        option = (origins or {}).get(str(loc[0]))
        if option:
            raise MentalGLMError(f"command line: {option}: {message}{more}") from None
        raise MentalGLMError(f"{source}: setting '{_field_path(loc)}': {message}{more}") from None
