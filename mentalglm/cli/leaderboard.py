"""``mentalglm leaderboard``: every model of a registry on every task, in one comparison table."""

from __future__ import annotations

from mentalglm.cli.common import add_bootstrap_arguments, add_data_arguments, data_mapping, plugins, print_json, table
from mentalglm.core.errors import MentalGLMError


def cmd_leaderboard(args) -> int:
    """Run (or re-score) the registry's models on the tasks' data and write the comparison."""
    from mentalglm.data.readers import read_posts
    from mentalglm.evaluation.leaderboard import OUTPUTS, TaskData, render_markdown, run_leaderboard
    from mentalglm.evaluation.registry import load_registry

    pm = plugins()
    registry = load_registry(args.models, plugins=pm)
    if args.validate:
        rows = [(m.name, m.backend, m.prompt, m.mode, _shown(m.model)) for m in registry.models]
        if args.json:
            print_json({"registry": str(registry.path), "reference": registry.reference,
                        "models": [{"name": m.name, "backend": m.backend, "model": m.model, "prompt": m.prompt,
                                    "mode": m.mode, "options": m.options} for m in registry.models]})
        else:
            print(f"{registry.path}: {len(registry.models)} models, reference {registry.reference}")
            print(table(rows, ["name", "backend", "prompt", "mode", "model"]))
        return 0
    tasks, data = args.task or [], args.data or []
    if not tasks or len(tasks) != len(data) or not args.output_dir:
        raise MentalGLMError("give --task and --data in pairs (one --data per --task, in order) and --output-dir")
    mapping = data_mapping(args)
    items = []
    for name, path in zip(tasks, data):
        task = pm.task(name)
        items.append(TaskData(task=task, data=path, posts=read_posts(path, task, mapping)))
    document = run_leaderboard(registry, items, args.output_dir, reuse=args.reuse, bootstrap=args.bootstrap,
                               seed=args.seed, progress=False if args.quiet else None, plugins=pm)
    if args.json:
        print_json(document)
        return 0
    print(render_markdown(document), end="")
    print(f"wrote {', '.join(f'{args.output_dir}/{name}' for name in OUTPUTS)}")
    return 0


def _shown(model) -> str:
    return ", ".join(f"{k}: {v}" for k, v in model.items()) if isinstance(model, dict) else str(model or "")


def add_parser(sub) -> None:
    """Add ``leaderboard``."""
    p = sub.add_parser("leaderboard", help="every model of a registry on every task: one comparison table with "
                                           "95 %% intervals, paired deltas and a forest plot")
    p.add_argument("--models", required=True, metavar="FILE", help="the model registry (YAML; see docs/comparison.md)")
    p.add_argument("--task", action="append", metavar="TASK", help="a task (repeatable; each with its --data)")
    p.add_argument("--data", action="append", metavar="FILE",
                   help="the gold-labelled posts of the --task in the same position (repeatable)")
    p.add_argument("--output-dir", metavar="DIR",
                   help="one evaluation folder per task and model (reruns resume) and leaderboard.md/.csv/.json/.svg")
    p.add_argument("--reuse", action="store_true",
                   help="re-score the saved predictions in --output-dir without loading any model")
    p.add_argument("--validate", action="store_true", help="only check the registry (one line per mistake) and list it")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    p.add_argument("--json", action="store_true", help="the comparison as JSON on stdout")
    add_bootstrap_arguments(p)
    add_data_arguments(p)
    p.set_defaults(func=cmd_leaderboard)
