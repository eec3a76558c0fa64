"""A third-party mentalglm plugin: registers the ``loneliness`` task from a YAML file."""

from pathlib import Path

import mentalglm

TASK_FILE = Path(__file__).with_name("loneliness.yaml")


@mentalglm.hookimpl
def register_tasks(register):
    """Register the loneliness task (a data file; no Python logic needed)."""
    register(TASK_FILE)
