"""The pluggy hook specifications: the whole plugin contract of mentalglm.

A plugin is a module or object with functions decorated by :data:`hookimpl` whose names are
the hooks below. Registration hooks receive a ``register`` callback so one plugin can add many
items while the core checks names and duplicates in one place.
"""

from __future__ import annotations

import pluggy

PROJECT_NAME = "mentalglm"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
#: Decorator for plugin functions implementing a hook: ``@mentalglm.hookimpl``.
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)


@hookspec
def register_tasks(register):
    """Register tasks: call ``register(task)`` with a Task object or a path to a task file."""


@hookspec
def register_prompts(register):
    """Register prompt styles: call ``register(prompt_style)`` with a PromptStyle object."""


@hookspec
def register_backends(register):
    """Register backends: call ``register(name, target)`` with a Backend class or a lazy "module:Class" string."""


@hookspec
def on_prediction(prediction, task):
    """Observe each finished Prediction (for example, route high-risk posts to a human reviewer)."""
