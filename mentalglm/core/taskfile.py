"""Tasks declared as data: a YAML or TOML file becomes a Task with no Python.

A classification task file::

    name: stress
    kind: single-label            # or multi-label, hierarchical, extraction
    description: Is the poster under acute stress?
    instruction: |-
      判断下面这条帖子的发帖者是否处于急性压力之下。请按以下格式回答：
      标签：有压力 或 无压力
      解释：说明你的判断依据。
    labels:
      - name: 有压力
        description: stressed
        aliases: [stressed, stress]
      - 无压力                     # a bare name is a label without aliases
    primary_metric: weighted_f1

Extraction tasks list ``fields`` (same shape as labels) instead of ``labels``. Hierarchical
tasks give some labels a ``parent``: labels without one are the top level (a pathway's parts),
the others their sub-labels.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mentalglm.core.errors import MentalGLMError
from mentalglm.core.files import yaml_problem
from mentalglm.core.task import ExtractionTask, Field, HierarchicalTask, Label, MultiLabelTask, SingleLabelTask, Task

#: Keys a task file may contain.
TASK_FILE_KEYS = frozenset({
    "name", "kind", "description", "instruction", "labels", "fields", "label_prefix",
    "explanation_prefix", "evidence_prefix", "primary_metric", "none_aliases", "report_label_f1", "empty_values"})


class TaskFileError(MentalGLMError):
    """A task file that cannot be read or does not describe a valid task."""


def _read_mapping(path: Path) -> dict:
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise TaskFileError(f"{path}: cannot read task file: {exc}") from None
    if path.suffix.lower() == ".toml":
        try:
            import tomllib
        except ModuleNotFoundError:  # Python 3.10
            import tomli as tomllib
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise TaskFileError(f"{path}: invalid TOML: {exc}") from None
    elif path.suffix.lower() in (".yaml", ".yml"):
        import yaml

        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            line, reason = yaml_problem(exc, text)
            raise TaskFileError(f"{path}{f':{line}' if line else ''}: invalid YAML: {reason}") from None
    else:
        raise TaskFileError(f"{path}: task files must end in .yaml, .yml or .toml")
    if not isinstance(data, dict):
        raise TaskFileError(f"{path}: a task file must be a mapping of keys (name, kind, instruction, ...)")
    return data


def _items(path: Path, key: str, raw: Any, cls, parents: dict | None = None):
    """Labels or fields from a task file list; with ``parents``, each item's ``parent`` is collected there."""
    if not isinstance(raw, list) or not raw:
        raise TaskFileError(f"{path}: field '{key}': expected a non-empty list")
    items = []
    for i, entry in enumerate(raw, 1):
        if isinstance(entry, str):
            entry = {"name": entry}
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str) or not entry["name"].strip():
            raise TaskFileError(f"{path}: field '{key}' item {i}: expected a name or a mapping with 'name'")
        extra = set(entry) - {"name", "aliases", "description"} - ({"parent"} if parents is not None else set())
        if extra:
            hint = " ('parent' needs kind: hierarchical)" if "parent" in extra else ""
            raise TaskFileError(f"{path}: field '{key}' item {i}: unknown keys {', '.join(sorted(extra))}{hint}")
        if parents is not None and entry.get("parent") is not None:
            if not isinstance(entry["parent"], str) or not entry["parent"].strip():
                raise TaskFileError(f"{path}: field '{key}' item {i}: 'parent' must be a label name")
            parents[entry["name"].strip()] = entry["parent"].strip()
        aliases = entry.get("aliases") or []
        if not isinstance(aliases, list) or not all(isinstance(a, str) for a in aliases):
            raise TaskFileError(f"{path}: field '{key}' item {i}: 'aliases' must be a list of strings")
        items.append(cls(entry["name"].strip(), tuple(aliases), str(entry.get("description", ""))))
    return items


def task_from_mapping(data: dict, source: str = "<mapping>") -> Task:
    """Build a Task from a mapping with the keys of a task file.

    Raises:
        TaskFileError: a missing or unknown key, or values that do not make a valid task.
    """
    path = Path(source)
    unknown = set(data) - TASK_FILE_KEYS
    if unknown:
        raise TaskFileError(f"{source}: unknown keys {', '.join(sorted(unknown))} "
                            f"(allowed: {', '.join(sorted(TASK_FILE_KEYS))})")
    for key in ("name", "kind", "instruction"):
        if not isinstance(data.get(key), str) or not data[key].strip():
            raise TaskFileError(f"{source}: field '{key}': missing or not a string")
    kind = data["kind"]
    common = {k: data[k] for k in ("name", "instruction", "description", "label_prefix",
                                   "explanation_prefix", "evidence_prefix", "primary_metric") if k in data}
    common["source"] = source
    try:
        if kind in ("single-label", "multi-label"):
            if "fields" in data:
                raise TaskFileError(f"{source}: field 'fields': only extraction tasks have fields")
            labels = _items(path, "labels", data.get("labels"), Label)
            report = tuple(data.get("report_label_f1") or ())
            if kind == "single-label":
                if "none_aliases" in data:
                    raise TaskFileError(f"{source}: field 'none_aliases': only multi-label tasks have a none answer")
                return SingleLabelTask(labels=labels, report_label_f1=report, **common)
            return MultiLabelTask(labels=labels, none_aliases=tuple(data.get("none_aliases") or ()),
                                  report_label_f1=report, **common)
        if kind == "hierarchical":
            if "fields" in data:
                raise TaskFileError(f"{source}: field 'fields': hierarchical tasks have labels with parents")
            parents: dict[str, str] = {}
            labels = _items(path, "labels", data.get("labels"), Label, parents)
            top = [label for label in labels if label.name not in parents]
            subs: dict[str, list[Label]] = {}
            for label in labels:
                if label.name in parents:
                    subs.setdefault(parents[label.name], []).append(label)
            return HierarchicalTask(parts=top, sub_labels=subs,
                                    empty_values=tuple(data.get("empty_values") or ("无",)), **common)
        if kind == "extraction":
            if "labels" in data:
                raise TaskFileError(f"{source}: field 'labels': extraction tasks have fields, not labels")
            return ExtractionTask(fields=_items(path, "fields", data.get("fields"), Field),
                                  empty_values=tuple(data.get("empty_values") or ("无",)), **common)
    except ValueError as exc:
        raise TaskFileError(f"{source}: {exc}") from None
    raise TaskFileError(f"{source}: field 'kind': '{kind}' is not one of single-label, multi-label, hierarchical, "
                        "extraction")


def load_task_file(path: str | Path) -> Task:
    """Read a YAML or TOML task file into a Task.

    Raises:
        TaskFileError: unreadable file, bad syntax or an invalid task definition; the message
            names the file (and line for YAML syntax errors).
    """
    path = Path(path)
    return task_from_mapping(_read_mapping(path), source=str(path))
