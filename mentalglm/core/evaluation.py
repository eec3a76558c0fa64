"""Evaluation runs: predictions.jsonl, metrics.json and report.md in one output folder.

A run folder also holds ``run.json`` (task, backend, model, prompt, data, options). Rerunning
the same command resumes: ids already in ``predictions.jsonl`` are not analysed again; a
different configuration in the same folder is refused rather than mixed in.
"""

from __future__ import annotations

import json
import platform
import time
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Sequence

from .analyzer import Analyzer
from .data import read_done
from .errors import MentalGLMError
from .prediction import Post

#: Distributions whose versions are recorded in metrics.json when installed.
RECORDED_PACKAGES = ("mentalglm", "pluggy", "pydantic", "scikit-learn", "numpy", "torch", "transformers",
                     "peft", "llama_cpp_python", "gguf")


def package_versions() -> dict[str, str]:
    """Versions of the installed packages that can change results, without importing them."""
    versions = {"python": platform.python_version()}
    for name in RECORDED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def _check_run_config(folder: Path, config: dict) -> None:
    path = folder / "run.json"
    if path.exists():
        try:
            previous = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            previous = None
        if previous != config:
            changed = sorted(k for k in set(config) | set(previous or {})
                             if (previous or {}).get(k) != config.get(k))
            raise MentalGLMError(f"{folder} holds a run with other settings ({', '.join(changed)}); "
                                 "use another --output-dir or delete it")
    else:
        folder.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(config, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")


def evaluate(analyzer: Analyzer, posts: Sequence[Post], output_dir: str | Path, *, data: str,
             progress: bool | None = None) -> dict:
    """Analyse gold-labelled posts and score them with the task's metrics.

    Args:
        analyzer: the configured Analyzer.
        posts: posts that all carry a gold answer.
        output_dir: the run folder (created if missing).
        data: how the data was named (recorded in metrics.json).
        progress: show a progress line (default: when stderr is a terminal).

    Returns:
        The metrics document, also written to ``metrics.json``.

    Raises:
        MentalGLMError: a post without a gold answer, or a folder holding another run.
    """
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
    config = {"task": task.name, "backend": analyzer.backend.name, "model": analyzer.backend.model,
              "prompt": analyzer.prompt.name, "data": data, "system": analyzer.system,
              "options": analyzer.backend.options.model_dump()}
    _check_run_config(folder, config)
    started = time.time()
    summary = analyzer.run(posts, folder / "predictions.jsonl", progress=progress)
    saved = read_done(folder / "predictions.jsonl")
    # Score from the raw outputs on disk so resumed and fresh runs are scored identically.
    responses = [task.parse(saved[p.id]["output"]) for p in posts]
    metrics = task.compute_metrics([p.gold for p in posts], responses)
    document = {
        **config,
        "counts": {"posts": len(posts), "valid": metrics["n"] - metrics["invalid"], "invalid": metrics["invalid"],
                   "analysed_now": summary.analysed, "resumed": summary.skipped},
        "primary_metric": task.primary_metric,
        "primary_value": metrics.get(task.primary_metric),
        "metrics": metrics,
        "versions": package_versions(),
        "time": {"finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                 "seconds": round(time.time() - started, 3)},
        "invalid_ids": [p.id for p, r in zip(posts, responses) if not r.valid],
    }
    (folder / "metrics.json").write_text(json.dumps(document, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    (folder / "report.md").write_text(render_report(document), encoding="utf-8")
    return document


def _fmt(value) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def headline_metrics(metrics: dict) -> list[tuple[str, object]]:
    """The scalar metrics in display order (per-label tables and matrices left out)."""
    return [(k, v) for k, v in metrics.items() if isinstance(v, (int, float)) and k != "n"]


def render_report(document: dict) -> str:
    """A readable Markdown report: summary, metrics, per-label table and confusion matrix."""
    metrics = document["metrics"]
    counts = document["counts"]
    rate = counts["invalid"] / counts["posts"] if counts["posts"] else 0.0
    lines = [f"# Evaluation: {document['task']}", "",
             f"- data: `{document['data']}` ({counts['posts']} posts)",
             f"- backend: `{document['backend']}`, model: `{document['model']}`, prompt: `{document['prompt']}`",
             f"- invalid outputs: {counts['invalid']} ({rate:.1%}) — scored as wrong",
             f"- primary metric: **{document['primary_metric']} = {_fmt(document['primary_value'])}**",
             f"- finished: {document['time']['finished']}", "",
             "## Metrics", "", "| metric | value |", "| --- | --- |"]
    lines += [f"| {k} | {_fmt(v)} |" for k, v in headline_metrics(metrics)]
    if "per_label" in metrics:
        lines += ["", "## Per label", "", "| label | precision | recall | F1 | support |", "| --- | --- | --- | --- | --- |"]
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
        lines += ["", "## Confusion counts per label", "", "| label | TP | FP | FN | TN |", "| --- | --- | --- | --- | --- |"]
        lines += [f"| {label} | {m['tp']} | {m['fp']} | {m['fn']} | {m['tn']} |" for label, m in matrix.items()]
    if document["invalid_ids"]:
        lines += ["", "## Invalid outputs", "", "Post ids: " + ", ".join(document["invalid_ids"]),
                  "", "Their raw text is in `predictions.jsonl` (field `output`, with `problem`)."]
    return "\n".join(lines) + "\n"
