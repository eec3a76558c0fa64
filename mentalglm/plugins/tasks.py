"""Built-in C-IMHI tasks, declared as data files in ``task_files/``."""

from __future__ import annotations

from pathlib import Path

from mentalglm.core.hookspecs import hookimpl

TASK_FILES = Path(__file__).with_name("task_files")


@hookimpl
def register_tasks(register):
    """Register depression, suicide-risk, cognitive-distortion and cognitive-pathway."""
    for path in sorted(TASK_FILES.glob("*.yaml")):
        register(path)
