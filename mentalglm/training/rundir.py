"""The run folder: ``train_config.json``, refusing to mix runs, and the finished marker.

``train_config.json`` records the full resolved configuration, the base model, every data file
with its SHA-256, the end token, the device layout and package versions. Rerunning a command
on the same folder compares the settings that decide the weights (everything except the
output path, logging and package versions): the same → resume, different → refused with the
names of what changed. ``train_summary.json`` is written after the final adapter, so its
presence means the run is finished.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

from mentalglm.core.errors import MentalGLMError
from mentalglm.core.files import read_json_object

TRAIN_CONFIG = "train_config.json"
SUMMARY = "train_summary.json"
FORMAT = "mentalglm-train/1"

#: Folders and files a run writes; any other content means the folder is not a run of ours.
RUN_ENTRIES = {TRAIN_CONFIG, SUMMARY, "checkpoints", "adapter", "loss.json", "loss.png", "metrics.json"}


def identity(manifest: dict) -> dict:
    """The parts of a manifest two runs must share to be one run, by display name."""
    from mentalglm.training.config import COSMETIC_SETTINGS

    settings = {k: v for k, v in manifest["settings"].items() if k not in COSMETIC_SETTINGS and k != "stages"}
    parts = {**settings, **{f"resolved {k}": v for k, v in manifest["resolved"].items()}}
    parts["base model"] = manifest["base_model"]
    for index, stage in enumerate(manifest["data"]["stages"], 1):
        parts[f"stage {index}"] = {k: stage[k] for k in ("name", "epochs", "max_steps", "learning_rate")}
        parts[f"stage {index} data"] = [(f["path"], f["sha256"]) for f in stage["files"]]
    parts["stages"] = len(manifest["data"]["stages"])
    evaluation = manifest["data"].get("eval")
    parts["eval data"] = (evaluation["path"], evaluation["sha256"]) if evaluation else None
    return json.loads(json.dumps(parts))  # tuples and lists compare alike after a JSON round trip


def run_state(run_dir: str | Path, manifest: dict) -> str:
    """Whether ``run_dir`` is a new run, one to resume, or one already finished.

    Args:
        run_dir: the output folder.
        manifest: the manifest this invocation would write.

    Returns:
        ``"new"``, ``"resume"`` or ``"done"``.

    Raises:
        MentalGLMError: the folder holds other files, or a run with other settings (the
            message names what differs).
    """
    folder = Path(run_dir)
    if folder.exists() and not folder.is_dir():
        raise MentalGLMError(f"{folder}: exists and is not a folder")
    path = folder / TRAIN_CONFIG
    if not path.exists():
        stray = sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []
        if stray:
            raise MentalGLMError(f"{folder}: not empty and not a training run ({', '.join(stray[:3])}); "
                                 "use an empty or new --output folder")
        return "new"
    try:
        old = identity(read_json_object(path, "training config"))
    except (MentalGLMError, KeyError, TypeError):
        raise MentalGLMError(f"{path}: unreadable; delete {folder} to start over") from None
    new = identity(manifest)
    changed = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    if changed:
        raise MentalGLMError(f"{folder} holds a training run with other settings ({', '.join(changed)}); "
                             "use another --output or delete it")
    return "done" if (folder / SUMMARY).exists() else "resume"


def base_model_info(model_dir: str | Path) -> dict:
    """The base model as recorded: absolute path, architectures and the SHA-256 of its config.json.

    Raises:
        MentalGLMError: no such folder, or no ``config.json`` in it.
    """
    from mentalglm.core.files import file_sha256

    folder = Path(model_dir)
    config = folder / "config.json"
    if not folder.is_dir():
        raise MentalGLMError(f"{folder}: no such model folder")
    if not config.is_file():
        raise MentalGLMError(f"{folder}: no config.json; is it a transformers model folder?")
    architectures = read_json_object(config, "model config").get("architectures") or []
    return {"path": str(folder.resolve()), "architectures": architectures, "config_sha256": file_sha256(config)}


def build_manifest(config, *, base_model: dict, stages: list[dict], evaluation: dict | None,
                   resolved: dict) -> dict:
    """The ``train_config.json`` document.

    Args:
        config: the :class:`~mentalglm.training.config.TrainConfig`.
        base_model: :func:`base_model_info`.
        stages: per stage: name, files (``DataFile.to_dict()``), examples, truncated,
            steps_per_epoch, steps, epochs, learning_rate, max_steps.
        evaluation: the eval data file (path, sha256, posts) or None.
        resolved: what ``auto`` settings became (precision, device type, world size, end token).

    Returns:
        The manifest (``format``, ``settings``, ``resolved``, ``base_model``, ``data``,
        ``versions``, ``created``).
    """
    from mentalglm.core.provenance import package_versions

    return {
        "format": FORMAT,
        "settings": config.model_dump(mode="json"),
        "resolved": resolved,
        "base_model": base_model,
        "data": {"stages": stages, "eval": evaluation},
        "versions": package_versions(),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
