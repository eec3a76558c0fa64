"""One comparison across models and tasks: the MentalGLM paper's table in one command.

Every model of a registry (:mod:`mentalglm.evaluation.registry`) runs on every task's gold data
into its own evaluation folder, ``OUTPUT/TASK/MODEL/`` (``predictions.jsonl``, ``run.json``,
``metrics.json``: resumable, refused when settings change, as ``evaluate``). A model that fails
is reported in its column (``error.json`` keeps why) and the others go on. Then every folder is
re-scored from its saved predictions — the same scoring ``evaluate`` uses — into one comparison:

- one column per model; rows task × metric, each with its 95 % interval (Wilson for rates, a
  seeded percentile bootstrap over posts otherwise);
- the rate of invalid answers and of answers read without a label line; posts per second of the
  run that made the predictions (``speed.json``; model loading excluded);
- against the reference model: the paired difference of the primary metric with its paired
  bootstrap interval, and McNemar's exact test on per-post correctness (as ``compare``).

Written as ``leaderboard.md``, ``.csv``, ``.json`` and ``leaderboard.svg`` (a forest plot of each
model's primary metric per task). Nothing in them depends on the clock, so ``reuse`` — re-scoring
the saved predictions without loading any model — writes them again byte for byte.
"""

from __future__ import annotations

import csv
import io
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence
from xml.sax.saxutils import escape

from mentalglm.core.errors import MentalGLMError
from mentalglm.core.files import read_json, write_json
from mentalglm.core.prediction import Post
from mentalglm.data.readers import read_done
from mentalglm.evaluation import statistics
from mentalglm.evaluation.evaluate import headline_metrics, score_predictions
from mentalglm.evaluation.registry import ModelEntry, Registry

log = logging.getLogger(__name__)

OUTPUTS = ("leaderboard.md", "leaderboard.csv", "leaderboard.json", "leaderboard.svg")


@dataclass(frozen=True)
class TaskData:
    """One task of a comparison and its gold-labelled posts (``data`` names where they came from)."""

    task: object
    data: str
    posts: Sequence[Post]


def run_leaderboard(registry: Registry, tasks: Sequence[TaskData], output_dir: str | Path, *, reuse: bool = False,
                    bootstrap: int = statistics.DEFAULT_RESAMPLES, seed: int = statistics.DEFAULT_SEED,
                    progress: bool | None = False, plugins=None) -> dict:
    """Run (or with ``reuse``, only re-score) every model on every task and write the comparison.

    Returns:
        The comparison document (also ``leaderboard.json``).

    A model whose registry entry maps models by task and names none for a task is shown as
    ``absent`` there (the baseline has no model of a hierarchical task).

    Raises:
        MentalGLMError: a post without a gold answer, or bad bootstrap settings.
    """
    if bootstrap < 0 or seed < 0:
        raise MentalGLMError("--bootstrap and --seed must be zero or more")
    for item in tasks:
        missing = next((p for p in item.posts if p.gold is None), None)
        if missing is not None:
            raise MentalGLMError(f"{item.data}:{missing.line}: field 'label': missing; a comparison needs a gold "
                                 "answer for every post")
    folder = Path(output_dir)
    if not reuse:
        for item in tasks:
            for entry in registry.models:
                if not _absent(registry, entry, item):
                    _run_cell(registry, entry, item, folder / item.task.name / entry.name, seed, progress, plugins)
    document = {
        "registry": str(registry.path), "reference": registry.reference, "models": [m.name for m in registry.models],
        "bootstrap": {"resamples": bootstrap, "seed": seed, "confidence": statistics.CONFIDENCE},
        "tasks": [_task_results(registry, item, folder / item.task.name, bootstrap, seed, plugins) for item in tasks],
    }
    folder.mkdir(parents=True, exist_ok=True)
    write_json(folder / "leaderboard.json", document)
    (folder / "leaderboard.md").write_text(render_markdown(document), encoding="utf-8")
    (folder / "leaderboard.csv").write_text(render_csv(document), encoding="utf-8")
    (folder / "leaderboard.svg").write_text(render_forest_plot(document), encoding="utf-8")
    return document


def _absent(registry: Registry, entry: ModelEntry, item: TaskData) -> bool:
    """The entry maps its models by task and names none for this one."""
    return isinstance(entry.model, dict) and registry.for_task(entry, "model", item.task.name) is None


def _run_cell(registry: Registry, entry: ModelEntry, item: TaskData, cell: Path, seed: int, progress, plugins) -> None:
    """One model on one task into ``cell``; a failure is kept in ``error.json`` and does not stop the others."""
    from mentalglm.analysis.analyzer import Analyzer
    from mentalglm.evaluation.evaluate import evaluate

    error_file = cell / "error.json"
    try:
        with Analyzer(item.task, backend=entry.backend, model=registry.for_task(entry, "model", item.task.name),
                      prompt=entry.prompt, system=entry.system, options=entry.options, mode=entry.mode,
                      calibration=registry.for_task(entry, "calibration", item.task.name),
                      strict_format=entry.strict_format, plugins=plugins) as analyzer:
            started = time.perf_counter()
            document = evaluate(analyzer, item.posts, cell, data=item.data, progress=progress, bootstrap=0, seed=seed)
            seconds = time.perf_counter() - started
    except Exception as exc:  # noqa: BLE001 -- any failure of one model is reported in its column
        reason = " ".join(str(exc).split()) or type(exc).__name__
        cell.mkdir(parents=True, exist_ok=True)
        write_json(error_file, {"model": entry.name, "task": item.task.name, "error": reason})
        log.warning("leaderboard: %s on %s failed: %s", entry.name, item.task.name, reason)
        return
    error_file.unlink(missing_ok=True)
    analysed = document["counts"]["analysed_now"]
    if analysed:  # a run that only resumed keeps the speed of the run that made the predictions
        write_json(cell / "speed.json", {"posts": analysed, "seconds": round(seconds, 3)})


def _task_results(registry: Registry, item: TaskData, folder: Path, bootstrap: int, seed: int, plugins) -> dict:
    task = item.task
    results = {entry.name: ({"status": "absent", "error": "the registry names no model for this task"}
                            if _absent(registry, entry, item) else
                            _scored_cell(entry, item, folder / entry.name, bootstrap, seed))
               for entry in registry.models}
    reference = results[registry.reference]
    for entry in registry.models:
        result = results[entry.name]
        if entry.name != registry.reference and result["status"] == "ok" and reference["status"] == "ok":
            result["versus_reference"] = _paired(folder / registry.reference, folder / entry.name, task,
                                                 bootstrap, seed, plugins)
    return {"task": task.name, "data": item.data, "posts": len(item.posts), "primary_metric": task.primary_metric,
            "results": results}


def _scored_cell(entry: ModelEntry, item: TaskData, cell: Path, bootstrap: int, seed: int) -> dict:
    """The status and scores of one model on one task, from what its folder holds."""
    if (cell / "error.json").is_file():
        return {"status": "failed", "error": read_json(cell / "error.json", "error record").get("error")}
    predictions = cell / "predictions.jsonl"
    saved = read_done(predictions) if predictions.is_file() else {}
    have = sum(p.id in saved for p in item.posts)
    if have < len(item.posts):
        return {"status": "missing" if not have else "incomplete",
                "error": f"{have} of {len(item.posts)} posts have saved predictions in {cell}"}
    stale = _stale(entry, item, cell)
    if stale:
        return {"status": "stale", "error": f"{cell / 'run.json'} records other settings than the registry's: "
                                            f"{stale}; rerun without --reuse (the folder is refused then too)"}
    score = score_predictions(item.task, item.posts, saved, strict_format=entry.strict_format,
                              bootstrap=bootstrap, seed=seed)
    counts, n = score["counts"], len(item.posts)
    speed = read_json(cell / "speed.json", "speed record") if (cell / "speed.json").is_file() else None
    return {"status": "ok",
            "metrics": {k: v for k, v in headline_metrics(score["metrics"]) if isinstance(v, float)},
            "intervals": {k: [i["low"], i["high"]] for k, i in score["intervals"].items()},
            "invalid_rate": counts["invalid"] / n, "without_label_line_rate": counts["without_label_line"] / n,
            "posts_per_second": speed["posts"] / speed["seconds"] if speed and speed["seconds"] > 0 else None}


def _stale(entry: ModelEntry, item: TaskData, cell: Path) -> str:
    """What the cell's run record says differently from the registry entry and the posts ('' when nothing).

    Checked without loading the model (``reuse`` must not): the recorded backend, prompt style, system
    message, mode, strict format, the options the entry sets, and the digest of the posts.
    """
    from mentalglm.core.prediction import posts_digest

    record = read_json(cell / "run.json", "run record") if (cell / "run.json").is_file() else {}
    expected = {"backend": entry.backend, "prompt": entry.prompt, "system": entry.system, "mode": entry.mode,
                "strict_format": entry.strict_format, "posts_sha256": posts_digest(item.posts)}
    if record.get("prompt") == "post":  # a backend that reads the post itself records no prompt style
        expected.pop("prompt")
    differ = [f"{key} (recorded {record.get(key)!r}, now {value!r})" for key, value in expected.items()
              if record.get(key) != value]
    options = record.get("options") or {}
    differ += [f"options.{key} (recorded {options.get(key)!r}, now {value!r})" for key, value in entry.options.items()
               if key in options and options.get(key) != value and str(options.get(key)) != str(value)]
    return "; ".join(differ[:3])


def _paired(reference: Path, other: Path, task, bootstrap: int, seed: int, plugins) -> dict:
    """The primary metric's paired difference (other − reference) with its interval, and McNemar's p."""
    from mentalglm.evaluation.compare import compare_runs

    try:
        document = compare_runs(reference, other, task=task, resamples=bootstrap, seed=seed, plugins=plugins)
    except MentalGLMError as exc:  # e.g. folders holding other posts: said in this column, the others go on
        return {"metric": task.primary_metric, "delta": None, "low": None, "high": None, "mcnemar_p": None,
                "error": str(exc)}
    row = document["metrics"].get(task.primary_metric) or {}
    return {"metric": task.primary_metric, "delta": row.get("delta"), "low": row.get("low"), "high": row.get("high"),
            "mcnemar_p": (document.get("mcnemar") or {}).get("p_value")}


# -- rendering --------------------------------------------------------------------------------------
def _value(result: dict, metric: str) -> str:
    value = result["metrics"].get(metric)
    if value is None:
        return "–"
    bounds = result["intervals"].get(metric)
    return f"{value:.4f}" + (f" [{bounds[0]:.4f}, {bounds[1]:.4f}]" if bounds else "")


def _rows(document: dict) -> list[tuple[str, str, list[str]]]:
    """(task, row name, one cell per model) in display order."""
    models, reference = document["models"], document["reference"]
    rows = []
    for item in document["tasks"]:
        results = item["results"]
        ok = [results[m] for m in models if results[m]["status"] == "ok"]
        names = [item["primary_metric"]] + sorted({k for r in ok for k in r["metrics"]} - {item["primary_metric"]})
        for name in names:
            rows.append((item["task"], name, [_value(results[m], name) if results[m]["status"] == "ok"
                                              else results[m]["status"] for m in models]))
        rows.append((item["task"], "without label line", [f"{results[m]['without_label_line_rate']:.4f}"
                                                          if results[m]["status"] == "ok" else "" for m in models]))
        rows.append((item["task"], "posts/s", [f"{results[m]['posts_per_second']:.2f}"
                                               if results[m].get("posts_per_second") else "" for m in models]))
        versus = [results[m].get("versus_reference") for m in models]
        rows.append((item["task"], f"Δ {item['primary_metric']} vs {reference}",
                     [_delta(v) if v else ("reference" if m == reference else "") for m, v in zip(models, versus)]))
        rows.append((item["task"], "McNemar p", [f"{v['mcnemar_p']:.4g}" if v and v["mcnemar_p"] is not None else ""
                                                 for v in versus]))
    return rows


def _delta(versus: dict) -> str:
    if versus["delta"] is None:
        return ""
    text = f"{versus['delta']:+.4f}"
    return text + (f" [{versus['low']:+.4f}, {versus['high']:+.4f}]" if versus.get("low") is not None else "")


def render_markdown(document: dict) -> str:
    """The comparison as a Markdown table (one column per model), failures and how intervals were made below it."""
    models = document["models"]

    def line(cells):
        return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"

    out = ["# Comparison", "", line(["task", "metric", *models]), line(["---"] * (len(models) + 2))]
    out += [line([task, name, *cells]) for task, name, cells in _rows(document)]
    failures = [(item["task"], m, item["results"][m]["error"]) for item in document["tasks"] for m in models
                if item["results"][m]["status"] != "ok"]
    if failures:
        out += ["", "Not scored:", *[f"- {m} on {t}: {e}" for t, m, e in failures]]
    settings = document["bootstrap"]
    out += ["", f"{settings['confidence'] * 100:g} % intervals: Wilson score for rates of posts, percentile bootstrap "
                f"over posts otherwise ({settings['resamples']:,} resamples, seed {settings['seed']}); Δ: paired "
                f"bootstrap of the difference with {document['reference']}; McNemar: exact test on per-post "
                "correctness."]
    return "\n".join(out) + "\n"


def render_csv(document: dict) -> str:
    """The comparison as CSV: task, metric, then each model's cell as the Markdown table shows it."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["task", "metric", *document["models"]])
    for task, name, cells in _rows(document):
        writer.writerow([task, name, *cells])
    return buffer.getvalue()


def render_forest_plot(document: dict) -> str:
    """An SVG forest plot: per task, each model's primary metric with its 95 % interval on a 0–1 axis."""
    models, left, width, row, top = document["models"], 190, 420, 22, 30
    height = top + sum(40 + row * len(models) for _ in document["tasks"]) + 20
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{left + width + 40}" height="{height}" '
             'font-family="sans-serif" font-size="12">',
             f'<text x="10" y="18" font-weight="bold">{escape("Primary metric with 95 % interval")}</text>']
    y = top
    for item in document["tasks"]:
        parts.append(f'<text x="10" y="{y + 16}" font-weight="bold">'
                     f'{escape(item["task"])} — {escape(item["primary_metric"])}</text>')
        axis = y + 28 + row * len(models)
        parts.append(f'<line x1="{left}" y1="{axis}" x2="{left + width}" y2="{axis}" stroke="#888"/>')
        for tick in (0.0, 0.25, 0.5, 0.75, 1.0):
            x = left + tick * width
            parts.append(f'<text x="{x:.1f}" y="{axis + 14}" text-anchor="middle" fill="#555">{tick:g}</text>')
        for i, name in enumerate(models):
            result, cy = item["results"][name], y + 32 + i * row
            parts.append(f'<text x="{left - 8}" y="{cy + 4}" text-anchor="end">{escape(name)}</text>')
            value = result.get("metrics", {}).get(item["primary_metric"]) if result["status"] == "ok" else None
            if value is None:
                parts.append(f'<text x="{left}" y="{cy + 4}" fill="#a00">{escape(result["status"])}</text>')
                continue
            low, high = result["intervals"].get(item["primary_metric"], [value, value])
            parts.append(f'<line class="interval" x1="{left + low * width:.1f}" y1="{cy}" '
                         f'x2="{left + high * width:.1f}" y2="{cy}" stroke="#246" stroke-width="2"/>')
            parts.append(f'<circle class="estimate" cx="{left + value * width:.1f}" cy="{cy}" r="4" fill="#246">'
                         f'<title>{escape(name)}: {value:.4f} [{low:.4f}, {high:.4f}]</title></circle>')
        y = axis + 12
    parts.append("</svg>")
    return "\n".join(parts) + "\n"
