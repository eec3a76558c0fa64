"""Paired comparison of two evaluation runs on the same posts (``mentalglm compare RUN_A RUN_B``).

Two runs scored on the same posts are not independent samples: most posts are easy or hard for
both. Comparing their headline numbers with two separate intervals wastes that pairing and
overstates the uncertainty of the difference. Here every statistic is paired by post id:

- metric differences B − A, each with a paired percentile-bootstrap interval (both runs are
  scored on the *same* resampled posts, see :func:`~mentalglm.evaluation.statistics.bootstrap_replicates`);
- McNemar's exact test on per-post correctness (exact binomial on the posts only one run got right);
- Cohen's κ between the two runs' labels (per label for multi-label tasks);
- per-label F1 deltas and the ids of the posts whose answers differ (ids only, never post text).

Each run is re-scored from the raw model ``output`` in its ``predictions.jsonl`` with its own
``strict_format``, exactly as :func:`~mentalglm.evaluation.evaluate.evaluate` scores it, so the
numbers here are those of each run's ``metrics.json``.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from mentalglm.analysis.run_record import differences
from mentalglm.core.errors import MentalGLMError, UnknownNameError
from mentalglm.core.files import digest, read_json_object
from mentalglm.core.metrics import INVALID
from mentalglm.data.readers import read_done
from mentalglm.evaluation import statistics

#: How many disagreeing ids the human-readable output lists (``--json`` lists them all).
SHOWN_IDS = 20
#: Run settings shown for each side of a comparison.
_DESCRIBED = ("backend", "model", "prompt", "mode", "strict_format")
# Settings that identify the data rather than how predictions were made: a difference here is
# checked by id and gold answer, not reported as a setting that differs.
_DATA_SETTINGS = {"data", "data_sha256", "posts_sha256"}


@dataclass
class EvaluationRun:
    """One evaluation folder as written by ``mentalglm evaluate``.

    Attributes:
        folder: the folder.
        record: its run record (``run.json``): the settings the predictions were made with.
        predictions: the saved predictions by post id (``predictions.jsonl``).
        metrics: the saved metrics document (``metrics.json``), or None when the run has none yet.
    """

    folder: Path
    record: dict
    predictions: dict[str, dict]
    metrics: dict | None


def load_run(folder: str | Path) -> EvaluationRun:
    """Read an evaluation folder.

    Raises:
        MentalGLMError: not a folder, or ``run.json`` / ``predictions.jsonl`` missing or unreadable.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise MentalGLMError(f"{folder}: not an evaluation folder (the --output-dir of mentalglm evaluate)")
    predictions_file = folder / "predictions.jsonl"
    if not predictions_file.is_file():
        raise MentalGLMError(f"{folder}: no predictions.jsonl; not an evaluation folder")
    record = read_json_object(folder / "run.json", "run record")
    predictions = read_done(predictions_file)
    if not predictions:
        raise MentalGLMError(f"{predictions_file}: holds no predictions")
    metrics_file = folder / "metrics.json"
    metrics = read_json_object(metrics_file, "metrics file") if metrics_file.is_file() else None
    return EvaluationRun(folder, record, predictions, metrics)


def _same_task(a: EvaluationRun, b: EvaluationRun) -> None:
    name_a, name_b = a.record.get("task"), b.record.get("task")
    if name_a != name_b:
        raise MentalGLMError(f"{a.folder} and {b.folder} are runs of different tasks ('{name_a}' and '{name_b}'); "
                             f"compare runs of one task")
    if a.record.get("task_sha256") != b.record.get("task_sha256"):
        raise MentalGLMError(f"{a.folder} and {b.folder} used different definitions of task '{name_a}' "
                             f"(labels, aliases or instruction differ); compare runs of one task definition")


def _resolve_task(run: EvaluationRun, task, plugins):
    if task is not None and not isinstance(task, str):
        return task  # a Task object (Python callers)
    if plugins is None:
        from mentalglm.core.plugin_manager import get_plugin_manager

        plugins = get_plugin_manager()
    name = task or run.record.get("task")
    try:
        resolved = plugins.task(name)
    except UnknownNameError as exc:
        raise MentalGLMError(f"{exc}; if the runs used a task file, give it with --task FILE") from None
    if run.record.get("task_sha256") not in (None, digest(resolved.describe())):
        warnings.warn(f"mentalglm: task '{resolved.name}' is defined differently now than when these runs were made; "
                      f"answers are re-read with the current definition", stacklevel=3)
    return resolved


def _gold(value: Any, run: EvaluationRun, post_id: str):
    if value is None:
        raise MentalGLMError(f"{run.folder}/predictions.jsonl: post '{post_id}' has no gold answer; "
                             f"compare needs evaluation runs (mentalglm evaluate)")
    return tuple(value) if isinstance(value, list) else value


def _aligned(task, a: EvaluationRun, b: EvaluationRun) -> tuple[list[str], list]:
    """Post ids (sorted, so A-vs-B and B-vs-A resample alike) and gold answers, checked to be the same data."""
    only_a = sorted(set(a.predictions) - set(b.predictions))
    only_b = sorted(set(b.predictions) - set(a.predictions))
    if only_a or only_b:
        parts = [f"{len(ids)} only in {run.folder} (e.g. '{ids[0]}')" for ids, run in ((only_a, a), (only_b, b)) if ids]
        raise MentalGLMError(f"the runs hold different posts: {'; '.join(parts)}; compare runs on the same data")
    ids = sorted(a.predictions)
    golds = []
    for post_id in ids:
        gold_a = _gold(a.predictions[post_id].get("gold"), a, post_id)
        gold_b = _gold(b.predictions[post_id].get("gold"), b, post_id)
        if gold_a != gold_b:
            raise MentalGLMError(f"post '{post_id}' has different gold answers in {a.folder} and {b.folder}; "
                                 f"compare runs on the same data")
        golds.append(gold_a)
    if a.record.get("posts_sha256") != b.record.get("posts_sha256"):
        warnings.warn("mentalglm: the runs read their posts in another order or with other text; "
                      "posts are paired by id", stacklevel=3)
    return ids, golds


def _responses(task, run: EvaluationRun, ids: Sequence[str]) -> list:
    strict = bool(run.record.get("strict_format", False))
    return [task.parse(run.predictions[i].get("output") or "", strict=strict) for i in ids]


#: Task kinds whose answer is a set of labels (a hierarchical answer's summaries are not compared).
_LABEL_SETS = ("multi-label", "hierarchical")


def _answer(task, response) -> Any:
    """What a run answered for a post, comparable between runs (invalid is an answer of its own)."""
    if not response.valid:
        return INVALID
    if task.kind == "single-label":
        return response.labels[0]
    if task.kind in _LABEL_SETS:
        return frozenset(response.labels)
    return tuple(sorted((response.fields or {}).items())) if response.fields is not None else tuple(response.labels)


def _correct(task, gold, response) -> bool | None:
    """Per-post correctness for McNemar: the label (set) matches gold exactly; None where a task has none."""
    if task.kind == "single-label":
        return response.valid and response.labels[0] == gold[0]
    if task.kind in _LABEL_SETS:
        return response.valid and set(response.labels) == set(gold["labels"] if isinstance(gold, dict) else gold)
    return None


def _mcnemar(task, ids, golds, responses_a, responses_b) -> dict:
    correct = [(_correct(task, g, ra), _correct(task, g, rb)) for g, ra, rb in zip(golds, responses_a, responses_b)]
    if any(x is None or y is None for x, y in correct):
        return {"p_value": None, "note": f"{task.kind} tasks have no per-post correctness; McNemar skipped"}
    a_only = [i for i, (x, y) in zip(ids, correct) if x and not y]
    b_only = [i for i, (x, y) in zip(ids, correct) if y and not x]
    result = {"method": "exact binomial on discordant posts, two-sided",
              "correct": "label matches gold" if task.kind == "single-label" else "label set matches gold exactly",
              "both_correct": sum(x and y for x, y in correct), "both_wrong": sum(not x and not y for x, y in correct),
              "a_only_correct": len(a_only), "b_only_correct": len(b_only),
              "p_value": statistics.mcnemar_exact(len(a_only), len(b_only)),
              "a_only_correct_ids": a_only, "b_only_correct_ids": b_only}
    return result


def _kappa(task, responses_a, responses_b) -> dict:
    if task.kind == "single-label":
        value = statistics.cohen_kappa([_answer(task, r) for r in responses_a], [_answer(task, r) for r in responses_b])
        note = None if value is not None else "undefined: both runs gave one and the same answer to every post"
        return {"value": value, "categories": [*task.label_names, INVALID], "note": note}
    if task.kind in _LABEL_SETS:
        per_label = {}
        for label in task.label_names:
            # Invalid answers count as naming no label, as scoring does.
            first = [r.valid and label in r.labels for r in responses_a]
            second = [r.valid and label in r.labels for r in responses_b]
            per_label[label] = statistics.cohen_kappa(first, second)
        defined = [v for v in per_label.values() if v is not None]
        return {"value": sum(defined) / len(defined) if defined else None, "per_label": per_label,
                "note": "value: mean of the per-label κ (presence of each label) where defined; "
                        "None where both runs named a label for all posts or for none"}
    return {"value": None, "note": f"{task.kind} tasks have no labels to agree on; κ skipped"}


def _per_label(metrics_a: dict, metrics_b: dict) -> tuple[str, dict]:
    for table, score in (("per_label", "f1"), ("per_field", "rouge_l"), ("per_part", "rougeL")):
        if table in metrics_a and table in metrics_b:
            return score, {name: {"a": row[score], "b": metrics_b[table][name][score],
                                  "delta": metrics_b[table][name][score] - row[score]}
                           for name, row in metrics_a[table].items() if name in metrics_b[table]}
    return "f1", {}


def _check_saved(run: EvaluationRun, metrics: dict, names: Sequence[str]) -> None:
    saved = (run.metrics or {}).get("metrics") or {}
    off = [n for n in names if isinstance(saved.get(n), (int, float)) and abs(saved[n] - metrics[n]) > 1e-9]
    if off:
        warnings.warn(f"mentalglm: {run.folder}/metrics.json differs from the re-scored predictions in "
                      f"{', '.join(off)} (an interrupted or older run?); the re-scored values are used", stacklevel=3)


def _as_a_b(difference: str) -> str:
    """``model (was X, now Y)`` → ``model (A: X, B: Y)``: two runs side by side, not one run's history."""
    head, _, rest = difference.partition(" (was ")
    before, _, after = rest.rpartition(", now ")
    return f"{head} (A: {before}, B: {after}" if before else difference


def _side(run: EvaluationRun) -> dict:
    return {"run": str(run.folder), **{key: run.record.get(key) for key in _DESCRIBED}}


def compare_runs(run_a: str | Path, run_b: str | Path, *, task=None, resamples: int = statistics.DEFAULT_RESAMPLES,
                 seed: int = statistics.DEFAULT_SEED, confidence: float = statistics.CONFIDENCE,
                 plugins=None) -> dict:
    """Compare two evaluation runs of one task on the same posts, paired by post id.

    Args:
        run_a: the baseline's evaluation folder.
        run_b: the other run's folder; differences are B − A.
        task: a task name, task file or Task object when the run record's task name cannot be
            looked up (runs made with a task file); default: the recorded name.
        resamples: paired-bootstrap resamples for the intervals of the differences (0: none).
        seed: the bootstrap seed.
        confidence: confidence level of the intervals.
        plugins: the plugin manager to look the task up in (default: the global one).

    Returns:
        The comparison as a JSON-ready document (see ``mentalglm compare --json``).

    Raises:
        MentalGLMError: a folder is not an evaluation run, the runs are of different tasks or
            task definitions, hold different post ids, or disagree on a gold answer.

    Example:
        >>> document = compare_runs("runs/a", "runs/b")             # doctest: +SKIP
        >>> document["metrics"]["weighted_f1"]["delta"], document["mcnemar"]["p_value"]  # doctest: +SKIP
    """
    if resamples < 0 or seed < 0:
        raise MentalGLMError("--bootstrap and --seed must be zero or more")
    a, b = load_run(run_a), load_run(run_b)
    _same_task(a, b)
    task = _resolve_task(a, task, plugins)
    ids, golds = _aligned(task, a, b)
    responses_a, responses_b = _responses(task, a, ids), _responses(task, b, ids)
    metrics_a, metrics_b = task.compute_metrics(golds, responses_a), task.compute_metrics(golds, responses_b)
    names = [n for n in statistics.interval_names(metrics_a) if isinstance(metrics_b.get(n), float)]
    _check_saved(a, metrics_a, names)
    _check_saved(b, metrics_b, names)

    rows = {name: {"a": metrics_a[name], "b": metrics_b[name], "delta": metrics_b[name] - metrics_a[name]}
            for name in names}
    if resamples and names:
        replicates_a, replicates_b = statistics.bootstrap_replicates(
            task, golds, [responses_a, responses_b], names, resamples=resamples, seed=seed,
            references=[metrics_a, metrics_b])
        for name in names:
            bounds = statistics.percentile_interval(replicates_b[name] - replicates_a[name], confidence)
            if bounds is not None:
                rows[name].update(low=bounds[0], high=bounds[1])
    answers = [(i, _answer(task, ra), _answer(task, rb)) for i, ra, rb in zip(ids, responses_a, responses_b)]
    disagree = [i for i, x, y in answers if x != y]
    score, per_label = _per_label(metrics_a, metrics_b)
    changed = [_as_a_b(d) for d in differences(a.record, b.record) if d.split(" ", 1)[0] not in _DATA_SETTINGS]
    return {
        "task": task.name, "kind": task.kind, "posts": len(ids),
        "a": _side(a), "b": _side(b), "settings_differ": changed,
        "primary_metric": task.primary_metric,
        "metrics": rows,
        "bootstrap": {"method": "paired percentile bootstrap" if resamples else None, "resamples": resamples,
                      "seed": seed, "confidence": confidence, "unit": "post"},
        "mcnemar": _mcnemar(task, ids, golds, responses_a, responses_b),
        "kappa": _kappa(task, responses_a, responses_b),
        "per_label": {"score": score, "labels": per_label},
        "disagreements": {"count": len(disagree), "ids": disagree},
    }


def _signed(value: float) -> str:
    return f"{value:+.4f}" if value else "0.0000"  # no "-0.0000" for a run against itself


def render_comparison(document: dict, *, table: Callable[[Sequence[Sequence[object]], Sequence[str]], str]) -> str:
    """The comparison for a terminal; ``table(rows, header)`` lays out a table (the CLI's aligns CJK text)."""
    a, b = document["a"], document["b"]
    lines = [f"{document['task']}: {document['posts']} posts, paired by id; deltas are B − A",
             f"A: {a['run']} ({a['backend']}, {a['model']})",
             f"B: {b['run']} ({b['backend']}, {b['model']})"]
    if document["settings_differ"]:
        lines.append("settings that differ: " + "; ".join(document["settings_differ"]))
    settings = document["bootstrap"]
    ci = f"{settings['confidence'] * 100:g} % CI"
    rows = [(name, f"{r['a']:.4f}", f"{r['b']:.4f}", _signed(r["delta"]),
             f"[{_signed(r['low'])}, {_signed(r['high'])}]" if "low" in r else "—")
            for name, r in document["metrics"].items()]
    lines += ["", table(rows, ["metric", "A", "B", "B − A", ci])]
    lines.append(f"{ci}: {settings['method']} over posts, {settings['resamples']:,} resamples, seed {settings['seed']}"
                 if settings["resamples"] else "no intervals (--bootstrap 0)")
    mcnemar, kappa = document["mcnemar"], document["kappa"]
    lines.append("")
    if mcnemar["p_value"] is None:
        lines.append(mcnemar["note"])
    else:
        lines.append(f"McNemar (exact): A only right on {mcnemar['a_only_correct']}, B only right on "
                     f"{mcnemar['b_only_correct']}, both right {mcnemar['both_correct']}, both wrong "
                     f"{mcnemar['both_wrong']}; p = {mcnemar['p_value']:.4g}")
    what = "mean of the per-label κ, A vs B" if "per_label" in kappa else "A vs B answers"
    lines.append(f"Cohen's κ ({what}): {kappa['value']:.4f}" if kappa["value"] is not None
                 else f"Cohen's κ: {kappa['note']}")
    per_label = document["per_label"]
    if per_label["labels"]:
        score = per_label["score"]
        lines += ["", table([(name, f"{r['a']:.4f}", f"{r['b']:.4f}", _signed(r["delta"]))
                             for name, r in per_label["labels"].items()],
                            ["label" if score == "f1" else "field", f"{score} A", f"{score} B", "B − A"])]
    disagree = document["disagreements"]
    lines.append("")
    if disagree["count"]:
        shown = ", ".join(disagree["ids"][:SHOWN_IDS])
        more = f", … ({disagree['count'] - SHOWN_IDS} more; --json lists all)" if disagree["count"] > SHOWN_IDS else ""
        lines.append(f"answers differ on {disagree['count']} posts: {shown}{more}")
    else:
        lines.append("the runs give the same answer on every post")
    return "\n".join(lines)
