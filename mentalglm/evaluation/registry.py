"""The model registry: the models a comparison runs, one entry each, in a YAML file.

::

    reference: mentalglm-chat          # paired deltas against this model (default: the first)
    models:
      - name: mentalglm-chat
        backend: llamacpp
        model: models/mentalglm-chat-q4_k_m.gguf
        prompt: glm4-chat              # default glm4-chat; auto = the model's own chat template
        options: {n_ctx: 2048}
      - name: qwen2.5-7b-instruct
        backend: llamacpp
        model: models/qwen2.5-7b-instruct-q4_k_m.gguf
        prompt: auto
      - name: baseline
        backend: baseline
        model:                         # a model per task: the baseline is trained for one task
          suicide-risk: models/baseline-suicide
          cognitive-distortion: models/baseline-cd

Keys of an entry: ``name`` and ``backend`` (required), ``model`` (a path or served name, or a
mapping task → one), ``prompt``, ``system``, ``options`` (the backend's typed options, checked
here), ``adapter`` (the backend's ``adapter`` option), ``mode`` (``generate`` or ``score``),
``calibration`` (a file, or task → file; needs ``mode: score``), ``strict_format``. Relative paths
are relative to the registry file's folder (not for ``openai``, whose ``model`` is a served name).
Every mistake is one line naming the file, the line and the field.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mentalglm.core.errors import MentalGLMError, OptionsError, UnknownNameError
from mentalglm.core.files import yaml_problem

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
ENTRY_KEYS = ("name", "backend", "model", "prompt", "system", "options", "adapter", "mode", "calibration",
              "strict_format")
_PATH_BACKENDS_EXCLUDED = {"openai"}  # its model is a name the server serves, not a file


class RegistryError(MentalGLMError):
    """A registry file that cannot be read or does not describe valid models (file, line, field)."""


@dataclass(frozen=True)
class ModelEntry:
    """One model of a comparison, as the registry gives it.

    Attributes:
        name: the column name in the comparison and the run folder's name.
        backend: a registered backend.
        model: what it loads, or a mapping task name → what it loads for that task.
        prompt, system, options, mode, strict_format: as for ``mentalglm evaluate``.
        calibration: a calibration file, or task name → file.
        index, line: where the entry is in the file (``models[index]``, starting on ``line``).
    """

    name: str
    backend: str
    model: str | dict[str, str] | None = None
    prompt: str = "glm4-chat"
    system: str | None = None
    options: dict = field(default_factory=dict)
    mode: str = "generate"
    calibration: str | dict[str, str] | None = None
    strict_format: bool = False
    index: int = 0
    line: int | None = None


@dataclass(frozen=True)
class Registry:
    """The models of a registry file, in order, and the reference of paired comparisons."""

    path: Path
    models: tuple[ModelEntry, ...]
    reference: str

    def model(self, name: str) -> ModelEntry:
        """The entry called ``name``."""
        return next(m for m in self.models if m.name == name)

    def for_task(self, entry: ModelEntry, field_name: str, task: str) -> str | None:
        """The value of a per-task field (``model``, ``calibration``) of ``entry`` for ``task``.

        None when the field is unset, or is a mapping without ``task`` (the baseline of a task it
        cannot model: the comparison shows that model as absent from that task).
        """
        value = getattr(entry, field_name)
        return value.get(task) if isinstance(value, dict) else value


class _Lines:
    """Line numbers of a YAML document's nodes, by path (``("models", 1, "backend")``)."""

    def __init__(self, text: str):
        import yaml

        self.lines: dict[tuple, int] = {}
        root = yaml.compose(text)
        if root is not None:
            self._walk(root, ())

    def _walk(self, node, path: tuple) -> None:
        import yaml

        self.lines[path] = node.start_mark.line + 1
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                self._walk(value, path + (str(key.value),))
                self.lines[path + (str(key.value),)] = key.start_mark.line + 1  # the key's line, not its value's
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                self._walk(item, path + (i,))

    def of(self, path: tuple) -> int | None:
        """The line of ``path``, or of its nearest ancestor that has one."""
        while path not in self.lines and path:
            path = path[:-1]
        return self.lines.get(path)


def _field(path: tuple) -> str:
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def load_registry(path: str | Path, plugins=None) -> Registry:
    """Read and check a registry file: every backend, prompt style and option is checked without loading a model.

    Raises:
        RegistryError: one line ``FILE:LINE: field 'models[2].backend': …``.
    """
    import yaml

    from mentalglm.core.plugin_manager import get_plugin_manager

    path = Path(path)
    pm = plugins or get_plugin_manager()
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or exc
        raise RegistryError(f"{path}: cannot read the model registry: {reason}") from None
    if path.suffix.lower() not in (".yaml", ".yml", ".json"):
        raise RegistryError(f"{path}: a model registry is a .yaml, .yml or .json file")
    try:
        data, lines = yaml.safe_load(text), _Lines(text)
    except yaml.YAMLError as exc:
        line, reason = yaml_problem(exc, text)
        raise RegistryError(f"{path}{f':{line}' if line else ''}: invalid YAML: {reason}") from None

    def fail(where: tuple, message: str):
        line = lines.of(where)
        raise RegistryError(f"{path}{f':{line}' if line else ''}: field '{_field(where)}': {message}")

    if not isinstance(data, dict):
        raise RegistryError(f"{path}: a model registry is a mapping with a 'models' list")
    for key in data:
        if key not in ("models", "reference"):
            fail((key,), "unknown key (a registry has 'models' and 'reference')")
    raw = data.get("models")
    if not isinstance(raw, list) or not raw:
        fail(("models",), "expected a non-empty list of models")
    models = [_entry(item, ("models", i), fail, pm, path.parent, lines) for i, item in enumerate(raw)]
    seen: dict[str, int] = {}
    for i, model in enumerate(models):
        if model.name in seen:
            fail(("models", i, "name"), f"'{model.name}' is already the name of models[{seen[model.name]}]")
        seen[model.name] = i
    reference = data.get("reference", models[0].name)
    if not isinstance(reference, str) or reference not in seen:
        fail(("reference",), f"expected the name of a model ({', '.join(seen)})")
    return Registry(path=path, models=tuple(models), reference=reference)


def _entry(item: Any, where: tuple, fail, pm, base: Path, lines: _Lines) -> ModelEntry:
    """One checked entry; ``fail(path, message)`` raises with the line of ``path``."""
    if not isinstance(item, dict):
        fail(where, "expected a mapping with name, backend and model")
    for key in item:
        if key not in ENTRY_KEYS:
            fail(where + (key,), f"unknown key (an entry may have: {', '.join(ENTRY_KEYS)})")
    name = item.get("name")
    if not isinstance(name, str) or not _NAME.match(name):
        fail(where + ("name",), "expected a name of letters, digits, '-', '_' or '.' (it names a folder)")
    backend = item.get("backend")
    if not isinstance(backend, str):
        fail(where + ("backend",), "expected a backend name")
    try:
        backend_class = pm.backend_class(backend)
    except UnknownNameError as exc:
        fail(where + ("backend",), str(exc))
    resolve = backend not in _PATH_BACKENDS_EXCLUDED
    model = _per_task(item.get("model"), where + ("model",), fail, base if resolve else None)
    if model is None and backend_class.requires_model:
        fail(where + ("model",), f"backend '{backend}' needs a model")
    prompt = item.get("prompt", "glm4-chat")
    if not isinstance(prompt, str) or prompt not in pm.prompts():
        fail(where + ("prompt",), f"expected a prompt style ({', '.join(pm.prompts())})")
    system = item.get("system")
    if system is not None and not isinstance(system, str):
        fail(where + ("system",), "expected text")
    options = item.get("options") or {}
    if not isinstance(options, dict):
        fail(where + ("options",), "expected a mapping of option names to values")
    options = dict(options)
    if item.get("adapter") is not None:
        if "adapter" not in backend_class.Options.model_fields:
            fail(where + ("adapter",), f"backend '{backend}' takes no adapter")
        if not isinstance(item["adapter"], str):
            fail(where + ("adapter",), "expected a path")
        options["adapter"] = str(_resolved(item["adapter"], base if resolve else None))
    try:
        backend_class.parse_options(options)
    except OptionsError as exc:
        fail(where + ("options",), str(exc))
    mode = item.get("mode", "generate")
    if mode not in ("generate", "score"):
        fail(where + ("mode",), "expected generate or score")
    calibration = _per_task(item.get("calibration"), where + ("calibration",), fail, base)
    if calibration is not None and mode != "score":
        fail(where + ("calibration",), "a calibration needs mode: score")
    strict = item.get("strict_format", False)
    if not isinstance(strict, bool):
        fail(where + ("strict_format",), "expected true or false")
    return ModelEntry(name=name, backend=backend, model=model, prompt=prompt, system=system, options=options,
                      mode=mode, calibration=calibration, strict_format=strict, index=where[-1], line=lines.of(where))


def _per_task(value: Any, where: tuple, fail, base: Path | None):
    """A path (or name), or a mapping task → one; relative paths resolved against ``base`` when given."""
    if value is None:
        return None
    if isinstance(value, str) and value:
        return _resolved(value, base)
    if isinstance(value, dict) and value and all(isinstance(k, str) and isinstance(v, str) and v
                                                 for k, v in value.items()):
        return {k: _resolved(v, base) for k, v in value.items()}
    fail(where, "expected a path, or a mapping of task names to paths")


def _resolved(value: str, base: Path | None) -> str:
    if base is None or value.startswith("sample:") or Path(value).is_absolute():
        return value
    return str(base / value)
