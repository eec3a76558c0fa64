"""What kind of model a folder holds, read from its config.json without loading weights."""

from __future__ import annotations

import json
from pathlib import Path


def is_chatglm_layout(model_dir) -> bool:
    """Whether ``model_dir`` holds a model in the original THUDM ChatGLM layout (by its config.json)."""
    try:
        config = json.loads((Path(model_dir) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    if not isinstance(config, dict):
        return False
    architectures = config.get("architectures") or []
    return config.get("model_type") == "chatglm" or any(str(a).startswith("ChatGLM") for a in architectures)
