"""The plugin manager: built-in plugins plus third-party ones from entry points (group ``mentalglm``).

Built-in tasks, prompt styles and backends are registered through the same hooks as
third-party ones. A third-party plugin that fails to import, or whose hook raises, is skipped
with a warning naming it (``MENTALGLM_STRICT_PLUGINS=1`` re-raises instead), so one broken
package cannot take the CLI down. Two plugins registering the same name is a *conflict*:
``mentalglm plugins`` reports it, and only using that name is refused (naming both plugins).
``MENTALGLM_LOAD_PLUGINS`` restricts which third-party plugins load: a comma-separated list of
entry-point names, or empty for none (the tests use it).
"""

from __future__ import annotations

import importlib
import os
import re
import warnings
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, Callable

import pluggy

from mentalglm.core import hookspecs
from mentalglm.core.errors import MentalGLMError, PluginError, UnknownNameError
from mentalglm.core.prompt import PromptStyle
from mentalglm.core.task import Task

#: Modules registered as built-in plugins, under these plugin names.
BUILTIN_PLUGINS = {
    "mentalglm.tasks": "mentalglm.plugins.tasks",
    "mentalglm.prompts": "mentalglm.plugins.prompts",
    "mentalglm.backends": "mentalglm.plugins.backends",
}
ENTRY_POINT_GROUP = "mentalglm"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


class PluginWarning(UserWarning):
    """A third-party plugin was skipped because it failed to load or to register."""


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


@dataclass
class Provided:
    """What one plugin provides, for ``mentalglm plugins``."""

    name: str
    version: str | None = None
    builtin: bool = False
    hooks: list[str] = field(default_factory=list)
    tasks: list[str] = field(default_factory=list)
    prompts: list[str] = field(default_factory=list)
    backends: list[str] = field(default_factory=list)


@dataclass
class BackendEntry:
    """A registered backend: a class, or a lazy ``"module:Class"`` target imported on first use."""

    name: str
    target: Any
    plugin: str

    def load(self):
        """The backend class (importing its module if the target is a string)."""
        if isinstance(self.target, str):
            module_name, _, attribute = self.target.partition(":")
            try:
                module = importlib.import_module(module_name)
                self.target = getattr(module, attribute)
            except (ImportError, AttributeError) as exc:
                raise MentalGLMError(f"backend '{self.name}' (plugin {self.plugin}) cannot be loaded: {exc}") from None
        return self.target


class PluginManager:
    """Finds tasks, prompt styles and backends from built-in and third-party plugins.

    Args:
        load_entry_points: load installed third-party plugins (subject to ``MENTALGLM_LOAD_PLUGINS``).
        strict: re-raise plugin failures; defaults to ``MENTALGLM_STRICT_PLUGINS``.

    Example:
        >>> pm = PluginManager()
        >>> pm.task("depression").kind
        'single-label'
    """

    def __init__(self, load_entry_points: bool = True, strict: bool | None = None):
        self.strict = _env_flag("MENTALGLM_STRICT_PLUGINS") if strict is None else strict
        self.pm = pluggy.PluginManager(hookspecs.PROJECT_NAME)
        self.pm.add_hookspecs(hookspecs)
        self.failures: list[tuple[str, str]] = []
        self._versions: dict[str, str] = {}
        self._builtin: set[str] = set()
        self._cache: dict[str, dict] | None = None
        #: (kind, name) → the plugins that all registered it; such a name cannot be used.
        self.conflicts: dict[tuple[str, str], list[str]] = {}
        for name, module in BUILTIN_PLUGINS.items():
            self.pm.register(importlib.import_module(module), name=name)
            self._builtin.add(name)
        if load_entry_points:
            self._load_entry_points()

    # -- registration ------------------------------------------------------------------------
    def _fail(self, plugin: str, what: str, exc: BaseException) -> None:
        message = f"plugin '{plugin}' {what}: {type(exc).__name__}: {exc}"
        if self.strict or plugin in self._builtin:
            raise PluginError(message) from exc
        self.failures.append((plugin, message))
        warnings.warn(f"mentalglm: {message}; skipped (set MENTALGLM_STRICT_PLUGINS=1 to raise)",
                      PluginWarning, stacklevel=3)

    def _load_entry_points(self) -> None:
        allowed = os.environ.get("MENTALGLM_LOAD_PLUGINS")
        allowed_names = None if allowed is None else {n.strip() for n in allowed.split(",") if n.strip()}
        for entry_point in metadata.entry_points(group=ENTRY_POINT_GROUP):
            if allowed_names is not None and entry_point.name not in allowed_names:
                continue
            if self.pm.has_plugin(entry_point.name):
                continue
            try:
                plugin = entry_point.load()
                self.pm.register(plugin, name=entry_point.name)
            except Exception as exc:  # a broken third-party package must not take the CLI down
                self._fail(entry_point.name, "failed to load", exc)
                continue
            dist = getattr(entry_point, "dist", None)
            if dist is not None:
                self._versions[entry_point.name] = dist.version

    def register(self, plugin: object, name: str | None = None) -> str:
        """Register a plugin object or module (tests and notebooks); returns its name."""
        registered = self.pm.register(plugin, name=name)
        if registered is None:
            raise PluginError(f"plugin '{name or plugin}' is already registered")
        self._forget()
        return registered

    def unregister(self, name: str) -> None:
        """Remove a plugin registered under ``name``."""
        self.pm.unregister(name=name)
        self._forget()

    def _forget(self) -> None:
        self._cache = None
        self.conflicts = {}

    @property
    def hook(self):
        """The pluggy hook relay."""
        return self.pm.hook

    def notify_prediction(self, prediction, task) -> None:
        """Call every plugin's ``on_prediction``, each on its own: one that raises is warned about
        (by name) and the others still run; in strict mode the error propagates."""
        for impl in self.pm.hook.on_prediction.get_hookimpls():
            try:
                impl.function(prediction=prediction, task=task)
            except Exception as exc:  # a broken reviewer hook must not stop or lose the analysis
                self._fail(impl.plugin_name, "failed in on_prediction", exc)

    # -- collection --------------------------------------------------------------------------
    def _collect(self) -> dict[str, dict]:
        if self._cache is not None:
            return self._cache
        tables: dict[str, dict] = {"tasks": {}, "prompts": {}, "backends": {}}
        collectors: dict[str, Callable] = {
            "tasks": self._task_item, "prompts": self._prompt_item, "backends": self._backend_item}
        for kind, make in collectors.items():
            caller = getattr(self.pm.hook, f"register_{kind}")
            for impl in caller.get_hookimpls():  # in registration order: built-ins first
                plugin = impl.plugin_name
                staged: dict[str, tuple[str, Any]] = {}

                def register(*args, _make=make, _plugin=plugin, _staged=staged, _kind=kind, **kwargs):
                    name, item = _make(_plugin, *args, **kwargs)
                    if name in _staged:
                        raise PluginError(f"plugin '{_plugin}' registers {_kind[:-1]} '{name}' twice")
                    _staged[name] = (_plugin, item)

                try:
                    impl.function(register=register)
                except Exception as exc:  # includes bad registrations: skip this plugin's items
                    self._fail(plugin, f"failed in register_{kind}", exc)
                    continue
                for name, (owner, item) in staged.items():
                    if name in tables[kind]:
                        owners = self.conflicts.setdefault((kind, name), [tables[kind][name][0]])
                        owners.append(owner)
                        continue
                    tables[kind][name] = (owner, item)
        self._cache = tables
        return tables

    def conflict_messages(self) -> list[str]:
        """One line per name registered by more than one plugin."""
        self._collect()
        return [f"{kind[:-1]} '{name}' is registered by " + " and ".join(f"plugin '{o}'" for o in owners)
                for (kind, name), owners in self.conflicts.items()]

    @staticmethod
    def _task_item(plugin: str, task: Task | str | os.PathLike) -> tuple[str, Task]:
        if isinstance(task, (str, os.PathLike)):
            from mentalglm.core.taskfile import load_task_file

            task = load_task_file(Path(task))
        if not isinstance(task, Task):
            raise PluginError(f"plugin '{plugin}' registered {task!r} as a task; expected a Task or a task file path")
        return task.name, task

    @staticmethod
    def _prompt_item(plugin: str, prompt: PromptStyle) -> tuple[str, PromptStyle]:
        if not isinstance(prompt, PromptStyle):
            raise PluginError(f"plugin '{plugin}' registered {prompt!r} as a prompt style; expected a PromptStyle")
        return prompt.name, prompt

    @staticmethod
    def _backend_item(plugin: str, name: str, target: Any) -> tuple[str, BackendEntry]:
        if not isinstance(name, str) or not _NAME.match(name):
            raise PluginError(f"plugin '{plugin}' registered a backend with invalid name {name!r}")
        if isinstance(target, str) and ":" not in target:
            raise PluginError(f"plugin '{plugin}': backend '{name}' target {target!r} is not 'module:Class'")
        return name, BackendEntry(name, target, plugin)

    # -- lookup ------------------------------------------------------------------------------
    def tasks(self) -> dict[str, Task]:
        """All tasks by name."""
        return {name: item for name, (_, item) in self._collect()["tasks"].items()}

    def prompts(self) -> dict[str, PromptStyle]:
        """All prompt styles by name."""
        return {name: item for name, (_, item) in self._collect()["prompts"].items()}

    def backends(self) -> dict[str, BackendEntry]:
        """All backend entries by name (classes are not imported until :meth:`backend_class`)."""
        return {name: item for name, (_, item) in self._collect()["backends"].items()}

    def task(self, name: str | os.PathLike) -> Task:
        """The task called ``name``, or the task defined in the file ``name`` (``.yaml``, ``.yml``, ``.toml``).

        A path lets a researcher try a task without writing a plugin (lm-eval's ``--include_path``).

        Raises:
            UnknownNameError: no such task (the message lists those that exist).
            TaskFileError: the file is not a valid task definition.
        """
        if is_task_file(name):
            from mentalglm.core.taskfile import load_task_file

            return load_task_file(Path(name))
        return self._lookup("tasks", "task", str(name))

    def prompt(self, name: str) -> PromptStyle:
        """The prompt style called ``name``; raises UnknownNameError listing those that exist."""
        return self._lookup("prompts", "prompt style", name)

    def backend_class(self, name: str):
        """The backend class called ``name``, imported now; raises UnknownNameError if unknown."""
        return self._lookup("backends", "backend", name).load()

    def _lookup(self, table: str, kind: str, name: str):
        items = self._collect()[table]
        owners = self.conflicts.get((table, name))
        if owners:
            raise PluginError(f"{kind} '{name}' is registered by " + " and ".join(f"plugin '{o}'" for o in owners)
                              + "; uninstall one, or choose plugins with MENTALGLM_LOAD_PLUGINS")
        if name not in items:
            raise UnknownNameError(kind, name, items)
        return items[name][1]

    def providers(self) -> list[Provided]:
        """Which plugin provides which task, prompt style and backend (and which hooks it implements)."""
        tables = self._collect()
        result = []
        for name, plugin in self.pm.list_name_plugin():
            if name is None:
                continue
            info = Provided(name=name, version=self._versions.get(name), builtin=name in self._builtin,
                            hooks=sorted(caller.name for caller in self.pm.get_hookcallers(plugin) or []))
            for kind in ("tasks", "prompts", "backends"):
                getattr(info, kind).extend(n for n, (owner, _) in tables[kind].items() if owner == name)
            result.append(info)
        return result


#: File suffixes that make a ``--task`` value a task file rather than a task name.
TASK_FILE_SUFFIXES = (".yaml", ".yml", ".toml")


def is_task_file(name: str | os.PathLike) -> bool:
    """Whether a ``--task`` value names a task file (by its suffix or a path separator) rather than a task."""
    text = os.fspath(name)
    return text.lower().endswith(TASK_FILE_SUFFIXES) or "/" in text or os.sep in text


_default: PluginManager | None = None


def get_plugin_manager() -> PluginManager:
    """The process-wide plugin manager, created on first use."""
    global _default
    if _default is None:
        _default = PluginManager()
    return _default


def reset_plugin_manager() -> None:
    """Forget the process-wide manager (tests, or after installing a plugin in a notebook)."""
    global _default
    _default = None

