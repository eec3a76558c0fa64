"""Training the supervised floor (``mentalglm train --backend baseline``): labelled posts in, a model folder out."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Sequence

from mentalglm.core.errors import MentalGLMError
from mentalglm.core.files import file_sha256, write_json
from mentalglm.core.prediction import Post


def train_baseline(task, posts: Sequence[Post], output: str | Path, *, data: Sequence[str], seed: int = 0) -> dict:
    """Fit the baseline on labelled training posts and save it to ``output``.

    Hyper-parameters are chosen by cross-validation on these posts alone (never a test split).

    Args:
        task: the task (single-label or multi-label).
        posts: the training posts, each with a gold answer.
        output: the model folder (``baseline.json``, ``weights.npz``, ``train.json``).
        data: the files the posts came from (recorded with their SHA-256).
        seed: the cross-validation folds' seed.

    Returns:
        What ``train.json`` records: posts, the chosen setting, its cross-validated score, seconds.

    Raises:
        MentalGLMError: a post without a gold answer (file and line), or a task the baseline cannot model.
    """
    from mentalglm.backends.baseline_model import fit_baseline

    unlabelled = next((p for p in posts if p.gold is None), None)
    if unlabelled is not None:
        raise MentalGLMError(f"{data[0] if len(data) == 1 else 'the data'}:{unlabelled.line}: field 'label': missing; "
                             "the baseline trains on labelled posts")
    if not posts:
        raise MentalGLMError("no training posts")
    started = time.perf_counter()
    model = fit_baseline([p.text for p in posts], [tuple(p.gold) for p in posts], task=task.name, kind=task.kind,
                         labels=task.label_names, primary_metric=task.primary_metric, seed=seed)
    folder = model.save(output)
    best = max(model.cross_validation["settings"], key=lambda s: s["mean_score"])
    record = {"task": task.name, "posts": len(posts), "ngram_range": [1, model.ngram_max], "C": model.c,
              "cv_scorer": model.cross_validation["scorer"], "cv_folds": model.cross_validation["folds"],
              "cv_score": best["mean_score"], "features": len(model.vocabulary), "seed": seed,
              "data": [{"path": str(d), "sha256": file_sha256(d) if Path(d).is_file() else None} for d in data],
              "seconds": round(time.perf_counter() - started, 3), "model": str(folder)}
    write_json(folder / "train.json", record)
    return record
