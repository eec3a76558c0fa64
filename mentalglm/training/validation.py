"""Validation during training: the adapter as it stands, scored exactly as ``mentalglm evaluate`` scores it.

After each epoch the in-memory peft model (adapter unmerged, dropout off) is wrapped with
:meth:`TorchBackend.from_model <mentalglm.backends.torch_backend.TorchBackend.from_model>` and
run through the same :class:`~mentalglm.analysis.analyzer.Analyzer` that ``mentalglm evaluate``
uses; outputs are parsed with ``task.parse`` and scored with ``task.compute_metrics`` as
:func:`mentalglm.evaluation.evaluate.evaluate` does. So the numbers are, by construction, those of
``mentalglm evaluate --backend torch -O adapter=RUN/adapter`` with the options recorded in
``metrics.json`` — one generation path, no second implementation to drift. Wrapping the model
in memory avoids writing and reloading the adapter every epoch.

Decoding is free (``constrained=false``) and greedy: during training the point is to see
whether the model learns the format, and invalid answers are counted. Under DDP only rank 0
evaluates while the others wait.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from typing import Sequence

from mentalglm.core.errors import DataError
from mentalglm.core.prediction import Post, Prediction
from mentalglm.core.prompt import PromptStyle
from mentalglm.data.readers import open_source, read_posts


@dataclass(frozen=True)
class EvalSet:
    """Gold-labelled posts to validate on.

    Attributes:
        spec: the file as given.
        path: its resolved path.
        sha256: hash of its bytes.
        posts: the posts, each with its gold answer (and its own C-IMHI instruction, if any).
    """

    spec: str
    path: str
    sha256: str
    posts: tuple[Post, ...]

    @property
    def golds(self) -> list:
        """Gold answers, aligned with ``posts``."""
        return [post.gold for post in self.posts]

    def to_dict(self) -> dict:
        """What ``train_config.json`` records about the eval data."""
        return {"spec": self.spec, "path": self.path, "sha256": self.sha256, "posts": len(self.posts)}


def load_eval_set(spec: str, task, mapping=None) -> EvalSet:
    """Read gold-labelled posts or C-IMHI records for validation (``mapping``: how to read them).

    Raises:
        DataError: a bad file, a label outside the task, or a post without a gold answer.
    """
    source = open_source(spec, mapping)
    posts = read_posts(source, task)
    for post in posts:
        if post.gold is None:
            raise DataError(source.display, post.line, "label",
                            "missing; --eval-data needs a gold answer for every post")
    where = str(source.files[0].resolve()) if len(source.files) == 1 else source.display
    return EvalSet(spec=spec, path=where, sha256=source.fingerprint(), posts=tuple(posts))


def decoding_options(max_new_tokens: int) -> dict:
    """The torch backend options validation decodes with: greedy (the default) and unconstrained."""
    return {"constrained": False, "max_new_tokens": max_new_tokens}


def score(task, golds: Sequence, predictions: Sequence[Prediction]) -> dict:
    """The task's metrics for predictions, computed as :func:`mentalglm.evaluation.evaluate.evaluate` does.

    Returns:
        ``{"primary_metric", "primary_value", "counts": {"posts", "valid", "invalid"}, "metrics"}``.
    """
    metrics = task.compute_metrics(list(golds), [task.parse(p.output) for p in predictions])
    return {"primary_metric": task.primary_metric, "primary_value": metrics.get(task.primary_metric),
            "counts": {"posts": len(predictions), "valid": metrics["n"] - metrics["invalid"],
                       "invalid": metrics["invalid"]},
            "metrics": metrics}


@dataclass(frozen=True)
class Validator:
    """Scores a model in memory on an :class:`EvalSet` through the Analyzer and the torch backend.

    Attributes:
        evalset: the gold-labelled posts.
        task: the Task whose metrics are computed.
        style: the prompt style (the one training renders records with).
        system: the system message, if any.
        batch_size: posts per backend call.
        options: torch backend options (:func:`decoding_options`).
    """

    evalset: EvalSet
    task: object
    style: PromptStyle
    system: str | None
    batch_size: int
    options: dict

    def run(self, model, tokenizer, device) -> dict:
        """Generate for every eval post with ``model`` (left as it is) and score the outputs (see :func:`score`)."""
        from mentalglm.analysis.analyzer import Analyzer
        from mentalglm.backends.torch_backend import TorchBackend

        # The backend wraps the caller's model: closing it frees nothing of the training run.
        with TorchBackend.from_model(model, tokenizer, self.options, device=device) as backend:
            analyzer = Analyzer(task=self.task, backend=backend, prompt=self.style, system=self.system,
                                batch_size=self.batch_size)
            predictions = list(analyzer.analyze_many(self.evalset.posts))
        return score(self.task, self.evalset.golds, predictions)

    def evaluate_command(self, base_model: str, adapter: str) -> str:
        """The ``mentalglm evaluate`` command line that reproduces these numbers for a saved adapter."""
        options = [f"adapter={adapter}"] + [f"{k}={str(v).lower() if isinstance(v, bool) else v}"
                                            for k, v in self.options.items()]
        words = ["mentalglm", "evaluate", "--task", self.task.name, "--backend", "torch", "--model", base_model,
                 "--data", self.evalset.spec, "--prompt", self.style.name, "--batch-size", str(self.batch_size)]
        words += ["--system", self.system] if self.system else []
        for option in options:
            words += ["-O", option]
        return shlex.join(words + ["--output-dir", "EVAL_DIR"])

    def document(self, base_model: str, adapter: str, evaluations: list[dict]) -> dict:
        """The ``metrics.json`` document: how validation decoded, and every evaluation so far."""
        return {"task": self.task.name, "eval_data": self.evalset.spec, "primary_metric": self.task.primary_metric,
                "decoding": {"greedy": True, "max_new_tokens": self.options["max_new_tokens"],
                             "constrained": self.options["constrained"]},
                "backend": "torch", "prompt": self.style.name, "system": self.system, "options": dict(self.options),
                "evaluate_command": self.evaluate_command(base_model, adapter),
                "evaluations": evaluations}
