"""``mentalglm review export | import | stats``: expert review in Label Studio.

The round trip: ``export`` writes a run's predictions as Label Studio tasks and a labelling
config, experts review them in Label Studio, ``import`` reads Label Studio's JSON export back as
review records, ``stats`` measures agreement. Nothing heavy is imported at module level, so
``mentalglm --help`` stays instant.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from mentalglm.cli.common import add_bootstrap_arguments, add_data_arguments, data_mapping, plugins, print_json, table
from mentalglm.core.errors import MentalGLMError

#: task kind → whether a post has several labels; review needs a task with labels.
LABEL_KINDS = {"single-label": False, "multi-label": True, "hierarchical": True}


def _run_files(run: str) -> tuple[Path, Path]:
    """``(predictions.jsonl, run record)`` of an evaluation folder or of an ``analyze --output`` file."""
    from mentalglm.analysis.run_record import sidecar_path

    path = Path(run)
    if path.is_dir():
        return path / "predictions.jsonl", path / "run.json"
    return path, sidecar_path(path)


def _labelled_task(name: str):
    task = plugins().task(name)
    if task.kind not in LABEL_KINDS:
        raise MentalGLMError(f"review needs a task with labels; '{task.name}' is {task.kind}")
    return task


def _post_texts(data: str, task, mapping, wanted: set[str], record: dict, record_path: Path) -> dict[str, str]:
    """The text of each wanted post, read from the run's data, which must be the data the run was made on."""
    from mentalglm.data.readers import PostSource

    source = PostSource(data, task, mapping)
    expected = record.get("posts_sha256")
    if expected:
        digest, _ = source.digest()
        if digest != expected:
            raise MentalGLMError(f"{data}: the posts read differ from those the run was made on ({record_path} "
                                 "posts_sha256); give the run's mapping flags, or --data FILE holding its posts")
    texts = {post.id: post.text for post in source if post.id in wanted}
    missing = sorted(wanted - set(texts))
    if missing:
        raise MentalGLMError(f"{data}: no post '{missing[0]}' ({len(missing)} predictions without a post); give "
                             "--data FILE holding the run's posts")
    return texts


def cmd_review_export(args) -> int:
    """Write a run's predictions as Label Studio tasks (with pre-annotations) and the labelling config."""
    from mentalglm.core.files import read_json_object, write_json
    from mentalglm.data.readers import iter_done
    from mentalglm.review.label_studio import Scale, build_tasks, labeling_config

    scale = Scale.parse(args.scale)
    predictions, record_path = _run_files(args.run)
    if not predictions.is_file():
        raise MentalGLMError(f"{predictions}: predictions not found (give an evaluate --output-dir folder or an "
                             "analyze --output file)")
    record = read_json_object(record_path, "run record") if record_path.is_file() else {}
    task_name = args.task or record.get("task")
    if not task_name:
        raise MentalGLMError(f"{args.run}: no run record naming the task ({record_path}); give --task")
    task = _labelled_task(task_name)
    rows = list(iter_done(predictions))
    if not rows:
        raise MentalGLMError(f"{predictions}: no predictions to export")
    other = next((r for r in rows if r.get("task") not in (None, task.name)), None)
    if other is not None:
        raise MentalGLMError(f"{predictions}: prediction '{other.get('id')}' is of task '{other.get('task')}', "
                             f"not '{task.name}'")
    data = args.data or record.get("data")
    if not data:
        raise MentalGLMError(f"{args.run}: the run records no data file (posts given on the command line); give "
                             "--data FILE with its posts")
    # --data may name the posts elsewhere, never other posts: the digest check applies either way.
    try:
        texts = _post_texts(data, task, data_mapping(args), {str(r["id"]) for r in rows}, record, record_path)
    except MentalGLMError as exc:
        if args.data:
            raise
        raise MentalGLMError(f"{exc} (the data {record_path} names; give --data FILE where the posts are "
                             "now)") from None
    labels = list(task.label_names)
    risk_label = args.risk_label or ((record.get("calibration") or {}).get("policy") or {}).get("risk_label")
    if risk_label is None and task.kind == "single-label":
        reported = getattr(task, "report_label_f1", ())
        risk_label = reported[0] if reported else labels[0]  # as calibrate chooses it
    if risk_label is not None and risk_label not in labels:
        raise MentalGLMError(f"unknown label '{risk_label}' for task '{task.name}'; its labels: {'、'.join(labels)}")
    model = Path(str(record.get("model") or "")).name  # a file name, not the local path, leaves the machine
    tasks, summary = build_tasks(rows, texts, task_name=task.name, label_names=labels,
                                 multiple=LABEL_KINDS[task.kind], scale=scale, redact=args.redact,
                                 risk_label=risk_label,
                                 model_version=f"{record.get('backend') or 'mentalglm'}:{model}".rstrip(":"))
    output = Path(args.output)
    config = Path(args.config_out) if args.config_out else output.with_name(
        (output.name[:-len(output.suffix)] if output.suffix else output.name) + ".label_config.xml")
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
        write_json(output, tasks)
        config.write_text(labeling_config(labels, multiple=LABEL_KINDS[task.kind], scale=scale), encoding="utf-8")
    except OSError as exc:
        raise MentalGLMError(f"{output}: cannot write the export: {exc.strerror or exc}") from None
    document = {**summary.to_dict(), "output": str(output), "label_config": str(config), "task": task.name}
    if args.json:
        print_json(document)
        return 0
    print(f"{summary.tasks} tasks for Label Studio → {output} (labelling config {config}); ordered by risk × "
          f"uncertainty ({summary.with_probabilities} with probabilities, risk label {risk_label or 'none'}), "
          f"{summary.needs_review} in the review band, {summary.invalid} without a readable label")
    print(f"posts {'redacted' if args.redact else 'NOT redacted (--no-redact)'}"
          + (f" ({summary.redacted_items} items replaced)" if args.redact else "")
          + f"; evidence: {summary.evidence_spans} spans highlighted"
          + (f", {summary.evidence_not_found} quotes not found in the post (listed in each task)"
             if summary.evidence_not_found else ""))
    return 0


def cmd_review_import(args) -> int:
    """Read Label Studio's JSON export into review records (and, optionally, corrected training records)."""
    from mentalglm.core.files import read_json
    from mentalglm.review.label_studio import read_export

    document = read_json(args.export, "Label Studio export")
    records, summary = read_export(document, args.export)
    output = Path(args.output)
    _write_jsonl(output, records)
    written_records = None
    if args.records:
        written_records = _write_training(args, document, records)
    result = {**summary.to_dict(), "records": len(records), "output": str(output),
              **({"training_records": written_records, "training_output": args.records} if args.records else {})}
    if args.json:
        print_json(result)
        return 0
    print(f"{len(records)} reviews of {summary.tasks - summary.tasks_without_annotations} of {summary.tasks} tasks "
          f"→ {output}; skipped: {summary.cancelled} cancelled, {summary.drafts} unsubmitted drafts")
    if summary.tasks_without_annotations:
        print(f"{summary.tasks_without_annotations} tasks have no submitted review")
    if summary.without_label:
        print(f"{summary.without_label} reviews give no label", file=sys.stderr)
    for item in summary.unknown_labels:
        print(f"task {item['task']} (post {item['post_id']}, {item['reviewer']}): label '{item['value']}' is not one "
              "of the task's; kept in the record's unknown_labels, not counted as a label", file=sys.stderr)
    for name, count in summary.unrecognised_controls.items():
        print(f"{count} results of control '{name}', which the labelling config does not have: kept in the "
              "records' 'other'", file=sys.stderr)
    missing = {k: v for k, v in summary.missing_ratings.items() if v}
    if missing:
        print("reviews without a rating: " + ", ".join(f"{k} {v}" for k, v in missing.items()), file=sys.stderr)
    if args.records:
        print(f"{written_records} corrected training records → {args.records} (mentalglm train --data "
              f"{args.records} …)")
    return 0


def _write_jsonl(path: Path, rows) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "w", encoding="utf-8") as handle:
            for row in rows:
                handle.write(json.dumps(row, ensure_ascii=False) + "\n")
    except OSError as exc:
        raise MentalGLMError(f"{path}: cannot write: {exc.strerror or exc}") from None


def _write_training(args, document, records) -> int:
    from mentalglm.review.gold import training_records

    tasks = [t for t in document if isinstance(t, dict) and isinstance(t.get("data"), dict)]
    names = {t["data"].get("task") for t in tasks}
    name = args.task or (names.pop() if len(names) == 1 else None)
    if not name:
        raise MentalGLMError(f"{args.export}: tasks of several tasks ({', '.join(sorted(map(str, names)))}); give "
                             "--task")
    rows = list(training_records(records, tasks, _labelled_task(name)))
    _write_jsonl(Path(args.records), rows)
    return len(rows)


def _model_labels(path: str) -> dict[str, list[str]]:
    from mentalglm.data.readers import iter_done

    predictions, _ = _run_files(path)
    if not predictions.is_file():
        raise MentalGLMError(f"{predictions}: predictions not found")
    return {str(r["id"]): list(r.get("labels") or ()) if r.get("valid", True) else [] for r in iter_done(predictions)}


def cmd_review_stats(args) -> int:
    """Inter-rater agreement, model-vs-expert agreement and mean ratings of review records."""
    from mentalglm.evaluation.statistics import format_interval
    from mentalglm.review.agreement import review_stats
    from mentalglm.review.gold import read_reviews

    records = read_reviews(args.reviewed)
    document = review_stats(records, model_labels=_model_labels(args.predictions) if args.predictions else None,
                            resamples=args.bootstrap, seed=args.seed)
    document["reviewed"] = args.reviewed
    if args.json:
        print_json(document)
        return 0

    def shown(value):
        return "—" if value is None else f"{value:.4f}"

    print(f"{document['reviews']} reviews of {document['posts']} posts by {len(document['reviewers'])} reviewers"
          + (f" ({document['duplicates']} earlier reviews by the same reviewer set aside)"
             if document["duplicates"] else ""))
    rows = []
    for name, result in document["agreement"].items():
        primary = "κ" if result["primary"] == "cohen_kappa" else "α"
        rating = document["ratings"].get(name)
        mean = "" if rating is None or rating["mean"] is None else (
            f"{rating['mean']:.2f} {format_interval(rating['interval'], 2)}".rstrip())
        rows.append((name, result["level"], result["posts_with_two_or_more"],
                     f"{primary} {shown(result.get(result['primary']))}", shown(result["krippendorff_alpha"]),
                     shown(result.get("cohen_kappa_quadratic")),
                     shown(result["percent_agreement"]), mean or "—"))
    print(table(rows, ["dimension", "level", "posts ≥2 reviews", "agreement", "α", "κ quadratic",
                        "exact agreement", "mean rating [95 % CI]"]))
    versus = document["model_vs_expert"]
    if versus["posts"]:
        print(f"model vs. experts' majority on {versus['posts']} posts: accuracy {versus['accuracy']:.4f} "
              f"{format_interval(versus['accuracy_interval'])}, κ {shown(versus['cohen_kappa'])}; "
              f"{versus['reviews_confirming']} reviews confirmed the model's label, "
              f"{versus['reviews_correcting']} corrected it")
    if versus["ties"]:
        print(f"tied posts (no majority, left out): {', '.join(versus['ties'])}")
    return 0


# -- the parser -----------------------------------------------------------------------------
def add_parser(sub) -> None:
    """Add ``mentalglm review export | import | stats`` to the sub-command parsers."""
    review = sub.add_parser("review", help="expert review in Label Studio: export tasks with pre-annotations, "
                                           "import the reviews, agreement statistics")
    commands = review.add_subparsers(dest="review_command", metavar="SUBCOMMAND", required=True)

    p = commands.add_parser("export", help="a run's predictions as Label Studio tasks, most urgent first, and the "
                                           "labelling config")
    p.add_argument("run", metavar="RUN", help="evaluate --output-dir folder, or an analyze --output file")
    p.add_argument("--to", choices=["label-studio"], default="label-studio", help="the review tool (label-studio)")
    p.add_argument("-o", "--output", required=True, metavar="TASKS.json", help="the Label Studio import file")
    p.add_argument("--config-out", metavar="FILE.xml",
                   help="where the labelling config goes (default: TASKS.label_config.xml beside the output)")
    p.add_argument("--scale", default="1-5", metavar="LOW-HIGH",
                   help="rating scale of the explanation dimensions (default 1-5)")
    p.add_argument("--risk-label", metavar="LABEL",
                   help="the label whose probability weighs the review order (default: the calibration's risk "
                        "label, else the task's reported label, else its first; multi-label: none)")
    p.add_argument("--no-redact", dest="redact", action="store_false",
                   help="export posts as written (default: phone numbers, e-mails, URLs, @mentions, ID numbers "
                        "redacted, as the file leaves the machine)")
    p.add_argument("--data", metavar="FILE", help="the run's posts, when not where run.json says")
    p.add_argument("--task", help="task file the run used, when it used one rather than a task name")
    add_data_arguments(p)
    p.add_argument("--json", action="store_true", help="JSON on stdout")
    p.set_defaults(func=cmd_review_export)

    p = commands.add_parser("import", help="Label Studio's JSON export as review records (one per annotation)")
    p.add_argument("export", metavar="EXPORT.json", help="the project exported from Label Studio as JSON")
    p.add_argument("-o", "--output", required=True, metavar="REVIEWED.jsonl", help="the review records")
    p.add_argument("--records", metavar="TRAIN.jsonl",
                   help="also write corrected C-IMHI records (majority label, reviewed explanation) for "
                        "mentalglm train --data")
    p.add_argument("--task", help="task name or file, for --records (default: the one the tasks name)")
    p.add_argument("--json", action="store_true", help="JSON on stdout")
    p.set_defaults(func=cmd_review_import)

    p = commands.add_parser("stats", help="inter-rater agreement (Cohen's κ, Krippendorff's α), model vs. experts, "
                                          "mean ratings with 95 %% intervals")
    p.add_argument("reviewed", metavar="REVIEWED.jsonl", help="review records of mentalglm review import")
    p.add_argument("--predictions", metavar="RUN",
                   help="the model's predictions (run folder or predictions file; default: the labels the export "
                        "recorded)")
    add_bootstrap_arguments(p)
    p.add_argument("--json", action="store_true", help="JSON on stdout")
    p.set_defaults(func=cmd_review_stats)
