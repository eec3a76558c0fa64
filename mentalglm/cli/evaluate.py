"""``mentalglm evaluate | compare | calibrate``: numbers about runs."""

from __future__ import annotations

import argparse
import sys

from mentalglm.cli.common import (
    add_bootstrap_arguments,
    add_data_arguments,
    add_model_arguments,
    add_policy_arguments,
    at_least,
    data_mapping,
    make_analyzer,
    plugins,
    print_json,
    table,
)
from mentalglm.cli.review import LABEL_KINDS
from mentalglm.core.errors import MentalGLMError


def cmd_evaluate(args) -> int:
    """Evaluate on gold-labelled data; write predictions, metrics and a report."""
    from mentalglm.data.readers import read_posts
    from mentalglm.evaluation.evaluate import evaluate

    pm = plugins()
    task = pm.task(args.task)
    posts = apply_gold_argument(args, task, read_posts(args.data, task, data_mapping(args)))
    bertscore = None
    if args.bertscore_model:  # loaded before the run: a wrong folder fails before any post is analysed
        from mentalglm.evaluation.bertscore import BERTScorer

        bertscore = BERTScorer(args.bertscore_model, layer=args.bertscore_layer)
    with make_analyzer(args, task) as analyzer:
        document = evaluate(analyzer, posts, args.output_dir, data=args.data,
                            progress=False if args.quiet else None, bootstrap=args.bootstrap, seed=args.seed,
                            bertscore=bertscore)
    if args.json:
        print_json(document)
        return 0
    counts = document["counts"]
    print(f"{task.name}: {counts['posts']} posts, {counts['invalid']} invalid outputs, "
          f"{counts['without_label_line']} read without a label line ({counts['resumed']} resumed from an earlier run)")
    print(_metric_table(document))
    print(f"wrote {args.output_dir}/predictions.jsonl, metrics.json, report.md")
    return 0


def _metric_table(document: dict) -> str:
    """Headline metrics as ``value [low, high]``, then how the intervals were made."""
    from mentalglm.evaluation.evaluate import headline_metrics, interval_note
    from mentalglm.evaluation.statistics import format_interval

    intervals = document.get("intervals") or {}
    rows = [(k, (f"{v:.4f}" if isinstance(v, float) else str(v)) + (f" {format_interval(intervals[k])}"
                                                                       if k in intervals else ""))
            for k, v in headline_metrics(document["metrics"])]
    return table(rows, ["metric", "value [95 % CI]"]) + "\n" + interval_note(document)


def cmd_compare(args) -> int:
    """Compare two evaluation runs on the same posts, paired: deltas with CIs, McNemar, Cohen's κ."""
    from mentalglm.evaluation.compare import compare_runs, render_comparison

    document = compare_runs(args.run_a, args.run_b, task=args.task, resamples=args.bootstrap, seed=args.seed,
                            plugins=plugins())
    if args.json:
        print_json(document)
    else:
        print(render_comparison(document, table=table))
    return 0


def cmd_calibrate(args) -> int:
    """Fit calibrated probabilities (and a decision policy) on a labelled score-mode evaluation folder."""
    from pathlib import Path

    from mentalglm.core.files import read_json
    from mentalglm.evaluation.calibration import calibrate, reliability_diagram

    record = Path(args.run_dir) / "run.json"
    task_name = args.task or (read_json(record, "run record").get("task") if record.is_file() else None)
    if not task_name:
        raise MentalGLMError(f"{args.run_dir}: no run.json naming the task; give --task")
    task = plugins().task(task_name)
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
        print_json(document)
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


# -- evaluate --gold -------------------------------------------------------------------------------
def add_gold_argument(parser: argparse.ArgumentParser) -> None:
    """``--gold reviewed.jsonl`` on ``evaluate``: the reviewers' majority labels as gold."""
    parser.add_argument("--gold", metavar="REVIEWED.jsonl",
                        help="review records (mentalglm review import): evaluate on the reviewed posts of --data "
                             "with the reviewers' majority label as gold (ties are reported and left out)")


def apply_gold_argument(args, task, posts):
    """The posts to evaluate: as read, or (``--gold``) the reviewed ones with the reviewers' labels as gold."""
    if not getattr(args, "gold", None):
        return posts
    from mentalglm.review.gold import apply_gold, read_reviews, reviewed_gold

    if task.kind not in LABEL_KINDS:
        raise MentalGLMError(f"--gold needs a task with labels; '{task.name}' is {task.kind}")
    gold, ties = reviewed_gold(read_reviews(args.gold), task.label_names)
    chosen, note = apply_gold(posts, gold)
    print(f"gold from {args.gold}: {note['reviewed']} reviewed posts ({note['changed']} relabelled), "
          f"{note['unreviewed']} posts of the data without a review left out"
          + (f", {len(ties)} tied posts left out: {', '.join(ties[:10])}{' …' if len(ties) > 10 else ''}"
             if ties else "")
          + (f", {len(note['not_in_data'])} reviewed ids not in the data" if note["not_in_data"] else ""),
          file=sys.stderr)
    return chosen


def add_parser(sub) -> None:
    """Add ``evaluate``, ``compare`` and ``calibrate``."""
    p = sub.add_parser("evaluate", help="score a backend on gold-labelled data")
    add_model_arguments(p)
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
    add_bootstrap_arguments(p)
    add_data_arguments(p)
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("compare", help="two evaluation runs on the same posts, paired: deltas with 95 %% CIs, "
                                       "McNemar, Cohen's κ, the posts they disagree on")
    p.add_argument("run_a", metavar="RUN_A", help="evaluation folder (evaluate --output-dir) of the baseline")
    p.add_argument("run_b", metavar="RUN_B", help="evaluation folder of the run compared with it (deltas are B − A)")
    p.add_argument("--task", help="task file the runs used, when they used one rather than a task name")
    add_bootstrap_arguments(p)
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
    add_policy_arguments(p, applying=False)
    p.add_argument("--json", action="store_true", help="JSON on stdout")
    p.set_defaults(func=cmd_calibrate)
