"""Analyzer: task + prompt style + backend → Predictions, for one post, many, or a whole file.

Example:
    >>> from mentalglm import Analyzer
    >>> with Analyzer(task="depression", backend="replay", model="sample:depression.outputs") as analyzer:
    ...     prediction = analyzer.analyze("最近总是提不起劲。", id="dep-001")
    >>> prediction.valid
    True
"""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass
from typing import Any, Iterable, Iterator, Mapping, Sequence

from .backend import Backend, BackendOptions, GenerationRequest
from .data import JsonlAppender, read_done
from .plugins import PluginManager, get_plugin_manager
from .prediction import Post, Prediction
from .prompt import PromptStyle
from .task import Task

log = logging.getLogger(__name__)


@dataclass
class RunSummary:
    """What :meth:`Analyzer.run` did: how many posts were analysed now and how many were already done."""

    total: int
    analysed: int
    skipped: int
    invalid: int
    output: str


class _Progress:
    """A one-line counter on stderr, shown only on a terminal."""

    def __init__(self, total: int, enabled: bool | None):
        self.total, self.done = total, 0
        self.enabled = sys.stderr.isatty() if enabled is None else enabled

    def advance(self, n: int) -> None:
        self.done += n
        if self.enabled:
            sys.stderr.write(f"\ranalysing {self.done}/{self.total}")
            sys.stderr.flush()

    def finish(self) -> None:
        if self.enabled and self.total:
            sys.stderr.write("\n")


class Analyzer:
    """Runs one task with one prompt style on one backend.

    Args:
        task: a Task or a registered task name.
        backend: a Backend instance, or a registered backend name (then ``model`` and
            ``options`` configure it and the Analyzer closes it).
        model: what the backend loads (directory, GGUF file, saved outputs…).
        prompt: a PromptStyle or a registered name; ``glm4-chat`` by default.
        options: backend options (mapping or the backend's Options model).
        system: an optional system message for chat prompt styles.
        batch_size: posts per backend call.
        plugins: the plugin manager to resolve names with (the process-wide one by default).

    Raises:
        UnknownNameError: an unknown task, prompt style or backend name.
        OptionsError: backend options that do not validate.
    """

    def __init__(self, task: Task | str, backend: Backend | str = "llamacpp", model: str | None = None, *,
                 prompt: PromptStyle | str = "glm4-chat", options: BackendOptions | Mapping[str, Any] | None = None,
                 system: str | None = None, batch_size: int = 8, plugins: PluginManager | None = None):
        self.plugins = plugins or get_plugin_manager()
        self.task = self.plugins.task(task) if isinstance(task, str) else task
        self.prompt = self.plugins.prompt(prompt) if isinstance(prompt, str) else prompt
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        self.batch_size, self.system = batch_size, system
        if isinstance(backend, str):
            self.backend = self.plugins.backend_class(backend)(model, options)
            self._owns_backend = True
        else:
            self.backend, self._owns_backend = backend, False

    def render(self, post: Post) -> str:
        """The exact model input for ``post`` (its own C-IMHI instruction if it has one)."""
        return self.prompt.render(post.instruction or self.task.instruction, post.text, self.system)

    def _predictions(self, posts: Sequence[Post]) -> list[Prediction]:
        requests = [GenerationRequest(id=p.id, prompt=self.render(p), stop=self.prompt.stop) for p in posts]
        completions = self.backend.generate(requests)
        predictions = []
        for post, completion in zip(posts, completions):
            prediction = self.predict_from_output(post, completion.text)
            prediction.usage = dict(completion.usage)
            self.plugins.hook.on_prediction(prediction=prediction, task=self.task)
            predictions.append(prediction)
        return predictions

    def predict_from_output(self, post: Post, output: str) -> Prediction:
        """Parse a model output for ``post`` into a Prediction (no backend call)."""
        parsed = self.task.parse(output)
        return Prediction(id=post.id, task=self.task.name, labels=list(parsed.labels),
                          explanation=parsed.explanation, valid=parsed.valid, output=output,
                          problem=parsed.problem, fields=dict(parsed.fields) if parsed.fields is not None else None,
                          gold=post.gold)

    def analyze(self, text: str, id: str = "1") -> Prediction:
        """Analyse one post given as text."""
        return self._predictions([Post(id=str(id), text=text)])[0]

    def analyze_many(self, posts: Iterable[Post | str]) -> Iterator[Prediction]:
        """Analyse posts in batches, yielding Predictions in input order; strings get ids 1, 2, …"""
        batch: list[Post] = []
        for number, post in enumerate(posts, 1):
            batch.append(post if isinstance(post, Post) else Post(id=str(number), text=post))
            if len(batch) == self.batch_size:
                yield from self._predictions(batch)
                batch = []
        if batch:
            yield from self._predictions(batch)

    def run(self, posts: Sequence[Post], output: str | os.PathLike, progress: bool | None = None) -> RunSummary:
        """Analyse ``posts`` into a JSONL file, appending each prediction as it is made.

        Posts whose id is already in ``output`` are skipped, so rerunning after an interruption
        finishes the job with every id exactly once.
        """
        done = read_done(output)
        todo = [p for p in posts if p.id not in done]
        if done:
            log.info("resuming: %d of %d posts already in %s", len(posts) - len(todo), len(posts), output)
        invalid = 0
        meter = _Progress(len(todo), progress)
        with JsonlAppender(output) as sink:
            for prediction in self.analyze_many(todo):
                sink.write(prediction.to_dict())
                invalid += not prediction.valid
                meter.advance(1)
        meter.finish()
        return RunSummary(total=len(posts), analysed=len(todo), skipped=len(posts) - len(todo),
                          invalid=invalid, output=str(output))

    def close(self) -> None:
        """Close the backend if this Analyzer created it."""
        if self._owns_backend:
            self.backend.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()
