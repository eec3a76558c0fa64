"""Evaluation runs: predictions.jsonl, metrics.json and report.md in one output folder.

A run folder also holds ``run.json``: every setting that changes a prediction, and the data's
SHA-256 (see :mod:`mentalglm.analysis.run_record`). Rerunning the same command resumes: ids
already in ``predictions.jsonl`` are not analysed again; other settings or other data in the
same folder are refused, naming the setting, rather than mixed in.

Every real-valued headline metric carries a 95 % confidence interval in ``metrics.json``
(``intervals``) and ``report.md``: Wilson score intervals for rates of posts, a seeded
percentile bootstrap over posts for the rest (see :mod:`mentalglm.evaluation.statistics`). The
bootstrap settings are kept in ``metrics.json`` (``bootstrap``), not in ``run.json``: they
change the intervals, never a prediction, so a rerun with other settings simply re-scores.
"""

from __future__ import annotations

import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Sequence

from mentalglm.analysis.analyzer import Analyzer
from mentalglm.core.errors import MentalGLMError
from mentalglm.core.files import read_json, write_json
from mentalglm.core.prediction import Post
from mentalglm.core.provenance import package_versions
from mentalglm.data.readers import read_done
from mentalglm.evaluation import statistics
from mentalglm.evaluation.explanation_metrics import explanation_metrics, grounding_metrics


def evaluate(analyzer: Analyzer, posts: Sequence[Post], output_dir: str | Path, *, data: str,
             progress: bool | None = None, bootstrap: int = statistics.DEFAULT_RESAMPLES,
             seed: int = statistics.DEFAULT_SEED, bertscore=None) -> dict:
    """Analyse gold-labelled posts and score them with the task's metrics, each with a 95 % interval.

    Args:
        analyzer: the configured Analyzer.
        posts: posts that all carry a gold answer.
        output_dir: the run folder (created if missing).
        data: how the data was named (recorded in metrics.json).
        progress: show a progress line (default: when stderr is a terminal).
        bootstrap: percentile-bootstrap resamples over posts for the intervals (0: bootstrap off;
            rates still get their Wilson interval). Not part of the run record: it changes no prediction.
        seed: seed of the bootstrap's resampling.
        bertscore: a :class:`~mentalglm.evaluation.bertscore.BERTScorer` to add BERTScore F1 to the
            explanation metrics (a local model the user named); like the bootstrap, not part of the run record.

    Returns:
        The metrics document, also written to ``metrics.json``.

    Raises:
        MentalGLMError: a post without a gold answer, or a folder holding another run.
    """
    if bootstrap < 0 or seed < 0:
        raise MentalGLMError("--bootstrap and --seed must be zero or more")
    task = analyzer.task
    unlabelled = [p for p in posts if p.gold is None]
    if unlabelled:
        first = unlabelled[0]
        raise MentalGLMError(f"{data}:{first.line}: field 'label': missing; evaluation needs a gold answer "
                             f"for every post ({len(unlabelled)} without)")
    folder = Path(output_dir)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise MentalGLMError(f"{folder}: cannot create the output folder: {exc.strerror or exc}") from None
    started = time.time()
    summary = analyzer.run(posts, folder / "predictions.jsonl", progress=progress, data=data,
                           record=folder / "run.json", retry_hint="use another --output-dir or delete it")
    config = read_json(folder / "run.json", "run record")
    saved = read_done(folder / "predictions.jsonl")
    score = score_predictions(task, posts, saved, strict_format=analyzer.strict_format, bootstrap=bootstrap, seed=seed)
    responses, metrics, intervals = score["responses"], score["metrics"], score["intervals"]
    document = {
        **config,
        "counts": {**score["counts"], "analysed_now": summary.analysed, "resumed": summary.skipped},
        "primary_metric": task.primary_metric,
        "primary_value": metrics.get(task.primary_metric),
        "primary_interval": intervals.get(task.primary_metric),
        "metrics": metrics,
        "intervals": intervals,
        "bootstrap": score["bootstrap"],
        "versions": package_versions(),
        "time": {"finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                 "seconds": round(time.time() - started, 3)},
        "invalid_ids": [p.id for p, r in zip(posts, responses) if not r.valid],
        # How the backend did the work (per-replica counts): reported, not a setting.
        **({"backend_stats": summary.backend_stats} if summary.backend_stats else {}),
    }
    rows = [saved[p.id] for p in posts]
    document["grounding"] = grounding_metrics(rows, resamples=bootstrap, seed=seed)
    explained = [i for i, p in enumerate(posts) if p.gold_explanation]
    if explained:  # the data has gold explanations (C-IMHI outputs): score the model's against them
        document["explanations"] = explanation_metrics([responses[i].explanation for i in explained],
                                                       [posts[i].gold_explanation for i in explained],
                                                       resamples=bootstrap, seed=seed, bertscore=bertscore)
    if analyzer.calibration is not None:
        from mentalglm.evaluation.calibration import policy_metrics

        document["policy"] = policy_metrics(analyzer.calibration, rows)
    write_json(folder / "metrics.json", document)
    (folder / "report.md").write_text(render_report(document), encoding="utf-8")
    return document


def score_predictions(task, posts: Sequence[Post], saved: dict[str, dict], *, strict_format: bool = False,
                      bootstrap: int = statistics.DEFAULT_RESAMPLES, seed: int = statistics.DEFAULT_SEED) -> dict:
    """Score saved predictions (by post id) against the posts' gold answers: what a run and a re-score share.

    Scoring reads the raw outputs on disk, so resumed, fresh and re-scored runs are scored identically.

    Returns:
        ``{"responses", "metrics", "intervals", "bootstrap", "counts"}`` (counts: posts, valid, invalid,
        without_label_line).
    """
    responses = [task.parse(saved[p.id]["output"], strict=strict_format) for p in posts]
    golds = [p.gold for p in posts]
    metrics = task.compute_metrics(golds, responses)
    intervals, settings = statistics.metric_intervals(task, golds, responses, metrics, resamples=bootstrap, seed=seed)
    counts = {"posts": len(posts), "valid": metrics["n"] - metrics["invalid"], "invalid": metrics["invalid"],
              "without_label_line": sum(r.valid and not r.label_line for r in responses)}
    return {"responses": responses, "metrics": metrics, "intervals": intervals, "bootstrap": settings,
            "counts": counts}


def _fmt(value) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def headline_metrics(metrics: dict) -> list[tuple[str, object]]:
    """The scalar metrics in display order (per-label tables and matrices left out)."""
    return [(k, v) for k, v in metrics.items() if isinstance(v, (int, float)) and k != "n"]


def interval_note(document: dict) -> str:
    """One sentence saying how the intervals of a metrics document were made."""
    settings = document.get("bootstrap") or {}
    methods = {i["method"] for i in (document.get("intervals") or {}).values()}
    wilson = [k for k, i in (document.get("intervals") or {}).items() if i["method"] == statistics.WILSON]
    parts = []
    if statistics.PERCENTILE_BOOTSTRAP in methods:
        parts.append(f"percentile bootstrap over posts ({settings.get('resamples', 0):,} resamples, "
                     f"seed {settings.get('seed')})")
    elif not settings.get("resamples"):
        parts.append("bootstrap off (--bootstrap 0)")
    if wilson:
        parts.append(f"Wilson score interval for {', '.join(wilson)}")
    confidence = settings.get("confidence", statistics.CONFIDENCE)
    return f"{confidence * 100:g} % confidence intervals: " + "; ".join(parts)


def render_report(document: dict) -> str:
    """A readable Markdown report: summary, metrics with intervals, per-label table and confusion matrix."""
    metrics = document["metrics"]
    intervals = document.get("intervals") or {}
    counts = document["counts"]
    rate = counts["invalid"] / counts["posts"] if counts["posts"] else 0.0
    lines = [f"# Evaluation: {document['task']}", "",
             f"- data: `{document['data']}` ({counts['posts']} posts)",
             f"- backend: `{document['backend']}`, model: `{document['model']}`, prompt: `{document['prompt']}`",
             f"- invalid outputs: {counts['invalid']} ({rate:.1%}) — scored as wrong",
             ("- strict format: answers without a label line count as invalid" if document.get("strict_format")
              else f"- valid answers read without a label line: {counts.get('without_label_line', 0)}"),
             f"- primary metric: **{document['primary_metric']} = {_fmt(document['primary_value'])}**"
             + (f" (95 % CI {statistics.format_interval(intervals[document['primary_metric']])})"
                if document["primary_metric"] in intervals else ""),
             *_grounding_lines(document.get("grounding")),
             f"- {interval_note(document)}",
             f"- finished: {document['time']['finished']}", "",
             "## Metrics", "", "| metric | value | 95 % CI | method |", "| --- | --- | --- | --- |"]
    lines += [f"| {k} | {_fmt(v)} | {statistics.format_interval(intervals.get(k)) or '—'} | "
              f"{intervals[k]['method'] if k in intervals else '—'} |" for k, v in headline_metrics(metrics)]
    if "per_label" in metrics:
        lines += ["", "## Per label", "", "| label | precision | recall | F1 | support |",
                  "| --- | --- | --- | --- | --- |"]
        lines += [f"| {label} | {s['precision']:.4f} | {s['recall']:.4f} | {s['f1']:.4f} | {s['support']} |"
                  for label, s in metrics["per_label"].items()]
    if "per_field" in metrics:
        lines += ["", "## Per field (character ROUGE-L F1)", "", "| field | ROUGE-L |", "| --- | --- |"]
        lines += [f"| {name} | {s['rouge_l']:.4f} |" for name, s in metrics["per_field"].items()]
    matrix = metrics.get("confusion_matrix")
    if matrix and "counts" in matrix:
        lines += ["", "## Confusion matrix (rows: gold, columns: predicted)", "",
                  "| gold \\ predicted | " + " | ".join(matrix["predicted"]) + " |",
                  "| --- |" + " --- |" * len(matrix["predicted"])]
        lines += [f"| {gold} | " + " | ".join(str(c) for c in row) + " |"
                  for gold, row in zip(matrix["gold"], matrix["counts"])]
    elif matrix:
        lines += ["", "## Confusion counts per label", "", "| label | TP | FP | FN | TN |",
                  "| --- | --- | --- | --- | --- |"]
        lines += [f"| {label} | {m['tp']} | {m['fp']} | {m['fn']} | {m['tn']} |" for label, m in matrix.items()]
    if document.get("explanations"):
        lines += ["", *_explanation_lines(document["explanations"])]
    if document.get("policy"):
        lines += ["", *_policy_lines(document["policy"])]
    if document["invalid_ids"]:
        lines += ["", "## Invalid outputs", "", "Post ids: " + ", ".join(document["invalid_ids"]),
                  "", "Their raw text is in `predictions.jsonl` (field `output`, with `problem`)."]
    return "\n".join(lines) + "\n"


def _policy_lines(section: dict) -> list[str]:
    """The report's decision-policy section: the policy first, then what it decided."""
    policy = section["policy"]
    band = policy.get("review_band")
    lines = ["## Decision policy (calibrated)", "",
             f"- calibration: {policy['method']}, risk label `{policy['risk_label']}`",
             f"- threshold: {_fmt(policy['threshold'])}" + (
                 f" (target recall {policy['target_recall']:g}; on the dev run recall {policy['dev_recall']:.4f}, "
                 f"precision {policy['dev_precision']:.4f})" if policy.get("target_recall") is not None else
                 " (none: the most probable label)"),
             f"- review band: {f'{band[0]:g} ≤ p ≤ {band[1]:g}' if band else 'none'}",
             f"- why: {policy['why']}",
             f"- decided: {section['decided']} of {section['posts']} (coverage {_fmt(section['coverage'])}), "
             f"to review: {section['needs_review']}",
             f"- risk-label recall on decided posts: {_fmt(section['risk_recall'])}, precision: "
             f"{_fmt(section['risk_precision'])}; recall counting review as caught: "
             f"{_fmt(section['risk_recall_with_review'])}"]
    if "calibration" in section:
        lines.append(f"- calibrated probabilities on these posts: ECE {section['calibration']['ece']:.4f}, "
                     f"Brier {section['calibration']['brier']:.4f}")
    return lines


def _grounding_lines(section: dict | None) -> list[str]:
    """The summary line on quoted spans: how many the posts contain ("% grounded")."""
    if not section or not section["spans"]:
        return ["- grounded quotes: the answers quote nothing"] if section else []
    interval = statistics.format_interval(section["intervals"].get("grounded"))
    return [f"- grounded quotes: **{section['grounded']:.1%}** of {section['spans']} quoted spans in "
            f"{section['quoting']} answers are in the post" + (f" (95 % CI {interval})" if interval else "")
            + f"; answers quoting something the post lacks: {section['quoting'] - section['fully_grounded_answers']}"]


def _explanation_lines(section: dict) -> list[str]:
    """The report's explanation section: ROUGE-L and BLEU against the gold explanations."""
    intervals = section["intervals"]
    return [f"## Explanations (against {section['n']} gold explanations)", "",
            "| metric | value | 95 % CI |", "| --- | --- | --- |",
            *(f"| {label} | {section[name]:.4f} | {statistics.format_interval(intervals.get(name)) or '—'} |"
              for name, label in (("rouge_l", "ROUGE-L"), ("bleu", "BLEU"), ("bertscore_f1", "BERTScore F1"))
              if section.get(name) is not None),
            "", "ROUGE-L: character-level F1 (rouge-score); BLEU: corpus BLEU, sacreBLEU's `zh` tokenizer, 0–1."
            + (f" BERTScore: `{section['bertscore_model']['model']}`, layer {section['bertscore_model']['layer']},"
               " no idf, no rescaling." if section.get("bertscore_model") else "")]
