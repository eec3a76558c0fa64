"""``mentalglm data inspect | convert``: how a data file is read, or the file rewritten as posts or C-IMHI records."""

from __future__ import annotations

import json
import sys

from mentalglm.cli.common import add_data_arguments, data_mapping, table


def _task(args):
    from mentalglm.core.plugin_manager import get_plugin_manager

    return get_plugin_manager().task(args.task)


def cmd_data_inspect(args) -> int:
    """Show how a data file is read: format, encoding, mapping, first posts, labels, problems."""
    from mentalglm.data.inspect import inspect_data

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
    """The human form of :func:`mentalglm.data.inspect.inspect_data`'s document."""
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
        lines.append(table(rows, ["label", "posts", "of labelled posts"]))
    if document["examples"]:
        rows = [(e["id"], e["line"], e["instruction"] or "(task's)", e["text"],
                 json.dumps(e["gold"], ensure_ascii=False) if e["gold"] is not None else "—")
                for e in document["examples"]]
        lines.append(table(rows, ["id", "line", "instruction", "post", "gold"]))
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
    from mentalglm.data.inspect import convert_data

    summary = convert_data(args.file, _task(args), args.output, data_mapping(args), to=args.to)
    if args.json:
        sys.stdout.write(json.dumps(summary, ensure_ascii=False, indent=2) + "\n")
    else:
        what = "posts" if args.to == "posts" else "C-IMHI records"
        rendered = (f"; {summary['rendered_outputs']} answers written in the task's format"
                    if summary["rendered_outputs"] else "")
        print(f"wrote {summary['written']} {what} to {summary['output']}{rendered}")
    return 0


def add_parser(sub) -> None:
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
