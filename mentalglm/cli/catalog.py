"""``mentalglm plugins | tasks | backends``: what is installed, with its options."""

from __future__ import annotations

import sys

from mentalglm.cli.common import plugins, print_json, table
from mentalglm.core.errors import MentalGLMError


def cmd_plugins(args) -> int:
    """List plugins and what each provides."""
    pm = plugins()
    providers = pm.providers()
    conflicts = pm.conflict_messages()
    if args.json:
        print_json({"plugins": [vars(p) for p in providers],
                     "failures": [{"plugin": name, "error": message} for name, message in pm.failures],
                     "conflicts": conflicts})
        return 0
    rows = [(p.name, p.version or ("built-in" if p.builtin else "-"), ", ".join(p.tasks) or "-",
             ", ".join(p.prompts) or "-", ", ".join(p.backends) or "-", ", ".join(p.hooks)) for p in providers]
    print(table(rows, ["plugin", "version", "tasks", "prompts", "backends", "hooks"]))
    for _, message in pm.failures:
        print(f"skipped: {message}", file=sys.stderr)
    for message in conflicts:
        print(f"conflict: {message}; that name cannot be used until one plugin is removed", file=sys.stderr)
    return 0


def cmd_tasks(args) -> int:
    """List tasks with kind and labels, or check task files (``--validate``)."""
    pm = plugins()
    if args.validate:
        return _validate_task_files(args)
    tasks = pm.tasks()
    owners = {t: p.name for p in pm.providers() for t in p.tasks}
    if args.json:
        print_json({"tasks": [{**task.describe(), "plugin": owners.get(name)} for name, task in tasks.items()]})
        return 0
    rows = []
    for name, task in tasks.items():
        items = getattr(task, "label_names", None) or getattr(task, "field_names", ())
        rows.append((name, task.kind, "、".join(items), task.primary_metric, owners.get(name, "-")))
    print(table(rows, ["task", "kind", "labels / fields", "primary metric", "plugin"]))
    return 0


def _validate_task_files(args) -> int:
    from mentalglm.core.taskfile import load_task_file

    checked = []
    for path in args.validate:
        task = load_task_file(path)  # a bad file raises a one-line TaskFileError
        names = getattr(task, "label_names", None) or getattr(task, "field_names", ())
        checked.append({**task.describe(), "file": path})
        if not args.json:
            print(f"{path}: ok — task '{task.name}' ({task.kind}): {'、'.join(names)}; "
                  f"primary metric {task.primary_metric}; use it as --task {path}")
    if args.json:
        print_json({"tasks": checked})
    return 0


def cmd_backends(args) -> int:
    """Describe each backend and its options."""
    pm = plugins()
    described, broken = [], []
    for name, entry in pm.backends().items():
        try:
            described.append({**entry.load().describe(), "name": name, "plugin": entry.plugin})
        except MentalGLMError as exc:
            broken.append({"name": name, "plugin": entry.plugin, "error": str(exc)})
    if args.json:
        print_json({"backends": described, "unavailable": broken})
        return 0
    for info in described:
        print(f"{info['name']} ({info['plugin']}): {info['description']}")
        print(f"  needs --model: {'yes' if info['requires_model'] else 'no'}; can: {', '.join(info['capabilities'])}")
        for option in info["options"]:
            default = "required" if option["required"] else f"default {option['default']!r}"
            help_text = f" — {option['help']}" if option["help"] else ""
            print(f"  --option {option['name']}=<{option['type']}>  ({default}){help_text}")
    for info in broken:
        print(f"{info['name']} ({info['plugin']}): unavailable: {info['error']}")
    return 0


def add_parser(sub) -> None:
    """Add ``plugins``, ``tasks`` and ``backends``."""
    p = sub.add_parser("plugins", help="which plugin provides which task, prompt style and backend")
    p.add_argument("--json", action="store_true", help="JSON on stdout")
    p.set_defaults(func=cmd_plugins)

    p = sub.add_parser("tasks", help="tasks with kind and labels")
    p.add_argument("--validate", nargs="+", metavar="FILE", help="check task files (.yaml/.toml) instead of listing")
    p.add_argument("--json", action="store_true", help="JSON on stdout")
    p.set_defaults(func=cmd_tasks)

    p = sub.add_parser("backends", help="backends and their options")
    p.add_argument("--json", action="store_true", help="JSON on stdout")
    p.set_defaults(func=cmd_backends)
