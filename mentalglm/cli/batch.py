"""``mentalglm batch export | import``: OpenAI Batch API files for ``vllm run-batch`` or the OpenAI Batch API.

The work is in :mod:`mentalglm.executors.batch_files`; this module only parses the command line.
Nothing heavy is imported until a command runs.
"""

from __future__ import annotations

import sys

from mentalglm.cli.common import add_data_arguments, data_mapping, parse_options, print_json
from mentalglm.core.errors import MentalGLMError, OptionsError


def cmd_batch_export(args) -> int:
    """Write the requests of a run as a Batch API JSONL file (and its settings beside it)."""
    from mentalglm.analysis.analyzer import Analyzer
    from mentalglm.backends.openai_backend import OpenAIBackend
    from mentalglm.core.plugin_manager import get_plugin_manager
    from mentalglm.data.readers import PostSource
    from mentalglm.executors.batch_files import export_requests

    options = parse_options(args.option)
    model = options.pop("model", None)
    if model is not None and args.model is not None and model != args.model:
        raise OptionsError(f"--model {args.model} and -O model={model} disagree; give one")
    model = args.model or model
    if not model:
        raise OptionsError("batch export needs the model name the batch runner serves: --model NAME "
                           "(vllm run-batch --model DIR serves it as DIR unless --served-model-name says otherwise)")
    if "server" in options:
        raise OptionsError("give the dialect with --server, not -O server=")
    options["server"] = args.server
    pm = get_plugin_manager()
    task = pm.task(args.task)
    backend = OpenAIBackend(model, options)
    analyzer = Analyzer(task, backend=backend, prompt=args.prompt, system=args.system, redact=args.redact)
    summary = export_requests(analyzer, PostSource(args.data, task, data_mapping(args)), args.output, data=args.data)
    if args.json:
        print_json(summary)
    else:
        print(f"wrote {summary['requests']} requests for {summary['endpoint']} ({args.server} dialect, "
              f"{'redacted: ' + str(summary['redactions']) + ' replacements' if analyzer.redact else 'not redacted'}) "
              f"to {summary['output']}; settings in {summary['record']}")
    return 0


def cmd_batch_import(args) -> int:
    """Append the predictions of a Batch API results file; report every row that could not be imported."""
    from mentalglm.core.plugin_manager import get_plugin_manager
    from mentalglm.executors.batch_files import import_results

    pm = get_plugin_manager()
    summary = import_results(pm.task(args.task), args.results, args.output, requests=args.requests,
                             strict_format=args.strict_format, unchecked=args.unchecked, plugins=pm)
    if args.json:
        print_json(summary)
    else:
        missing = f", {summary['missing']} requested posts still without a prediction" if summary["missing"] else ""
        print(f"{summary['imported']} predictions imported, {summary['already']} already in {summary['output']}, "
              f"{summary['invalid']} invalid, {summary['problems']} result rows not imported{missing}")
    if summary["problems"]:
        for p in summary["first_problems"]:
            print(f"mentalglm: {args.results}:{p['line']}: custom_id {p['custom_id']!r}: {p['kind']}: {p['message']}",
                  file=sys.stderr)
        kinds = ", ".join(f"{n} {kind}" for kind, n in summary["by_kind"].items())
        raise MentalGLMError(f"{args.results}: {summary['problems']} of {summary['rows']} result rows not imported "
                             f"({kinds}); all listed in {summary['errors_file']}")
    return 0


def add_parser(sub) -> None:
    """Add ``mentalglm batch export`` and ``mentalglm batch import`` to the sub-command parsers."""
    batch = sub.add_parser("batch", help="OpenAI Batch API files: export a run's requests (vllm run-batch, the "
                                         "OpenAI Batch API), import the results as predictions")
    commands = batch.add_subparsers(dest="batch_command", metavar="SUBCOMMAND", required=True)

    p = commands.add_parser("export", help="one request per post: custom_id = post id, the rendered (redacted) "
                                           "prompt and the task's constraint in the server's dialect")
    p.add_argument("--task", required=True, help="task name or task file")
    p.add_argument("--data", required=True, metavar="FILE", help="posts file, sample:NAME or dataset card")
    p.add_argument("--prompt", default="glm4-chat", help="prompt style (default glm4-chat: chat requests)")
    p.add_argument("--system", help="system message for chat prompt styles")
    p.add_argument("--server", choices=["vllm", "llama.cpp", "openai"], default="vllm",
                   help="the dialect of the runner (default vllm: structured_outputs, stop_token_ids); openai has "
                        "no constraint, so it needs -O constrained=false")
    p.add_argument("--model", metavar="NAME", help="the model name the runner serves (also -O model=NAME)")
    p.add_argument("-O", "--option", action="append", metavar="KEY=VALUE",
                   help="openai backend option, repeatable (see `mentalglm backends`)")
    redact = p.add_mutually_exclusive_group()
    redact.add_argument("--redact", dest="redact", action="store_true", default=None,
                        help="redact phone numbers, e-mails, URLs, @mentions, ID numbers (the default: the file "
                             "leaves the machine)")
    redact.add_argument("--no-redact", dest="redact", action="store_false", help="never redact")
    add_data_arguments(p)
    p.add_argument("-o", "--output", required=True, metavar="REQUESTS.jsonl", help="the requests file to write")
    p.add_argument("--json", action="store_true", help="JSON on stdout")
    p.set_defaults(func=cmd_batch_export)

    p = commands.add_parser("import", help="results → predictions (analyze's format); idempotent, resumable; "
                                           "error rows reported, never dropped")
    p.add_argument("results", metavar="RESULTS.jsonl", help="the batch runner's output file")
    p.add_argument("--task", required=True, help="task name or task file")
    p.add_argument("--requests", metavar="REQUESTS.jsonl",
                   help="the exported requests: custom_ids and answers are checked against them (needed unless "
                        "--unchecked)")
    p.add_argument("--unchecked", action="store_true",
                   help="import without --requests: nothing is checked and every prediction is marked unchecked")
    p.add_argument("-o", "--output", required=True, metavar="PREDICTIONS.jsonl",
                   help="append predictions here; reruns add only what is new")
    p.add_argument("--strict-format", action="store_true",
                   help="only answers with a label line (标签：…) count; others are invalid")
    p.add_argument("--json", action="store_true", help="JSON on stdout")
    p.set_defaults(func=cmd_batch_import)
