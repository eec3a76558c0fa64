"""``mentalglm train``: the command line of :func:`mentalglm.training.train`.

Under ``torchrun --nproc_per_node N -m mentalglm train …`` every rank runs this command.

The options are generated from :class:`~mentalglm.training.config.TrainConfig`, the way
llama-cpp-python's server builds its command line from its settings model: one option per
field (``lora_r`` → ``--lora-r``), with the field's type, choices, default and description,
placed by its ``cli(...)`` hints. A new TrainConfig field is a new option; nothing here changes.
Only the data options (``--data``, ``--stage``, ``--config``) and ``--json`` are written out.

Every generated option defaults to "not given", so a ``--config`` file's values survive and
the command line overrides them; the defaults themselves live in TrainConfig.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import types
import typing
from typing import Any

from mentalglm.cli.common import add_data_arguments, data_mapping
from mentalglm.core.errors import MentalGLMError

#: Help sections in the order ``mentalglm train -h`` lists them; a field naming another
#: section gets a new one after these.
_GROUPS = ("model and data", "LoRA", "optimisation", "checkpoints, validation, output")


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _value_type(annotation: Any) -> tuple[Any, tuple | None]:
    """``(scalar type, choices)`` of a field: ``X | None`` is X, ``list[str]`` a comma list of str."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(inner) == 1:
            return _value_type(inner[0])
    elif origin is typing.Literal:
        return str, tuple(typing.get_args(annotation))
    elif origin is list and typing.get_args(annotation) == (str,):
        return str, None  # "a,b" on the command line; the model splits it
    elif annotation in (str, int, float, bool):
        return annotation, None
    raise TypeError(f"TrainConfig: no command-line form for {annotation!r}; give the field "
                    "json_schema_extra={'cli_flag': False} or a simpler type")


def _default_text(info) -> str:
    default = info.get_default(call_default_factory=True)
    if default is None or default is False or info.is_required():
        return ""
    if isinstance(default, (list, tuple)):
        default = ",".join(map(str, default))
    return f" (default {default})"


def _add_field(group, name: str, info) -> str:
    """Add the option of one TrainConfig field to ``group``; returns its main option string."""
    hints = info.json_schema_extra or {}
    kind, choices = _value_type(info.annotation)
    # argparse expands %-formats in help; descriptions are plain text.
    text = (info.description or name.replace("_", " ")).replace("%", "%%") + _default_text(info)
    names = [_flag(name), *hints.get("cli_aliases", [])]  # the field's own name first: errors use it
    if kind is bool:
        # --quiet / --no-quiet: the negative form overrides a config file's true.
        group.add_argument(*names, dest=name, action=argparse.BooleanOptionalAction, default=None, help=text)
    else:
        metavar = hints.get("cli_metavar") or (None if choices else "N" if kind in (int, float) else "VALUE")
        group.add_argument(*names, dest=name, type=kind, choices=choices, metavar=metavar, default=None, help=text)
    return names[0]


def _setting_options() -> dict[str, str]:
    """TrainConfig field → its option string, for every field that has one."""
    from mentalglm.training.config import TrainConfig

    return {name: _flag(name) for name, info in TrainConfig.model_fields.items()
            if (info.json_schema_extra or {}).get("cli_flag", True)}


def _add_data_arguments(group) -> None:
    group.add_argument("--data", nargs="+", metavar="FILE",
                       help="C-IMHI record files (JSON array or JSONL) or sample:NAME, trained as one stage")
    group.add_argument("--stage", action="append", metavar="FILE[,FILE...]",
                       help="one training stage's files, repeatable; stages run in order and continue the same "
                            "adapter (the paper: --stage imhi-en.jsonl --stage c-imhi.jsonl)")
    group.add_argument("--config", metavar="FILE", help="YAML/JSON settings with an optional stages: list "
                                                        "(each stage may set epochs, max_steps, learning_rate); "
                                                        "command-line options override it")


def _add_arguments(p: argparse.ArgumentParser) -> None:
    from mentalglm.training.config import TrainConfig

    groups = {title: p.add_argument_group(title) for title in _GROUPS}
    groups[_GROUPS[0]].add_argument(
        "--backend", choices=("torch", "baseline"), default="torch",
        help="torch (default): LoRA fine-tuning of --model; baseline: the supervised floor, character n-gram "
             "TF-IDF + logistic regression of --task's labels, hyper-parameters by cross-validation on --data")
    _add_data_arguments(groups[_GROUPS[0]])
    add_data_arguments(p)  # the mapping flags every command that reads data shares
    flags = _setting_options()
    for name, info in TrainConfig.model_fields.items():
        if name in flags:
            title = (info.json_schema_extra or {}).get("cli_group", "other settings")
            group = groups.get(title) or groups.setdefault(title, p.add_argument_group(title))
            _add_field(group, name, info)
    groups[_GROUPS[-1]].add_argument("--json", action="store_true", help="print the result as JSON on stdout")


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Add the ``train`` command to the ``mentalglm`` sub-command parsers.

    Args:
        subparsers: what ``ArgumentParser.add_subparsers()`` returned.

    Returns:
        The ``train`` parser (its ``func`` default is :func:`cmd_train`).
    """
    p = subparsers.add_parser("train", help="LoRA fine-tuning on C-IMHI records (one or more stages; resumable)",
                              description="LoRA supervised fine-tuning of a GLM model on C-IMHI records, loss on "
                                          "the response tokens only. Rerun the same command to resume.")
    _add_arguments(p)
    p.set_defaults(func=cmd_train)
    return p


def config_from_args(args: argparse.Namespace):
    """The :class:`~mentalglm.training.config.TrainConfig` for parsed ``train`` arguments.

    Precedence: defaults < ``--config`` file < command-line options. ``--data`` or ``--stage``
    replace the config file's ``stages`` entirely.

    Raises:
        MentalGLMError: an unreadable config file, ``--data`` together with ``--stage``, or an
            invalid setting (named on one line).
    """
    from mentalglm.training.config import build_config, load_config_file

    settings = load_config_file(args.config) if getattr(args, "config", None) else {}
    origins: dict[str, str] = {}
    for key, option in _setting_options().items():
        value = getattr(args, key, None)
        if value is not None:
            settings[key], origins[key] = value, option
    if args.data and args.stage:
        raise MentalGLMError("give the data either with --data (one stage) or with --stage (one per stage), not both")
    if args.data:
        settings["stages"], origins["stages"] = [{"data": list(args.data)}], "--data"
    elif args.stage:
        settings["stages"], origins["stages"] = [{"data": spec} for spec in args.stage], "--stage"
    mapping = data_mapping(args)
    if mapping is not None:  # the flags override a config file's data_mapping table key by key
        settings["data_mapping"] = {**(settings.get("data_mapping") or {}), **mapping.describe()}
        origins["data_mapping"] = "the data mapping flags"
    for key, option in (("model", "--model"), ("output", "--output")):
        if not settings.get(key):
            raise MentalGLMError(f"{option} is required (on the command line or in --config)")
    return build_config(settings, source=args.config or "command line", origins=origins)


def cmd_train(args: argparse.Namespace) -> int:
    """Run ``mentalglm train`` with parsed arguments.

    Returns:
        0 when the run finished (now or earlier).

    Raises:
        MentalGLMError: any mistake in input; the caller prints it on one line and exits 1.
    """
    if args.backend == "baseline":
        return _train_baseline(args)
    from mentalglm.training.loop import train

    result = train(config_from_args(args))
    if int(os.environ.get("RANK", "0")) != 0:
        return 0
    if args.json:
        sys.stdout.write(json.dumps(result.to_dict(), ensure_ascii=False, indent=2) + "\n")
    elif result.already_finished:
        print(f"already finished: {result.steps} steps; adapter in {result.adapter}")
    else:
        loss = f"{result.final_loss:.4f}" if result.final_loss is not None else "-"
        print(f"trained {result.steps} steps, final loss {loss}; adapter in {result.adapter}")
    return 0


def _train_baseline(args: argparse.Namespace) -> int:
    """``train --backend baseline``: fit and save the supervised floor; LoRA settings are refused, not ignored."""
    from mentalglm.cli.common import plugins, print_json
    from mentalglm.data.readers import read_posts
    from mentalglm.training.baseline import train_baseline

    given = [option for key, option in _setting_options().items()
             if getattr(args, key, None) is not None and key not in ("task", "output", "seed", "quiet")]
    if args.stage or args.config or given:
        extra = (["--stage"] if args.stage else []) + (["--config"] if args.config else []) + given
        raise MentalGLMError(f"{', '.join(extra)} {'does' if len(extra) == 1 else 'do'} not apply to --backend "
                             "baseline (it takes --task, --data, --output and --seed)")
    for needed, option in ((args.task, "--task"), (args.data, "--data"), (args.output, "--output")):
        if not needed:
            raise MentalGLMError(f"--backend baseline needs {option}")
    task = plugins().task(args.task)
    mapping = data_mapping(args)
    posts = []
    for path in args.data:
        read = read_posts(path, task, mapping)
        unlabelled = next((post for post in read if post.gold is None), None)
        if unlabelled is not None:
            raise MentalGLMError(f"{path}:{unlabelled.line}: field 'label': missing; the baseline trains on "
                                 "labelled posts")
        posts += read
    record = train_baseline(task, posts, args.output, data=args.data, seed=args.seed or 0)
    if args.json:
        print_json(record)
    else:
        print(f"baseline for {task.name}: {record['posts']} posts, n-grams 1-{record['ngram_range'][1]}, "
              f"C={record['C']:g} ({record['cv_folds']}-fold {record['cv_scorer']} {record['cv_score']:.4f} on the "
              f"training posts), {record['features']} features, {record['seconds']:.1f} s; model in {record['model']}")
    return 0
