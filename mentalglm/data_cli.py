"""The data mapping flags every command that reads data shares, and ``mentalglm data inspect | convert``.

Commands that read posts (``analyze --input``, ``evaluate --data``, ``bench --data``; ``train``
next) call :func:`add_data_arguments` on their parser and pass :func:`data_mapping` of the parsed
arguments to :func:`mentalglm.core.data.read_posts` / ``iter_posts`` / ``read_records``, so the
flags mean the same everywhere. Nothing heavy is imported here: ``mentalglm --help`` stays instant.
"""

from __future__ import annotations

import argparse
import json
import sys

from mentalglm.core.mapping import FORMATS, DataMapping, parse_columns, parse_label_map

#: argparse destination → DataMapping field, and the flag a user typed.
_FLAGS = {"data_format": ("format", "--format"), "encoding": ("encoding", "--encoding"),
          "text_field": ("text_field", "--text-field"), "label_field": ("label_field", "--label-field"),
          "id_field": ("id_field", "--id-field"), "label_map": ("label_map", "--label-map"),
          "columns": ("columns", "--columns")}


def add_data_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the data mapping flags (``--text-field`` … ``--encoding``) to ``parser``, as one help group."""
    group = parser.add_argument_group("data mapping (what detection cannot know; a dataset card .yaml in place "
                                      "of the file holds the same keys)")
    group.add_argument("--text-field", metavar="F", help="the field or column holding the post (default: text, or a "
                       "common name such as comment, content, 内容 — data inspect says which)")
    group.add_argument("--label-field", metavar="F", help="the field or column holding the gold label (default: "
                       "label; or one-hot columns named by the task's labels)")
    group.add_argument("--id-field", metavar="F", help="the field or column holding the post id (default: id, else "
                       "the position in the file)")
    group.add_argument("--label-map", metavar="RAW=LABEL,...",
                       help="what raw label values mean, e.g. 0=低自杀风险,1=高自杀风险 (a value outside it is an "
                            "error)")
    group.add_argument("--columns", metavar="A,B,...",
                       help="names of a headerless file's columns, e.g. 高自杀风险,低自杀风险,text (one-hot flags)")
    group.add_argument("--encoding", help="text encoding (default: detected: BOM, UTF-8, else GB18030)")
    group.add_argument("--format", dest="data_format", choices=FORMATS,
                       help="read the file as this format whatever its extension")


def data_mapping(args: argparse.Namespace) -> DataMapping | None:
    """The :class:`DataMapping` the flags of :func:`add_data_arguments` describe (None when none is given).

    Raises:
        MentalGLMError: a malformed ``--label-map`` or ``--columns``.
    """
    values, origin = {}, {}
    for dest, (name, flag) in _FLAGS.items():
        value = getattr(args, dest, None)
        if value is None:
            continue
        if name == "label_map":
            value = parse_label_map(value)
        elif name == "columns":
            value = parse_columns(value)
        values[name], origin[name] = value, flag
    return DataMapping(**values, origin=origin) if values else None


# -- mentalglm data -----------------------------------------------------------------------------
def _task(args):
    from mentalglm.core.plugins import get_plugin_manager

    return get_plugin_manager().task(args.task)


def cmd_data_inspect(args) -> int:
    """Show how a data file is read: format, encoding, mapping, first posts, labels, problems."""
    from mentalglm.core.data_inspect import inspect_data

    document = inspect_data(args.file, _task(args), data_mapping(args), examples=args.examples,
                            max_problems=args.max_problems)
    if args.json:
        sys.stdout.write(json.dumps(document, ensure_ascii=False, indent=2) + "\n")
    else:
        print(render_inspection(document))
    return 1 if document["problems_total"] else 0


def _how(part: dict | None) -> str:
    if not part:
        return "—"
    if "one_hot_columns" in part:
        columns = ", ".join(c if c == label else f"{c}→{label}" for c, label in part["one_hot_columns"].items())
        return f"one-hot columns {columns} ({part['how']})"
    if "field_columns" in part:
        return f"columns {', '.join(part['field_columns'])} ({part['how']})"
    if part.get("field") is None:
        return part["how"]
    return f"'{part['field']}' ({part['how']})"


def render_inspection(document: dict) -> str:
    """The human form of :func:`mentalglm.core.data_inspect.inspect_data`'s document."""
    from mentalglm.cli import _table

    source = document["source"]
    lines = [f"source: {source.get('file') or source['spec']}"
             + (f" (through dataset card {source['card']})" if source.get("card") else "")]
    described = [source["format"]]
    if source.get("delimiter"):
        described.append(source["delimiter"])
    if source.get("encoding"):
        described.append(f"encoding {source['encoding']['name']} ({source['encoding']['how']})")
    if source.get("split"):
        described.append(f"split {source['split']}")
    lines.append("format: " + "; ".join(described))
    if source.get("files"):
        lines.append(f"files: {len(source['files'])}")
    if source.get("columns"):
        lines.append("columns: " + ", ".join(source["columns"]))
    for key, value in (source.get("mapping_given") or {}).items():
        lines.append(f"mapping: {key} = {json.dumps(value, ensure_ascii=False)} (from {source['mapping_from'][key]})")
    for schema in document["schemas"]:
        post = _how(schema["text"]) if schema.get("text") else "the user turn"
        lines.append(f"rows read as {schema['shape']} ({schema['rows']}): post {post}; "
                     f"label {_how(schema.get('label'))}; id {_how(schema.get('id'))}")
    for note in document["notes"]:
        lines.append(f"note: {note}")
    lines.append(f"posts: {document['posts']} ({document['labelled']} with a gold answer, "
                 f"{document['own_instruction']} with their own instruction)")
    if document["label_distribution"]:
        total = document["labelled"] or 1  # share of posts: multi-label shares need not add up to 100 %
        rows = [(label, n, f"{n / total:.1%}") for label, n in document["label_distribution"].items()]
        lines.append(_table(rows, ["label", "posts", "of labelled posts"]))
    if document["examples"]:
        rows = [(e["id"], e["line"], e["instruction"] or "(task's)", e["text"],
                 json.dumps(e["gold"], ensure_ascii=False) if e["gold"] is not None else "—")
                for e in document["examples"]]
        lines.append(_table(rows, ["id", "line", "instruction", "post", "gold"]))
    if document["problems_total"]:
        lines.append(f"problems: {document['problems_total']}"
                     + (f" (first {len(document['problems'])} shown)"
                        if len(document["problems"]) < document["problems_total"] else ""))
        lines.extend(f"  {p['error']}" for p in document["problems"])
    else:
        lines.append("problems: none")
    return "\n".join(lines)


def cmd_data_convert(args) -> int:
    """Write a data file as posts JSONL or C-IMHI records."""
    from mentalglm.core.data_inspect import convert_data

    summary = convert_data(args.file, _task(args), args.output, data_mapping(args), to=args.to)
    if args.json:
        sys.stdout.write(json.dumps(summary, ensure_ascii=False, indent=2) + "\n")
    else:
        what = "posts" if args.to == "posts" else "C-IMHI records"
        rendered = (f"; {summary['rendered_outputs']} answers written in the task's format"
                    if summary["rendered_outputs"] else "")
        print(f"wrote {summary['written']} {what} to {summary['output']}{rendered}")
    return 0


def add_data_parser(sub) -> None:
    """Add ``mentalglm data inspect`` and ``mentalglm data convert`` to the sub-command parsers."""
    data = sub.add_parser("data", help="how a data file is read (inspect), or rewrite it as posts or C-IMHI "
                                       "records (convert)")
    commands = data.add_subparsers(dest="data_command", metavar="SUBCOMMAND", required=True)

    p = commands.add_parser("inspect", help="format, encoding, mapping, first posts, label distribution, problems")
    p.add_argument("file", metavar="FILE", help="data file, sample:NAME, hf:FOLDER_OR_NAME[:split] or dataset card")
    p.add_argument("--task", required=True, help="task name or task file")
    add_data_arguments(p)
    p.add_argument("--examples", type=int, default=5, help="posts shown (default 5)")
    p.add_argument("--max-problems", type=int, default=50, help="problems listed; all are counted (default 50)")
    p.add_argument("--json", action="store_true", help="JSON on stdout")
    p.set_defaults(func=cmd_data_inspect)

    p = commands.add_parser("convert", help="rewrite as posts JSONL ({id, text, label}) or C-IMHI records")
    p.add_argument("file", metavar="FILE", help="data file, sample:NAME, hf:FOLDER_OR_NAME[:split] or dataset card")
    p.add_argument("--task", required=True, help="task name or task file")
    add_data_arguments(p)
    p.add_argument("-o", "--output", required=True, metavar="OUT.jsonl", help="the file to write")
    p.add_argument("--to", choices=["posts", "cimhi"], default="posts",
                   help="posts: {id, text, label}; cimhi: {instruction, input, output} for training (default posts)")
    p.add_argument("--json", action="store_true", help="JSON on stdout")
    p.set_defaults(func=cmd_data_convert)
