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
import time
from dataclasses import dataclass, field, replace
from typing import Any, Iterable, Iterator, Mapping, Sequence

from mentalglm.analysis import run_record
from mentalglm.analysis.calibration import label_probabilities
from mentalglm.analysis.grounding import grounding_of
from mentalglm.core.backend import Backend, BackendOptions, GenerationRequest
from mentalglm.core.errors import MentalGLMError
from mentalglm.core.files import digest
from mentalglm.core.plugin_manager import PluginManager, get_plugin_manager
from mentalglm.core.prediction import Post, Prediction, posts_digest
from mentalglm.core.prompt import POST_TEXT, ChatTemplatePrompt, PromptStyle, ServerTemplatePrompt
from mentalglm.core.task import Task
from mentalglm.data.readers import JsonlAppender, read_done_ids

log = logging.getLogger(__name__)


@dataclass
class RunSummary:
    """What :meth:`Analyzer.run` did: how many posts were analysed now and how many were already done."""

    total: int
    analysed: int
    skipped: int
    invalid: int
    output: str
    without_label_line: int = 0
    #: :meth:`Backend.run_stats` after the run (per-replica counts of the openai backend); not a setting.
    backend_stats: dict = field(default_factory=dict)


class _Progress:
    """A progress bar on stderr, drawn only on a terminal: done/total, rate and time left."""

    WIDTH = 24

    def __init__(self, total: int, enabled: bool | None):
        self.total, self.done, self.started = total, 0, time.monotonic()
        self.enabled = bool(total) and (sys.stderr.isatty() if enabled is None else enabled)

    def advance(self, n: int) -> None:
        """Count ``n`` more posts done and redraw."""
        self.done += n
        if not self.enabled:
            return
        elapsed = max(time.monotonic() - self.started, 1e-9)
        rate = self.done / elapsed
        left = (self.total - self.done) / rate if rate else 0.0
        filled = int(self.WIDTH * self.done / self.total)
        sys.stderr.write(f"\ranalysing [{'#' * filled}{'.' * (self.WIDTH - filled)}] {self.done}/{self.total} "
                         f"{rate:.2f} posts/s, {left:.0f} s left ")
        sys.stderr.flush()

    def finish(self) -> None:
        """End the bar's line."""
        if self.enabled:
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
        batch_size: posts per backend call; default: what the backend prefers
            (``preferred_batch_size``: 8, or four per slot for llama.cpp's parallel sequences).
        mode: ``generate`` (the model writes label line and explanation) or ``score``
            (single-label tasks: the label with the highest log-likelihood after ``标签：``
            wins, no free generation for the label).
        explain: in ``score`` mode, also generate the explanation conditioned on the chosen label.
        redact: replace phone numbers, e-mail addresses, URLs, @mentions and ID-card numbers
            before text reaches the backend; default: on for backends that send text away
            (``openai``), off for local ones.
        strict_format: only an answer with a label line (``标签：…``) counts; by default a label
            named in prose is read too (and counted as read without a label line).
        plugins: the plugin manager to resolve names with (the process-wide one by default).
        confidence: generate mode, single-label tasks: after generating, score every label after
            ``标签：`` as score mode does (teacher-forced, from the cached prompt) and give each
            prediction ``scores`` and ``confidence`` — the softmax probability of the label it
            generated. Needs a backend that scores labels (llamacpp, torch). Score mode always
            gives ``confidence``.
        calibration: score mode: a :class:`~mentalglm.analysis.calibration.Calibration` (or its
            calibration.json) whose probabilities and decision policy label each post; every
            prediction then carries ``probabilities`` and ``needs_review``.

    Raises:
        UnknownNameError: an unknown task, prompt style or backend name.
        OptionsError: backend options that do not validate.
    """

    def __init__(self, task: Task | str, backend: Backend | str = "llamacpp", model: str | None = None, *,
                 prompt: PromptStyle | str = "glm4-chat", options: BackendOptions | Mapping[str, Any] | None = None,
                 system: str | None = None, batch_size: int | None = None, mode: str = "generate", explain: bool = True,
                 redact: bool | None = None, strict_format: bool = False, plugins: PluginManager | None = None,
                 calibration: Any = None, confidence: bool = False):
        self.plugins = plugins or get_plugin_manager()
        self.task = self.plugins.task(task) if isinstance(task, str) else task
        self.prompt = self.plugins.prompt(prompt) if isinstance(prompt, str) else prompt
        if batch_size is not None and batch_size < 1:
            raise MentalGLMError("batch size must be at least 1")
        if mode not in ("generate", "score"):
            raise MentalGLMError(f"unknown mode '{mode}'; use generate or score")
        if mode == "score" and getattr(self.task, "kind", "") != "single-label":
            raise MentalGLMError(f"score mode needs a single-label task; '{self.task.name}' is {self.task.kind}")
        self.system, self.mode, self.explain = system, mode, explain
        self.strict_format = strict_format
        self.calibration = self._calibration(calibration)  # before the backend loads: a wrong file fails fast
        if isinstance(backend, str):
            self.backend = self.plugins.backend_class(backend)(model, options)
            self._owns_backend = True
        else:
            self.backend, self._owns_backend = backend, False
        if mode == "score" and "score_labels" not in self.backend.capabilities:
            raise MentalGLMError(f"backend '{self.backend.name}' cannot score labels; use --mode generate")
        self.confidence = confidence and mode == "generate"
        if self.confidence and getattr(self.task, "kind", "") != "single-label":
            raise MentalGLMError(f"--confidence needs a single-label task; '{self.task.name}' is {self.task.kind}")
        if self.confidence and "score_labels" not in self.backend.capabilities:
            raise MentalGLMError(f"--confidence: backend '{self.backend.name}' cannot score labels "
                                 "(it exposes no label-token probabilities); use llamacpp or torch")
        if self.backend.reads_posts:  # the baseline classifies the post itself: no instruction, no template
            if system:
                self.close()
                raise MentalGLMError(f"backend '{self.backend.name}' reads the post itself: --system does not apply")
            self.prompt = POST_TEXT
        if self.prompt.name == "auto" and not isinstance(self.prompt, ChatTemplatePrompt):  # the placeholder
            self.prompt = self._model_prompt()
        if isinstance(self.prompt, ServerTemplatePrompt):
            try:
                self.backend.render_on_server()
            except MentalGLMError:
                self.close()
                raise
        self.redact = self.backend.redacts_by_default if redact is None else redact
        self.batch_size = batch_size or self.backend.preferred_batch_size
        self.response_format = self.task.response_format()

    def _model_prompt(self) -> PromptStyle:
        """``--prompt auto``: the loaded model's own chat template, or a one-line refusal — never a fallback."""
        try:
            return ChatTemplatePrompt.for_model(self.backend.chat_template(), self.backend.model or self.backend.name,
                                                self.system)
        except MentalGLMError:
            self.close()
            raise

    def _calibration(self, calibration):
        """Load and check a calibration: score mode only, and only one fitted for this very task."""
        if calibration is None:
            return None
        from mentalglm.analysis.calibration import NEEDS_SCORE_MODE, Calibration

        if self.mode != "score":
            raise MentalGLMError(NEEDS_SCORE_MODE)
        calibration = calibration if isinstance(calibration, Calibration) else Calibration.load(calibration)
        calibration.check_task(self.task)
        return calibration

    def settings(self) -> dict:
        """Everything that changes a prediction, JSON-ready: what a run record holds (data aside).

        A server backend adds what it identified (engine, version, dialect): a resume against an
        upgraded server or another dialect is refused like any other changed setting.
        """
        server = getattr(self.backend, "server_info", None)
        return {**({"server": server} if server is not None else {}),
                "task": self.task.name, "task_sha256": digest(self.task.describe()),
                "backend": self.backend.name, "model": self.backend.model, "model_identity": self.backend.identity(),
                "prompt": self.prompt.name,
                "prompt_sha256": digest(self.prompt.render("{instruction}", "{post}", self.system)),
                "system": self.system, "mode": self.mode, "explain": self.explain if self.mode == "score" else None,
                "redact": self.redact, "strict_format": self.strict_format,
                "options": self.backend.options.model_dump(mode="json"),
                # Only when set: records of uncalibrated runs stay as they were.
                **({"calibration": self.calibration.settings()} if self.calibration is not None else {}),
                **({"confidence": True} if self.confidence else {})}

    def render(self, post: Post) -> str:
        """The exact model input for ``post`` (its own C-IMHI instruction if it has one)."""
        return self.prompt.render(post.instruction or self.task.instruction, post.text, self.system)

    def _prepare(self, post: Post) -> tuple[Post, str, dict]:
        """Redact and fit ``post``: the post as sent, its prompt, and flags for the record."""
        flags: dict = {}
        if self.redact:
            from mentalglm.analysis.redaction import redact

            redacted = redact(post.text)
            post = replace(post, text=redacted.text)
            flags["redactions"] = {k: v for k, v in redacted.counts.items() if v}
        prompt = self.render(post)
        limit = self.backend.context_length
        # One spare position: llama.cpp evaluates the last sampled token too.
        budget = limit - self.backend.options.max_new_tokens - 1 if limit else None
        if budget is not None and self.backend.token_count(prompt) > budget:
            post, prompt = self._truncate(post, budget)
            flags["truncated"] = True
            log.warning("post %s is too long for the context (%d tokens with the answer); truncated", post.id, limit)
        return post, prompt, flags

    def request(self, post: Post) -> tuple[GenerationRequest, dict]:
        """The generation request a run sends for ``post`` (redacted, fitted to the context, in the task's
        answer format) and the flags its record gets (``redactions``, ``truncated``): what batch files hold."""
        post, prompt, flags = self._prepare(post)
        return self._generation_request(post, prompt), flags

    def _generation_request(self, shown: Post, prompt: str) -> GenerationRequest:
        # With an evidence part, each post's grammar makes the quotes copies of that post.
        messages = (tuple(self.prompt.messages(shown.instruction or self.task.instruction, shown.text, self.system))
                    if isinstance(self.prompt, ServerTemplatePrompt) else None)
        return GenerationRequest(id=shown.id, prompt=prompt, stop=self.prompt.stop, messages=messages,
                                 response_format=self.response_format.for_post(shown.text))

    def _truncate(self, post: Post, budget: int) -> tuple[Post, str]:
        """The longest head of the post whose prompt fits ``budget`` tokens (binary search on characters)."""
        low, high = 0, len(post.text)
        while low < high:
            middle = (low + high + 1) // 2
            if self.backend.token_count(self.render(replace(post, text=post.text[:middle]))) <= budget:
                low = middle
            else:
                high = middle - 1
        if low == 0:
            raise MentalGLMError("the instruction alone does not fit the model's context of "
                                 f"{self.backend.context_length} "
                                 "tokens; raise n_ctx or lower max_new_tokens")
        cut = replace(post, text=post.text[:low])
        return cut, self.render(cut)

    def _predictions(self, posts: Sequence[Post]) -> list[Prediction]:
        prepared = [self._prepare(p) for p in posts]
        if self.mode == "score":
            outputs = self._score([(p, prompt) for p, prompt, _ in prepared])
        else:
            requests = [self._generation_request(p, prompt) for p, prompt, _ in prepared]
            outputs = [(c.text, dict(c.usage), None) for c in self.backend.generate(requests)]
            if self.confidence:
                outputs = [(text, usage, scores) for (text, usage, _), scores
                           in zip(outputs, self._label_scores([prompt for _, prompt, _ in prepared]))]
        predictions = []
        for (shown, _, flags), (text, usage, scores) in zip(prepared, outputs):
            prediction = self.predict_from_output(shown, text)  # grounded in the post as the backend saw it
            prediction.usage, prediction.scores = usage, scores
            if scores is not None and len(prediction.labels) == 1:
                prediction.confidence = label_probabilities(scores)[prediction.labels[0]]
            if self.calibration is not None:
                prediction.probabilities = self.calibration.probabilities(scores)
                prediction.needs_review = self.calibration.decide(prediction.probabilities)[1]
            prediction.truncated = bool(flags.get("truncated"))
            prediction.redactions = flags.get("redactions") or {}
            predictions.append(prediction)
        return predictions

    def _score(self, prepared: Sequence[tuple[Post, str]]) -> list[tuple[str, dict, dict]]:
        """Label each post by log-likelihood after the label header (the posts scored in one call),
        then generate the explanations of the chosen labels in one call."""
        labels = list(self.task.label_names)
        scores = self._label_scores([prompt for _, prompt in prepared])
        chosen = [max(labels, key=s.get) for s in scores]
        if self.calibration is not None:  # before the explanation, so it explains the label the policy gives
            chosen = [self.calibration.decide(self.calibration.probabilities(s))[0] for s in scores]
        if not self.explain:
            return [(self.response_format.render([best]), {}, s) for best, s in zip(chosen, scores)]
        leads = [self.response_format.explanation_lead([best]) for best in chosen]
        if self.backend.reads_posts:
            requests = [GenerationRequest(id=post.id, prompt=prompt, answer_labels=(best,),
                                          response_format=self.response_format.for_post(post.text))
                        for (post, prompt), best in zip(prepared, chosen)]
        else:
            requests = [GenerationRequest(id=post.id, prompt=prompt + lead, stop=self.prompt.stop)
                        for (post, prompt), lead in zip(prepared, leads)]
        completions = self.backend.generate(requests)
        return [(lead + c.text, dict(c.usage), s) for lead, c, s in zip(leads, completions, scores)]

    def _label_scores(self, prompts: Sequence[str]) -> list[dict[str, float]]:
        """Each label's log-likelihood after ``标签：``, for every prompt (one backend call)."""
        labels = list(self.task.label_names)
        head = "" if self.backend.reads_posts else self.response_format.label_head
        rows = self.backend.score_labels_batch([prompt + head for prompt in prompts], labels)
        return [dict(zip(labels, row)) for row in rows]

    def predict_from_output(self, post: Post, output: str, *, ground: bool = True) -> Prediction:
        """Parse a model output for ``post`` into a Prediction (no backend call); quoted spans are
        looked up in ``post.text`` (give the post as the backend saw it: redacted, truncated), or
        not at all with ``ground=False`` (the post is not known: ``evidence`` stays None)."""
        parsed = self.task.parse(output, strict=self.strict_format)
        evidence, grounding = grounding_of(output, post.text) if ground else (None, None)
        return Prediction(id=post.id, task=self.task.name, labels=list(parsed.labels),
                          explanation=parsed.explanation, valid=parsed.valid, output=output,
                          problem=parsed.problem, fields=dict(parsed.fields) if parsed.fields is not None else None,
                          gold=post.gold, label_line=parsed.label_line, evidence=evidence, grounding=grounding)

    def analyze(self, text: str, id: str = "1") -> Prediction:
        """Analyse one post given as text (``on_prediction`` fires before it is returned)."""
        prediction = self._predictions([Post(id=str(id), text=text)])[0]
        self.plugins.notify_prediction(prediction, self.task)
        return prediction

    def _batches(self, posts: Iterable[Post | str]) -> Iterator[Prediction]:
        batch: list[Post] = []
        for number, post in enumerate(posts, 1):
            batch.append(post if isinstance(post, Post) else Post(id=str(number), text=post))
            if len(batch) == self.batch_size:
                yield from self._predictions(batch)
                batch = []
        if batch:
            yield from self._predictions(batch)

    def analyze_many(self, posts: Iterable[Post | str]) -> Iterator[Prediction]:
        """Analyse posts in batches, yielding Predictions in input order; strings get ids 1, 2, …

        ``on_prediction`` fires for each prediction just before it is yielded.
        """
        for prediction in self._batches(posts):
            self.plugins.notify_prediction(prediction, self.task)
            yield prediction

    def run(self, posts: Sequence[Post] | Iterable[Post], output: str | os.PathLike, progress: bool | None = None, *,
            data: str | os.PathLike | None = None, record: str | os.PathLike | None = None,
            retry_hint: str = "use another output or delete it") -> RunSummary:
        """Analyse ``posts`` into a JSONL file, appending each prediction as it is made.

        Posts whose id is already in ``output`` are skipped, so rerunning after an interruption
        finishes the job with every id exactly once. The settings are kept in a run record
        (``record``, by default ``OUTPUT.run.json``); a rerun whose settings or data differ from
        those of the predictions already in ``output`` is refused, never mixed in.
        ``on_prediction`` fires for each new prediction after it is written and flushed.

        Memory stays flat for any number of posts when ``posts`` is a re-iterable stream such as
        :class:`~mentalglm.data.readers.PostSource`: it is read once for the run record's digest, once
        to check the backend can answer, and once to analyse; only the ids already done are kept.

        Args:
            posts: the posts to analyse: a list, or a re-iterable stream (a one-shot iterator is
                read into a list first).
            output: the JSONL file of predictions.
            progress: show a progress bar (default: when stderr is a terminal).
            data: the file the posts came from (its SHA-256 is recorded).
            record: where the run record goes.
            retry_hint: how the refusal message tells the user to start afresh.

        Raises:
            MentalGLMError: the output holds predictions made with other settings or other data.
        """
        if iter(posts) is posts:  # a one-shot iterator cannot be read three times
            posts = list(posts)
        posts_sha256, total = posts.digest() if hasattr(posts, "digest") else (posts_digest(posts), len(posts))
        done = read_done_ids(output)
        record = run_record.sidecar_path(output) if record is None else record
        run_record.claim(record, {**self.settings(), **run_record.data_settings(data, posts_sha256)}, output=output,
                         has_predictions=bool(done), retry_hint=retry_hint)
        skipped = len(done)  # the same data (the record says so): every id done is one of these posts
        if done:
            log.info("resuming: %d of %d posts already in %s", skipped, total, output)
        self.backend.preflight((p.id for p in posts if p.id not in done), response_format=self.response_format)
        invalid = without_label_line = analysed = 0
        meter = _Progress(total - skipped, progress)
        with JsonlAppender(output) as sink:
            for prediction in self._batches(p for p in posts if p.id not in done):
                sink.write(prediction.to_dict())
                # Only now, with the record on disk: a crash cannot make a plugin see a post twice.
                self.plugins.notify_prediction(prediction, self.task)
                analysed += 1
                invalid += not prediction.valid
                without_label_line += prediction.valid and not prediction.label_line
                meter.advance(1)
        meter.finish()
        return RunSummary(total=total, analysed=analysed, skipped=skipped, invalid=invalid, output=str(output),
                          without_label_line=without_label_line, backend_stats=self.backend.run_stats())

    def close(self) -> None:
        """Close the backend if this Analyzer created it."""
        if self._owns_backend:
            self.backend.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()
