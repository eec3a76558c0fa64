"""Checkpoints: everything a killed run needs to continue as if it had never stopped.

``DIR/checkpoints/step-N/`` holds

- ``adapter/`` — the peft adapter (``adapter_model.safetensors`` + ``adapter_config.json``),
  usable on its own;
- ``optimizer.safetensors`` — every optimizer state tensor (``state.<param>.<name>``);
- ``rng.safetensors`` — each process's torch (and CUDA) generator state;
- ``state.json`` — position (global step, stage, epoch, step in the epoch), optimizer param
  groups, LR-scheduler and grad-scaler state, Python and NumPy RNG states, the loss history
  and the evaluations so far.

Nothing is pickled: tensors go to safetensors, the rest to JSON, so loading a checkpoint
cannot execute code. A checkpoint is written into ``.step-N.partial`` and renamed when
complete; ``state.json`` is written last, so a folder without it is never used. Only the
newest ``keep`` checkpoints are kept.
"""

from __future__ import annotations

import os
import re
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from mentalglm.core.errors import MentalGLMError
from mentalglm.core.files import read_json_object, write_json

CHECKPOINTS = "checkpoints"
_STEP_DIR = re.compile(r"^step-(\d+)$")
_PARTIAL = re.compile(r"^\.step-\d+\.partial$")


@dataclass
class Position:
    """Where in the run a checkpoint was taken (all counts of completed work).

    Attributes:
        global_step: optimizer steps done over all stages.
        stage: 0-based stage being trained.
        epoch: 0-based epoch within the stage.
        step_in_epoch: optimizer steps done in this epoch (equal to the epoch's length when
            the epoch is complete).
        stage_step: optimizer steps done in this stage.
    """

    global_step: int = 0
    stage: int = 0
    epoch: int = 0
    step_in_epoch: int = 0
    stage_step: int = 0


@dataclass
class Checkpoint:
    """A checkpoint read back from disk.

    Attributes:
        path: its folder.
        position: where training stopped.
        state: the whole ``state.json`` document.
        optimizer: the optimizer ``state_dict`` (tensors from safetensors, groups from JSON).
        rng: per-rank RNG states, indexed by rank.
    """

    path: Path
    position: Position
    state: dict
    optimizer: dict
    rng: list[dict]


def checkpoints_dir(run_dir: str | Path) -> Path:
    """The folder holding a run's checkpoints."""
    return Path(run_dir) / CHECKPOINTS


def list_checkpoints(run_dir: str | Path) -> list[tuple[int, Path]]:
    """Complete checkpoints of a run as ``(step, folder)``, oldest first."""
    folder = checkpoints_dir(run_dir)
    if not folder.is_dir():
        return []
    found = []
    for entry in folder.iterdir():
        match = _STEP_DIR.match(entry.name)
        if match and (entry / "state.json").is_file():
            found.append((int(match[1]), entry))
    return sorted(found)


def remove_partial(run_dir: str | Path) -> None:
    """Delete checkpoint folders a killed run left half-written."""
    folder = checkpoints_dir(run_dir)
    if folder.is_dir():
        for entry in folder.iterdir():
            if _PARTIAL.match(entry.name):
                shutil.rmtree(entry, ignore_errors=True)


def _jsonable(value: Any) -> Any:
    """Plain JSON values from optimizer/scheduler state (tuples → lists, 0-d tensors → numbers)."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if hasattr(value, "item") and getattr(value, "ndim", 1) == 0:
        return value.item()
    raise TypeError(f"cannot store {type(value).__name__} in a checkpoint's JSON")


def optimizer_to_files(state_dict: dict) -> tuple[dict, dict]:
    """Split an optimizer ``state_dict`` into safetensors tensors and a JSON document.

    Returns:
        ``(tensors, meta)``: tensors keyed ``state.<param>.<name>``; ``meta`` with the param
        groups and any non-tensor per-parameter values.
    """
    import torch

    tensors, extra = {}, {}
    for index, values in state_dict["state"].items():
        for name, value in values.items():
            if isinstance(value, torch.Tensor):
                tensors[f"state.{index}.{name}"] = value.detach().cpu().contiguous()
            else:
                extra.setdefault(str(index), {})[name] = _jsonable(value)
    return tensors, {"param_groups": _jsonable(state_dict["param_groups"]), "extra": extra}


def optimizer_from_files(tensors: dict, meta: dict) -> dict:
    """The optimizer ``state_dict`` rebuilt from :func:`optimizer_to_files`' output."""
    state: dict[int, dict] = {}
    for key, value in tensors.items():
        _, index, name = key.split(".", 2)
        state.setdefault(int(index), {})[name] = value
    for index, values in meta.get("extra", {}).items():
        state.setdefault(int(index), {}).update(values)
    groups = []
    for group in meta["param_groups"]:
        group = dict(group)
        if isinstance(group.get("betas"), list):
            group["betas"] = tuple(group["betas"])
        groups.append(group)
    return {"state": state, "param_groups": groups}


def capture_rng(device=None) -> dict:
    """This process's RNG states: torch (and CUDA) generators as tensors, Python and NumPy as JSON.

    Returns:
        ``{"tensors": {...}, "json": {...}}``.
    """
    import random

    import numpy as np
    import torch

    tensors = {"torch": torch.get_rng_state()}
    if device is not None and getattr(device, "type", str(device)) == "cuda":
        tensors["cuda"] = torch.cuda.get_rng_state(device)
    py_version, py_state, py_gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {"tensors": tensors,
            "json": {"python": [py_version, list(py_state), py_gauss],
                     "numpy": [kind, keys.tolist(), int(pos), int(has_gauss), float(cached)]}}


def restore_rng(rng: dict, device=None) -> None:
    """Put back the states :func:`capture_rng` took."""
    import random

    import numpy as np
    import torch

    torch.set_rng_state(rng["tensors"]["torch"])
    if "cuda" in rng["tensors"] and device is not None and getattr(device, "type", str(device)) == "cuda":
        torch.cuda.set_rng_state(rng["tensors"]["cuda"], device)
    version, state, gauss = rng["json"]["python"]
    random.setstate((version, tuple(state), gauss))
    kind, keys, pos, has_gauss, cached = rng["json"]["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))


def write_checkpoint(run_dir: str | Path, *, peft_model, optimizer, position: Position, rng_by_rank: list[dict],
                     scheduler=None, scaler=None, extra: dict | None = None, keep: int = 2) -> Path:
    """Write a checkpoint atomically and prune old ones (call on the main process only).

    Args:
        run_dir: the run folder.
        peft_model: the (unwrapped) peft model whose adapter is saved.
        optimizer: its optimizer.
        position: where training stands.
        rng_by_rank: :func:`capture_rng` of every process, by rank.
        scheduler: the LR scheduler (its ``state_dict`` must be JSON-able).
        scaler: the fp16 grad scaler, if any.
        extra: more JSON state (loss history, evaluations).
        keep: how many checkpoints to keep, newest first.

    Returns:
        The checkpoint folder ``DIR/checkpoints/step-N``.
    """
    from safetensors.torch import save_file

    folder = checkpoints_dir(run_dir)
    folder.mkdir(parents=True, exist_ok=True)
    final = folder / f"step-{position.global_step}"
    partial = folder / f".step-{position.global_step}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir()
    peft_model.save_pretrained(partial / "adapter", safe_serialization=True)
    tensors, optimizer_meta = optimizer_to_files(optimizer.state_dict())
    save_file(tensors, str(partial / "optimizer.safetensors"))
    save_file({f"rank{r}.{name}": t.contiguous() for r, rng in enumerate(rng_by_rank)
               for name, t in rng["tensors"].items()}, str(partial / "rng.safetensors"))
    state = {
        "position": asdict(position),
        "optimizer": optimizer_meta,
        "scheduler": _jsonable(scheduler.state_dict()) if scheduler is not None else None,
        "scaler": _jsonable(scaler.state_dict()) if scaler is not None else None,
        "rng": [rng["json"] for rng in rng_by_rank],
        **(extra or {}),
    }
    write_json(partial / "state.json", state, indent=1)  # last: its presence marks a complete checkpoint
    if final.exists():
        shutil.rmtree(final)
    os.replace(partial, final)
    for _, old in list_checkpoints(run_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def read_checkpoint(path: str | Path) -> Checkpoint:
    """Read a checkpoint written by :func:`write_checkpoint`.

    Raises:
        MentalGLMError: a damaged checkpoint (unreadable JSON or tensors).
    """
    from safetensors.torch import load_file

    path = Path(path)
    try:
        state = read_json_object(path / "state.json", "checkpoint state")
        optimizer = optimizer_from_files(load_file(str(path / "optimizer.safetensors")), state["optimizer"])
        rng_tensors = load_file(str(path / "rng.safetensors"))
    except (MentalGLMError, OSError, ValueError, KeyError) as exc:
        raise MentalGLMError(f"{path}: damaged checkpoint ({exc}); delete it to resume from an older one") from None
    rng = []
    for rank, json_state in enumerate(state["rng"]):
        prefix = f"rank{rank}."
        rng.append({"tensors": {k[len(prefix):]: v for k, v in rng_tensors.items() if k.startswith(prefix)},
                    "json": json_state})
    return Checkpoint(path=path, position=Position(**state["position"]), state=state, optimizer=optimizer, rng=rng)


def load_adapter_weights(peft_model, checkpoint_path: str | Path) -> None:
    """Load a checkpoint's adapter weights into ``peft_model`` in place."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    weights = load_file(str(Path(checkpoint_path) / "adapter" / "adapter_model.safetensors"))
    result = set_peft_model_state_dict(peft_model, weights)
    unexpected = getattr(result, "unexpected_keys", None)
    if unexpected:
        raise MentalGLMError(f"{checkpoint_path}: adapter tensors that fit no module ({unexpected[0]}, …)")
