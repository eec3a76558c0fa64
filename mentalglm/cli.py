"""The ``mentalglm`` command.

``--json`` puts exactly one JSON document (or JSONL for many posts) on stdout; progress and
logs go to stderr. Mistakes in input give one line on stderr and a non-zero exit code.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import warnings
from typing import Sequence

from mentalglm.argtypes import at_least
from mentalglm.batch_cli import add_batch_parser
from mentalglm.core.errors import MentalGLMError, OptionsError
from mentalglm.data_cli import add_data_arguments, add_data_parser, data_mapping
from mentalglm.executors import add_executor_arguments, ray_requested
from mentalglm.review_cli import add_gold_argument, add_review_parser, apply_gold_argument
from mentalglm.training.cli import add_train_parser

EXIT_USER_ERROR = 1
EXIT_INTERRUPTED = 130


def _print_json(value) -> None:
    sys.stdout.write(json.dumps(value, ensure_ascii=False, indent=2) + "\n")


def _table(rows: Sequence[Sequence[object]], header: Sequence[str]) -> str:
    cells = [[str(c) for c in header]] + [[str(c) for c in row] for row in rows]
    widths = [max(_width(row[i]) for row in cells) for i in range(len(header))]

    def line(row):
        return "  ".join(c + " " * (w - _width(c)) for c, w in zip(row, widths)).rstrip()

    return "\n".join([line(cells[0]), line(["-" * w for w in widths])] + [line(r) for r in cells[1:]])


def _width(text: str) -> int:
    """Display width: CJK characters take two terminal columns."""
    import unicodedata

    return sum(2 if unicodedata.east_asian_width(ch) in "WF" else 1 for ch in text)


def _parse_options(pairs: Sequence[str]) -> dict[str, str]:
    options = {}
    for pair in pairs or ():
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise OptionsError(f"--option expects KEY=VALUE, got '{pair}'")
        options[key.strip()] = value
    return options


def _plugins():
    from mentalglm.core.plugins import get_plugin_manager

    return get_plugin_manager()


# -- commands ---------------------------------------------------------------------------------
def cmd_plugins(args) -> int:
    """List plugins and what each provides."""
    pm = _plugins()
    providers = pm.providers()
    conflicts = pm.conflict_messages()
    if args.json:
        _print_json({"plugins": [vars(p) for p in providers],
                     "failures": [{"plugin": name, "error": message} for name, message in pm.failures],
                     "conflicts": conflicts})
        return 0
    rows = [(p.name, p.version or ("built-in" if p.builtin else "-"), ", ".join(p.tasks) or "-",
             ", ".join(p.prompts) or "-", ", ".join(p.backends) or "-", ", ".join(p.hooks)) for p in providers]
    print(_table(rows, ["plugin", "version", "tasks", "prompts", "backends", "hooks"]))
    for _, message in pm.failures:
        print(f"skipped: {message}", file=sys.stderr)
    for message in conflicts:
        print(f"conflict: {message}; that name cannot be used until one plugin is removed", file=sys.stderr)
    return 0


def cmd_tasks(args) -> int:
    """List tasks with kind and labels, or check task files (``--validate``)."""
    pm = _plugins()
    if args.validate:
        return _validate_task_files(args)
    tasks = pm.tasks()
    owners = {t: p.name for p in pm.providers() for t in p.tasks}
    if args.json:
        _print_json({"tasks": [{**task.describe(), "plugin": owners.get(name)} for name, task in tasks.items()]})
        return 0
    rows = []
    for name, task in tasks.items():
        items = getattr(task, "label_names", None) or getattr(task, "field_names", ())
        rows.append((name, task.kind, "、".join(items), task.primary_metric, owners.get(name, "-")))
    print(_table(rows, ["task", "kind", "labels / fields", "primary metric", "plugin"]))
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
        _print_json({"tasks": checked})
    return 0


def cmd_backends(args) -> int:
    """Describe each backend and its options."""
    pm = _plugins()
    described, broken = [], []
    for name, entry in pm.backends().items():
        try:
            described.append({**entry.load().describe(), "name": name, "plugin": entry.plugin})
        except MentalGLMError as exc:
            broken.append({"name": name, "plugin": entry.plugin, "error": str(exc)})
    if args.json:
        _print_json({"backends": described, "unavailable": broken})
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


def _analyzer_arguments(args, task) -> dict:
    """The Analyzer's keyword arguments from the command line (``--executor ray`` gives them to every worker)."""
    return dict(task=task, backend=args.backend, model=args.model, prompt=args.prompt,
                options=_parse_options(args.option), system=args.system, batch_size=args.batch_size,
                mode=args.mode, explain=not args.no_explain, redact=args.redact,
                strict_format=args.strict_format, calibration=_calibration(args), confidence=args.confidence)


def _analyzer(args, task):
    from mentalglm.core.analyzer import Analyzer

    return Analyzer(**_analyzer_arguments(args, task))


def _calibration(args):
    """``--calibration FILE`` with ``--review-band`` applied; ``--target-recall`` must be the one it was fitted for.

    The threshold is chosen on the dev run at calibrate time, never on the posts being analysed,
    so a different target here is refused rather than silently ignored.
    """
    if not args.calibration:
        if args.target_recall or args.review_band:
            raise MentalGLMError("--target-recall and --review-band need --calibration FILE (mentalglm calibrate)")
        return None
    from mentalglm.core.calibration import Calibration, check_band

    calibration = Calibration.load(args.calibration)
    policy = calibration.policy
    if args.target_recall and args.target_recall != (policy.risk_label, policy.target_recall):
        fitted = (f"{policy.risk_label}={policy.target_recall:g}" if policy.target_recall is not None else "none")
        raise MentalGLMError(f"{args.calibration} chose its threshold for target recall {fitted}; run mentalglm "
                             f"calibrate --target-recall {args.target_recall[0]}={args.target_recall[1]:g} for another")
    if args.review_band:
        check_band(args.review_band)
        policy.review_band = args.review_band
    return calibration


def cmd_calibrate(args) -> int:
    """Fit calibrated probabilities (and a decision policy) on a labelled score-mode evaluation folder."""
    from pathlib import Path

    from mentalglm.core.calibration import calibrate, reliability_diagram
    from mentalglm.core.files import read_json

    record = Path(args.run_dir) / "run.json"
    task_name = args.task or (read_json(record, "run record").get("task") if record.is_file() else None)
    if not task_name:
        raise MentalGLMError(f"{args.run_dir}: no run.json naming the task; give --task")
    task = _plugins().task(task_name)
    if getattr(task, "kind", "") != "single-label":
        raise MentalGLMError(f"calibration needs a single-label task; '{task.name}' is {task.kind}")
    calibration = calibrate(args.run_dir, task, method=args.method, target_recall=args.target_recall,
                            review_band=args.review_band, risk_label=args.risk_label, bins=args.bins)
    output = Path(args.output)
    calibration.save(output)
    chart = output.with_suffix(".png")
    note = reliability_diagram(calibration, chart)
    document = {**calibration.to_dict(), "sha256": calibration.sha256, "output": str(output),
                "reliability_diagram": None if note else str(chart), "note": note}
    if args.json:
        _print_json(document)
        return 0
    before, after = document["metrics"]["before"], document["metrics"]["after"]
    print(f"{task.name}: {args.method} on {document['dev_posts']} dev posts of {args.run_dir}: "
          f"ECE {before['ece']:.4f} → {after['ece']:.4f}, Brier {before['brier']:.4f} → {after['brier']:.4f}")
    policy = calibration.policy
    if policy.threshold is not None:
        print(f"threshold for {policy.risk_label} at target recall {policy.target_recall:g}: {policy.threshold:.4f} "
              f"(dev recall {policy.dev_recall:.4f}, precision {policy.dev_precision:.4f})")
    print(f"wrote {output}" + (f" and {chart}" if not note else f" ({note})"))
    return 0


def _print_prediction(prediction, response_format) -> None:
    status = "" if prediction.valid else f"  [invalid: {prediction.problem}]"
    if prediction.probabilities is not None:  # calibrated: how sure, and whether a person should look
        shown = ", ".join(f"{label} {p:.2f}" for label, p in prediction.probabilities.items())
        status += f"  [{'needs review; ' if prediction.needs_review else ''}p: {shown}]"
    lines = response_format.answer_lines(prediction.labels if prediction.valid else (), prediction.fields)
    print(f"[{prediction.id}]{status}" if len(lines) > 1 else f"[{prediction.id}] {lines[0]}{status}")
    for line in lines if len(lines) > 1 else ():
        print(f"  {line}")
    if prediction.explanation:
        print(f"  {response_format.explanation_head}{prediction.explanation}")


def cmd_analyze(args) -> int:
    """Analyse posts given as arguments or in a file."""
    from mentalglm.core.data import PostSource, read_posts
    from mentalglm.core.prediction import Post

    if args.text and args.input:
        raise MentalGLMError("give posts either as arguments or with --input FILE, not both")
    if not args.text and not args.input:
        raise MentalGLMError("no posts: give TEXT arguments or --input FILE")
    pm = _plugins()
    task = pm.task(args.task)
    if ray_requested(args):  # Ray Data workers on a cluster: mentalglm/executors/ray_data.py (the [ray] extra)
        from mentalglm.executors.ray_data import analyze_command

        return analyze_command(args, task, _analyzer_arguments(args, task))
    if not args.input:
        posts = [Post(id=str(i), text=t) for i, t in enumerate(args.text, 1)]
    elif args.output:  # streamed: a file of millions of posts runs in flat memory
        posts = PostSource(args.input, task, data_mapping(args))
    else:  # printed to the terminal, so a list is fine
        posts = read_posts(args.input, task, data_mapping(args))
    with _analyzer(args, task) as analyzer:
        if args.output:
            summary = analyzer.run(posts, args.output, progress=False if args.quiet else None, data=args.input,
                                   retry_hint="use another --output or delete it and its .run.json")
            result = {"output": summary.output, "posts": summary.total, "analysed": summary.analysed,
                      "skipped": summary.skipped, "invalid": summary.invalid,
                      "without_label_line": summary.without_label_line, **summary.backend_stats}
            if args.json:
                _print_json(result)
            else:
                print(f"{summary.analysed} posts analysed, {summary.skipped} already done, "
                      f"{summary.invalid} invalid, {summary.without_label_line} read without a label line "
                      f"→ {summary.output}")
                if "replicas" in summary.backend_stats:
                    from mentalglm.backends.replicas import describe_counts

                    print(f"replicas: {describe_counts(summary.backend_stats['replicas'])}")
            return 0
        analyzer.backend.preflight((p.id for p in posts), response_format=analyzer.response_format)
        for prediction in analyzer.analyze_many(posts):
            if args.json and len(posts) == 1:
                _print_json(prediction.to_dict())
            elif args.json:
                sys.stdout.write(json.dumps(prediction.to_dict(), ensure_ascii=False) + "\n")
            else:
                _print_prediction(prediction, analyzer.response_format)
    return 0


def cmd_evaluate(args) -> int:
    """Evaluate on gold-labelled data; write predictions, metrics and a report."""
    from mentalglm.core.data import read_posts
    from mentalglm.core.evaluation import evaluate

    pm = _plugins()
    task = pm.task(args.task)
    posts = apply_gold_argument(args, task, read_posts(args.data, task, data_mapping(args)))
    bertscore = None
    if args.bertscore_model:  # loaded before the run: a wrong folder fails before any post is analysed
        from mentalglm.core.bertscore import BERTScorer

        bertscore = BERTScorer(args.bertscore_model, layer=args.bertscore_layer)
    with _analyzer(args, task) as analyzer:
        document = evaluate(analyzer, posts, args.output_dir, data=args.data,
                            progress=False if args.quiet else None, bootstrap=args.bootstrap, seed=args.seed,
                            bertscore=bertscore)
    if args.json:
        _print_json(document)
        return 0
    counts = document["counts"]
    print(f"{task.name}: {counts['posts']} posts, {counts['invalid']} invalid outputs, "
          f"{counts['without_label_line']} read without a label line ({counts['resumed']} resumed from an earlier run)")
    print(_metric_table(document))
    print(f"wrote {args.output_dir}/predictions.jsonl, metrics.json, report.md")
    return 0


def _metric_table(document: dict) -> str:
    """Headline metrics as ``value [low, high]``, then how the intervals were made."""
    from mentalglm.core.evaluation import headline_metrics, interval_note
    from mentalglm.core.statistics import format_interval

    intervals = document.get("intervals") or {}
    rows = [(k, (f"{v:.4f}" if isinstance(v, float) else str(v)) + (f" {format_interval(intervals[k])}"
                                                                       if k in intervals else ""))
            for k, v in headline_metrics(document["metrics"])]
    return _table(rows, ["metric", "value [95 % CI]"]) + "\n" + interval_note(document)


def cmd_compare(args) -> int:
    """Compare two evaluation runs on the same posts, paired: deltas with CIs, McNemar, Cohen's κ."""
    from mentalglm.core.compare import compare_runs, render_comparison

    document = compare_runs(args.run_a, args.run_b, task=args.task, resamples=args.bootstrap, seed=args.seed,
                            plugins=_plugins())
    if args.json:
        _print_json(document)
    else:
        print(render_comparison(document, table=_table))
    return 0


def _mib(n: int) -> str:
    return f"{n / 2**20:,.1f} MiB" if n < 2**30 else f"{n / 2**30:,.2f} GiB"


def cmd_export(args) -> int:
    """Convert a GLM model (optionally with a LoRA adapter) to GGUF."""
    from mentalglm.converters.gguf_export import export_gguf

    result = export_gguf(args.model, args.output, outtype=args.outtype, adapter_dir=args.adapter, name=args.name)
    needed = result.memory_needed(args.ctx)
    summary = {"output": str(result.path), "outtype": result.outtype, "architecture": result.arch,
               "tensors": result.n_tensors, "file_bytes": result.file_bytes, "seconds": round(result.seconds, 3),
               "n_ctx": args.ctx, "kv_cache_bytes": result.spec.kv_cache_bytes(args.ctx), "memory_bytes": needed}
    if args.json:
        _print_json(summary)
    else:
        print(f"wrote {result.path} ({result.arch}, {result.outtype}, {_mib(result.file_bytes)}, "
              f"{result.n_tensors} tensors) in {result.seconds:.1f} s")
        print(f"memory at n_ctx={args.ctx}: about {_mib(needed)} (weights {_mib(result.file_bytes)} + f16 KV cache "
              f"{_mib(result.spec.kv_cache_bytes(args.ctx))}; compute buffers come on top)")
    return 0


def cmd_sizes(args) -> int:
    """File size and memory of a model per GGUF out type, from its config alone."""
    from mentalglm.converters.gguf_export import OUTTYPES
    from mentalglm.converters.glm_spec import read_spec
    from mentalglm.converters.sizing import estimate, parallel_kv_cache_bytes, parameter_count

    spec = read_spec(args.model)
    contexts = args.ctx or [4096, 32768]
    rows = []
    for outtype in OUTTYPES:
        size = estimate(spec, outtype)
        rows.append({"outtype": outtype, "tensor_bytes": size.tensor_bytes, "bytes_by_type": size.bytes_by_type,
                     "memory_bytes": {str(n): size.memory_needed(spec, n) for n in contexts}})
    document = {"architecture": spec.architecture, "arch": spec.arch, "parameters": parameter_count(spec),
                "kv_cache_bytes": {str(n): spec.kv_cache_bytes(n) for n in contexts}, "outtypes": rows,
                "parallel": args.parallel,
                "parallel_kv_cache_bytes": {str(n): parallel_kv_cache_bytes(spec, n, args.parallel) for n in contexts}}
    if args.json:
        _print_json(document)
        return 0
    print(f"{spec.architecture} → {spec.arch}: {document['parameters']:,} parameters, f16 KV cache "
          + ", ".join(f"{_mib(spec.kv_cache_bytes(n))} at {n}" for n in contexts))
    print(f"llamacpp -O parallel={args.parallel} (each sequence its own window): f16 KV cache "
          + ", ".join(f"{_mib(parallel_kv_cache_bytes(spec, n, args.parallel))} at {n}" for n in contexts))
    print(_table([(r["outtype"], _mib(r["tensor_bytes"]), *(_mib(r["memory_bytes"][str(n)]) for n in contexts),
                   ", ".join(sorted(r["bytes_by_type"]))) for r in rows],
                 ["outtype", "weights", *(f"memory @ {n}" for n in contexts), "tensor types"]))
    return 0


def cmd_bench(args) -> int:
    """Measure backends side by side on the same model and posts."""
    from pathlib import Path

    from mentalglm.bench import parse_variants, run_bench, write_report
    from mentalglm.core.data import read_posts

    options: dict[str, dict] = {}
    for key, value in _parse_options(args.option).items():
        backend, dot, name = key.partition(".")
        if not dot:
            raise MentalGLMError(f"bench options are BACKEND.KEY=VALUE (e.g. llamacpp.n_threads=2), got '{key}'")
        options.setdefault(backend, {})[name] = value
    for backend in ("torch", "llamacpp"):
        options.setdefault(backend, {}).setdefault("max_new_tokens", str(args.max_new_tokens))
    task = _plugins().task(args.task)
    posts = read_posts(args.data, task, data_mapping(args))[: args.posts]
    out_dir = Path(args.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    variants = parse_variants(args.backends, args.model, out_dir, options)
    progress = None if args.quiet else (lambda label, r: print(f"round {r}: {label} done", file=sys.stderr))
    results = run_bench(variants, args.task, posts, rounds=args.rounds, mode=args.mode, batch_size=args.batch_size,
                        progress=progress)
    meta = {"task": args.task, "model": args.model, "data": args.data, "posts": len(posts), "rounds": args.rounds,
            "mode": args.mode, "batch_size": args.batch_size or "backend default",
            "max_new_tokens": args.max_new_tokens,
            "variants": [vars(v) for v in variants]}
    document = write_report(results, out_dir, meta)
    if args.json:
        _print_json(document)
        return 0
    rows = []
    for r in document["results"]:
        metric = "-" if r["primary_value"] is None else f"{r['primary_metric']}={r['primary_value']:.3f}"
        if r.get("primary_interval"):
            metric += f" [{r['primary_interval']['low']:.3f}, {r['primary_interval']['high']:.3f}]"
        delta = r.get("primary_delta") or {}
        paired = "-" if "delta" not in delta else f"{delta['delta']:+.3f}" + (
            f" [{delta['low']:+.3f}, {delta['high']:+.3f}]" if delta.get("low") is not None else "")
        rows.append((r["label"], f"{r['posts_per_second']:.2f}", f"{r['tokens_per_second']:.1f}",
                     f"{r['p50_latency_s']:.3f}", f"{r['p95_latency_s']:.3f}", _mib(r["memory_bytes"]),
                     f"{r['valid_rate']:.0%}", metric, paired, f"{r['speed_vs_first']:.2f}×"))
    print(_table(rows, ["backend", "posts/s", "tokens/s", "p50 s", "p95 s", "load memory", "valid", "metric",
                        "Δ metric vs first (paired)", "vs first"]))
    machine = document["machine"]
    print(f"machine: {machine['cpu']}, {machine['cores']} cores, GPU: {machine['gpu'] or 'none'}; "
          f"{len(posts)} posts × {args.rounds} rounds, alternating; wrote {out_dir / 'bench.json'}"
          + (f" and {document['chart']}" if document.get("chart") else ""))
    return 0


def cmd_quickstart(args) -> int:
    """The offline end-to-end demo on the synthetic samples."""
    from mentalglm.demo.quickstart import run_quickstart

    run_quickstart(cache_dir=args.cache_dir, output_dir=args.output_dir, steps=args.steps)
    return 0


def cmd_inspect(args) -> int:
    """Describe a GGUF file."""
    from mentalglm.converters.gguf_inspect import inspect_gguf, render_inspection

    info = inspect_gguf(args.file)
    if args.json:
        _print_json(info)
    else:
        print(render_inspection(info))
    return 0


def cmd_convert(args) -> int:
    """Import an original ChatGLM-layout checkpoint as a transformers-native GLM directory."""
    from mentalglm.converters.chatglm import import_chatglm

    out = import_chatglm(args.model, args.output, dtype=args.dtype)
    if args.json:
        _print_json({"output": str(out)})
    else:
        print(f"wrote transformers-native GlmForCausalLM to {out} (no remote code needed)")
    return 0


def cmd_merge(args) -> int:
    """Merge a LoRA adapter into its base model directory."""
    from mentalglm.converters.lora import merge_lora

    out = merge_lora(args.model, args.adapter, args.output)
    if args.json:
        _print_json({"output": str(out)})
    else:
        print(f"wrote merged model to {out}")
    return 0


# -- argument parsing -------------------------------------------------------------------------
def _add_model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--task", required=True, help="task name (see `mentalglm tasks`) or a task file (.yaml/.toml)")
    parser.add_argument("--backend", default="llamacpp",
                        help="backend name (see `mentalglm backends`); default llamacpp")
    parser.add_argument("--model", help="what the backend loads: GGUF file, model directory, saved outputs…")
    parser.add_argument("--prompt", default="glm4-chat", help="prompt style (glm4-chat or plain); default glm4-chat")
    parser.add_argument("--system", help="system message for chat prompt styles")
    parser.add_argument("-O", "--option", action="append", metavar="KEY=VALUE",
                        help="backend option, repeatable (see `mentalglm backends`)")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="posts per backend call (default: the backend's choice, 8; llamacpp: 4 per parallel slot)")
    parser.add_argument("--mode", choices=["generate", "score"], default="generate",
                        help="generate the answer, or (single-label tasks) pick the label by log-likelihood")
    parser.add_argument("--no-explain", action="store_true", help="score mode: skip generating the explanation")
    parser.add_argument("--confidence", action="store_true",
                        help="generate mode, single-label tasks: also score every label after the answer "
                             "(scores, and confidence: the probability of the generated label)")
    redact = parser.add_mutually_exclusive_group()
    redact.add_argument("--redact", dest="redact", action="store_true", default=None,
                        help="redact phone numbers, e-mails, URLs, @mentions, ID numbers before the backend sees posts "
                             "(default: on for the openai backend only)")
    redact.add_argument("--no-redact", dest="redact", action="store_false", help="never redact")
    parser.add_argument("--strict-format", action="store_true",
                        help="only answers with a label line (标签：…) count; others are invalid")
    parser.add_argument("--quiet", action="store_true", help="no progress line on stderr")
    parser.add_argument("--json", action="store_true", help="JSON on stdout")
    _add_policy_arguments(parser, applying=True)


def _add_policy_arguments(parser: argparse.ArgumentParser, *, applying: bool) -> None:
    if applying:
        parser.add_argument("--calibration", metavar="FILE",
                            help="score mode: calibration.json of mentalglm calibrate; predictions carry probabilities")
    parser.add_argument("--target-recall", type=_target_recall, metavar="LABEL=R",
                        help=("the threshold for LABEL reaching recall R on the dev run (chosen at calibrate time)"
                              if applying else "choose the threshold on LABEL's probability that reaches recall R"))
    parser.add_argument("--review-band", type=_band, metavar="LO:HI",
                        help="posts whose risk-label probability is in [LO, HI] get needs_review: true")


def _target_recall(text: str) -> tuple[str, float]:
    """An argparse type: ``LABEL=R`` with 0 < R ≤ 1."""
    label, sep, value = text.rpartition("=")
    try:
        recall = float(value)
    except ValueError:
        recall = -1.0
    if not sep or not label.strip() or not 0 < recall <= 1:
        raise argparse.ArgumentTypeError(f"expected LABEL=R with 0 < R ≤ 1, got '{text}'")
    return label.strip(), recall


def _band(text: str) -> tuple[float, float]:
    """An argparse type: ``LO:HI`` with 0 ≤ LO ≤ HI ≤ 1."""
    low, sep, high = text.partition(":")
    try:
        band = (float(low), float(high))
    except ValueError:
        band = (-1.0, -1.0)
    if not sep or not 0 <= band[0] <= band[1] <= 1:
        raise argparse.ArgumentTypeError(f"expected LO:HI with 0 ≤ LO ≤ HI ≤ 1, got '{text}'")
    return band


def _add_bootstrap_arguments(parser: argparse.ArgumentParser) -> None:
    from mentalglm.core.statistics import DEFAULT_RESAMPLES, DEFAULT_SEED  # light: no numpy at import

    parser.add_argument("--bootstrap", type=at_least(0), default=DEFAULT_RESAMPLES, metavar="N",
                        help="percentile-bootstrap resamples over posts for the 95 %% intervals (default %(default)s; "
                             "0: off, rates keep their Wilson interval)")
    parser.add_argument("--seed", type=at_least(0), default=DEFAULT_SEED,
                        help="seed of the bootstrap resampling (default %(default)s)")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``mentalglm`` command."""
    parser = argparse.ArgumentParser(
        prog="mentalglm",
        description="Explainable mental-health analysis of Chinese social-media posts with MentalGLM.")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging on stderr (-vv: debug)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

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

    p = sub.add_parser("analyze", help="label and explain posts")
    _add_model_arguments(p)
    p.add_argument("text", nargs="*", metavar="TEXT", help="posts to analyse")
    p.add_argument("--input", metavar="FILE", help="posts file (.jsonl, .json, .csv, .tsv, .txt) or sample:NAME")
    p.add_argument("--output", metavar="FILE", help="append predictions to this JSONL file; reruns resume")
    add_data_arguments(p)
    add_executor_arguments(p)
    p.set_defaults(func=cmd_analyze)

    p = sub.add_parser("evaluate", help="score a backend on gold-labelled data")
    _add_model_arguments(p)
    p.add_argument("--data", required=True, metavar="FILE",
                   help="gold-labelled posts or C-IMHI records, or sample:NAME")
    p.add_argument("--output-dir", required=True, metavar="DIR",
                   help="where predictions.jsonl, metrics.json and report.md go; reruns resume")
    p.add_argument("--bertscore-model", metavar="DIR",
                   help="a local encoder folder (e.g. bert-base-chinese): add BERTScore F1 of the explanations "
                        "against the gold ones; nothing is downloaded")
    p.add_argument("--bertscore-layer", type=at_least(1), metavar="N",
                   help="the encoder layer BERTScore uses (default: the last; bert-score uses 8 for bert-base-chinese)")
    add_gold_argument(p)
    _add_bootstrap_arguments(p)
    add_data_arguments(p)
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("compare", help="two evaluation runs on the same posts, paired: deltas with 95 %% CIs, "
                                       "McNemar, Cohen's κ, the posts they disagree on")
    p.add_argument("run_a", metavar="RUN_A", help="evaluation folder (evaluate --output-dir) of the baseline")
    p.add_argument("run_b", metavar="RUN_B", help="evaluation folder of the run compared with it (deltas are B − A)")
    p.add_argument("--task", help="task file the runs used, when they used one rather than a task name")
    _add_bootstrap_arguments(p)
    p.add_argument("--json", action="store_true", help="JSON on stdout")
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("calibrate", help="calibrated probabilities and a risk-label decision policy, fitted on a "
                                         "labelled evaluate --mode score folder")
    p.add_argument("run_dir", metavar="RUN_DIR", help="evaluate --mode score --output-dir of labelled dev posts")
    p.add_argument("-o", "--output", default="calibration.json", metavar="FILE",
                   help="the calibration file (default calibration.json; the reliability diagram goes beside it)")
    p.add_argument("--method", choices=["temperature", "platt", "isotonic"], default="temperature",
                   help="temperature scaling (default), or platt / isotonic (two-label tasks)")
    p.add_argument("--risk-label", metavar="LABEL",
                   help="the label platt/isotonic and the review band are about (default: the --target-recall "
                        "label, else the task's reported label)")
    p.add_argument("--bins", type=int, default=15, help="equal-width bins of the expected calibration error")
    p.add_argument("--task", help="task file the run used, when it used one rather than a task name")
    _add_policy_arguments(p, applying=False)
    p.add_argument("--json", action="store_true", help="JSON on stdout")
    p.set_defaults(func=cmd_calibrate)

    add_train_parser(sub)
    add_data_parser(sub)
    add_review_parser(sub)
    add_batch_parser(sub)

    p = sub.add_parser("export", help="convert a GLM model (and LoRA adapter) to a GGUF file for llama.cpp")
    p.add_argument("--model", required=True, metavar="DIR",
                   help="GlmForCausalLM, Glm4ForCausalLM or ChatGLM-layout directory")
    p.add_argument("--adapter", metavar="DIR", help="peft LoRA adapter to merge while converting")
    p.add_argument("--outtype", default="f16", help="f32, f16, bf16, q8_0, q4_k_m, q5_k_m or q6_k (default f16)")
    p.add_argument("-o", "--output", required=True, metavar="FILE.gguf", help="the GGUF file to write")
    p.add_argument("--name", help="general.name written into the file (default: the model folder's name)")
    p.add_argument("--ctx", type=int, default=4096, help="context length for the memory estimate (default 4096)")
    p.add_argument("--json", action="store_true", help="JSON on stdout")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("quickstart",
                       help="offline end-to-end demo: train, export, analyse and evaluate on synthetic posts")
    p.add_argument("--cache-dir", metavar="DIR", help="demo model cache (default ~/.cache/mentalglm/quickstart)")
    p.add_argument("--output-dir", default="runs/quickstart", metavar="DIR",
                   help="evaluation runs (default runs/quickstart)")
    p.add_argument("--steps", type=int, help="training steps (default 60)")
    p.set_defaults(func=cmd_quickstart)

    p = sub.add_parser("bench", help="backends side by side: speed, latency, memory, valid outputs, metric")
    p.add_argument("--model", required=True, metavar="DIR", help="model directory (or a .gguf for llamacpp only)")
    p.add_argument("--backends", default="torch,llamacpp:q8_0",
                   help="comma list: torch, llamacpp[:OUTTYPE], each with optional @KEY=VALUE options "
                        "(llamacpp:q8_0@parallel=1,llamacpp:q8_0@parallel=8; default torch,llamacpp:q8_0)")
    p.add_argument("--task", required=True, help="task name")
    p.add_argument("--data", required=True, metavar="FILE", help="posts (gold labels optional) or sample:NAME")
    p.add_argument("--posts", type=int, default=32, help="how many posts of the file (default 32)")
    p.add_argument("--rounds", type=int, default=3, help="alternating rounds (default 3)")
    p.add_argument("--mode", choices=["generate", "score"], default="generate")
    p.add_argument("--batch-size", type=int, default=None,
                   help="posts per backend call (default: each backend's choice)")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("-O", "--option", action="append", metavar="BACKEND.KEY=VALUE", help="backend option, repeatable")
    p.add_argument("--output-dir", default="runs/bench", metavar="DIR", help="bench.json, bench.png, exported GGUFs")
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    p.add_argument("--json", action="store_true", help="JSON on stdout")
    add_data_arguments(p)
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("sizes", help="file size and memory per GGUF out type, computed from a model's config")
    p.add_argument("--model", required=True, metavar="DIR",
                   help="model directory or its config.json (weights not needed)")
    p.add_argument("--ctx", type=int, action="append",
                   help="context length(s) for the memory column (default 4096, 32768)")
    p.add_argument("--parallel", type=int, default=8, metavar="N",
                   help="parallel sequences for the KV-cache line (llamacpp -O parallel=N; default 8, the CPU default)")
    p.add_argument("--json", action="store_true", help="JSON on stdout")
    p.set_defaults(func=cmd_sizes)

    p = sub.add_parser("inspect", help="architecture, size, tensor types, tokenizer and provenance of a GGUF file")
    p.add_argument("file", metavar="FILE.gguf")
    p.add_argument("--json", action="store_true", help="JSON on stdout")
    p.set_defaults(func=cmd_inspect)

    p = sub.add_parser("convert",
                       help="import an original THUDM ChatGLM-layout checkpoint as a transformers-native GLM")
    p.add_argument("--model", required=True, metavar="DIR",
                   help="ChatGLM-layout directory (e.g. the released MentalGLM)")
    p.add_argument("-o", "--output", required=True, metavar="DIR", help="where the GlmForCausalLM directory goes")
    p.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], help="weights dtype (default: as stored)")
    p.add_argument("--json", action="store_true", help="JSON on stdout")
    p.set_defaults(func=cmd_convert)

    p = sub.add_parser("merge", help="merge a peft LoRA adapter into its base model (safetensors directory)")
    p.add_argument("--model", required=True, metavar="DIR", help="the base model directory")
    p.add_argument("--adapter", required=True, metavar="DIR", help="the peft LoRA adapter directory")
    p.add_argument("-o", "--output", required=True, metavar="DIR", help="where the merged model goes")
    p.add_argument("--json", action="store_true", help="JSON on stdout")
    p.set_defaults(func=cmd_merge)
    for command in sub.choices.values():  # -v also after the sub-command: `mentalglm analyze -v …`
        if "-v" not in command._option_string_actions:
            command.add_argument("-v", "--verbose", action="count", default=argparse.SUPPRESS,
                                 help="more logging on stderr (-vv: debug)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    warnings.formatwarning = lambda message, category, *rest: f"{message}\n"  # one line, no source echo
    logging.basicConfig(level=(logging.WARNING, logging.INFO, logging.DEBUG)[min(args.verbose, 2)],
                        format="mentalglm: %(message)s", stream=sys.stderr)
    if not args.command:
        parser.print_help()
        return 0
    try:
        return args.func(args)
    except MentalGLMError as exc:
        print(f"mentalglm: error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("mentalglm: interrupted; rerun the same command to resume", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        return 0
