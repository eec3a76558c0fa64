"""The model behind the service: loaded once, shared by every task, decoding the posts of many clients together.

Requests put their posts on one bounded queue. A single decoding thread takes the oldest job,
waits up to ``batch_wait`` for more of the same task (and explanation setting) until
``max_batch`` posts are gathered or none has come for ``batch_quiet``, and runs them through the
Analyzer in one call — so sixteen
clients sending one post each fill the backend's parallel sequences the way one client sending
sixteen would. A job whose client went away before its turn is dropped, freeing its place.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, field, replace
from typing import Any

from mentalglm.core.errors import MentalGLMError
from mentalglm.core.prediction import Post

log = logging.getLogger(__name__)


class QueueFull(Exception):
    """The queue holds as many posts as it may: the client should retry later (HTTP 429)."""


class NotReady(Exception):
    """The model is still loading, or failed to load (HTTP 503)."""


@dataclass
class ServeSettings:
    """What the service loads and how it batches (the command line's settings).

    Attributes:
        tasks: task names or task files, in order.
        backend, model, prompt, system, options: as for ``analyze``.
        calibrations: task name → calibration file (those tasks run in score mode with it).
        raw_scores: the moderation task may run without a calibration, scored by its raw label
            probabilities (score mode).
        moderation: serve ``/v1/moderations`` (needs the suicide-risk task).
        max_batch: the most posts per backend call (default: the backend's preferred batch).
        batch_wait: seconds the decoding thread waits for more posts after the first.
        batch_quiet: it goes sooner when no post has come for this long (default: a quarter of
            ``batch_wait``): clients answered together send again together.
        queue_size: the most posts waiting; more gets 429.
    """

    tasks: list[str]
    backend: str = "llamacpp"
    model: str | None = None
    prompt: str = "glm4-chat"
    system: str | None = None
    options: dict = field(default_factory=dict)
    calibrations: dict[str, str] = field(default_factory=dict)
    raw_scores: bool = False
    moderation: bool = True
    max_batch: int | None = None
    batch_wait: float = 0.02
    batch_quiet: float | None = None
    queue_size: int = 256


@dataclass
class Job:
    """One request's posts for one task, and where its answer goes."""

    task: str
    posts: list[Post]
    explain: bool
    future: asyncio.Future
    loop: asyncio.AbstractEventLoop
    cancelled: threading.Event = field(default_factory=threading.Event)


class Engine:
    """Loads the backend and one Analyzer per task in a thread, then decodes queued jobs in batches.

    Raises (from :meth:`check`): MentalGLMError for settings that cannot serve (a task's
    constraint off, moderation without a calibration), found before the model loads.
    """

    def __init__(self, settings: ServeSettings, metrics, plugins=None):
        from mentalglm.core.plugin_manager import get_plugin_manager

        self.settings, self.metrics = settings, metrics
        self.plugins = plugins or get_plugin_manager()
        self.state, self.error = "loading", None
        self.tasks = {}
        self.analyzers: dict[tuple[str, bool], Any] = {}
        self.digests: dict = {}
        self.backend = None
        self._queue: deque[Job] = deque()
        self._queued_posts = 0
        self._cond = threading.Condition()
        self._stopping = False
        self._ids = itertools.count()
        self.check()

    # -- settings that cannot serve are refused before anything loads ---------------------------
    def check(self) -> None:
        """Resolve the tasks and refuse settings the service cannot honour, in one line each."""
        from mentalglm.serve.moderation import RISK_TASK

        s = self.settings
        if not s.tasks:
            raise MentalGLMError("serve: give at least one --task")
        for name in s.tasks:
            task = self.plugins.task(name)
            self.tasks[task.name] = task
        unknown = sorted(set(s.calibrations) - set(self.tasks))
        if unknown:
            raise MentalGLMError(f"serve: --calibration {unknown[0]}=…: task '{unknown[0]}' is not served")
        options = self.plugins.backend_class(s.backend).parse_options(s.options)
        if getattr(options, "constrained", True) is False:
            raise MentalGLMError("serve: the answer constraint is off (constrained=false); the service only answers "
                                 "in the task's format, so it does not start without it")
        if s.moderation and RISK_TASK in self.tasks and RISK_TASK not in s.calibrations and not s.raw_scores:
            raise MentalGLMError(f"serve: /v1/moderations reports calibrated probabilities of {RISK_TASK}: give "
                                 f"--calibration {RISK_TASK}=FILE (mentalglm calibrate), or --raw-scores for "
                                 "uncalibrated ones, or --no-moderation")

    @property
    def moderation(self) -> bool:
        """Whether ``/v1/moderations`` is served."""
        from mentalglm.serve.moderation import RISK_TASK

        return self.settings.moderation and RISK_TASK in self.tasks

    def mode(self, task: str) -> str:
        """Score mode for calibrated tasks (and the moderation task with raw scores), else generate."""
        from mentalglm.serve.moderation import RISK_TASK

        scored = task in self.settings.calibrations or (self.moderation and task == RISK_TASK)
        return "score" if scored else "generate"

    # -- loading ---------------------------------------------------------------------------------
    def start(self) -> None:
        """Load the model in a thread (``/health`` answers 503 meanwhile), then start decoding."""
        self._thread = threading.Thread(target=self._load_and_run, name="mentalglm-engine", daemon=True)
        self._thread.start()

    def _load_and_run(self) -> None:
        try:
            self._load()
        except Exception as exc:  # noqa: BLE001 -- reported by /health and every route, not a crash
            self.state, self.error = "failed", " ".join(str(exc).split()) or type(exc).__name__
            log.error("serve: the model did not load: %s", self.error)
            return
        if self._stopping:
            return
        self.state = "ready"
        log.info("serve: ready (%s, %s)", self.settings.backend, ", ".join(self.tasks))
        self._run()

    def _load(self) -> None:
        from mentalglm.analysis.analyzer import Analyzer
        from mentalglm.core.files import content_sha256

        s = self.settings
        self.backend = self.plugins.backend_class(s.backend)(s.model, s.options)
        for name, task in self.tasks.items():
            mode = self.mode(name)
            if mode == "score" and "score_labels" not in self.backend.capabilities:
                raise MentalGLMError(f"serve: task '{name}' needs label probabilities, which backend "
                                     f"'{s.backend}' cannot give")
            for explain in (True, False):
                analyzer = Analyzer(task, backend=self.backend, prompt=s.prompt, system=s.system, mode=mode,
                                    explain=explain or mode == "generate", calibration=s.calibrations.get(name),
                                    batch_size=self.max_batch, plugins=self.plugins)
                analyzer.backend.preflight(["startup"], response_format=analyzer.response_format)
                self.analyzers[(name, explain)] = analyzer
        model_digest = None
        if s.model and not s.model.startswith("sample:"):
            try:
                model_digest = content_sha256(s.model)
            except OSError:
                model_digest = None  # a served name (openai backend): the server's identity is in server_info
        self.digests = {"model": s.model, "model_sha256": model_digest,
                        "calibration_sha256": {name: self.analyzers[(name, True)].calibration.sha256
                                               for name in self.tasks if name in s.calibrations}}

    def policy(self, task: str) -> dict | None:
        """The decision policy of a calibrated task (risk label, threshold, review band), for the page."""
        analyzer = self.analyzers.get((task, True))
        return analyzer.calibration.policy.to_dict() if analyzer is not None and analyzer.calibration else None

    @property
    def max_batch(self) -> int:
        """Posts per backend call."""
        if self.settings.max_batch:
            return self.settings.max_batch
        return self.backend.preferred_batch_size if self.backend is not None else 8

    # -- the queue -------------------------------------------------------------------------------
    def submit(self, task: str, posts: list[Post], explain: bool) -> Job:
        """Queue ``posts`` of ``task``; the job's future resolves to their predictions in order.

        Raises:
            NotReady: the model is loading or failed. QueueFull: no room for these posts.
        """
        if self.state != "ready":
            raise NotReady(self.error or "the model is loading")
        loop = asyncio.get_running_loop()
        job = Job(task, posts, explain, loop.create_future(), loop)
        with self._cond:
            if self._queued_posts + len(posts) > self.settings.queue_size and self._queue:
                raise QueueFull()
            self._queue.append(job)
            self._queued_posts += len(posts)
            self.metrics.queue_depth = self._queued_posts
            self._cond.notify()
        return job

    def cancel(self, job: Job) -> None:
        """The client went away: drop the job if it has not started (its place is freed)."""
        job.cancelled.set()
        with self._cond:
            if job in self._queue:
                self._queue.remove(job)
                self._queued_posts -= len(job.posts)
                self.metrics.queue_depth = self._queued_posts

    def stop(self, timeout: float = 60.0) -> None:
        """Stop decoding, wait (up to ``timeout``) for the batch or the load in progress, and release the model."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        thread = getattr(self, "_thread", None)
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
            if thread.is_alive():  # still loading or decoding: leave the model to the process's exit
                log.warning("serve: the model was still busy after %.0f s; not released", timeout)
                return
        for analyzer in list(self.analyzers.values()):
            analyzer.close()
        if self.backend is not None:
            self.backend.close()

    def _take(self) -> list[Job] | None:
        """The next batch: the oldest job and, within ``batch_wait``, more of its kind up to ``max_batch`` posts."""
        with self._cond:
            while not self._queue and not self._stopping:
                self._cond.wait()
            if self._stopping:
                return None
            first = self._queue[0]
            kind = (first.task, first.explain)
            now = time.monotonic()
            quiet = self.settings.batch_quiet if self.settings.batch_quiet is not None else self.settings.batch_wait / 4
            deadline = now + self.settings.batch_wait
            gathered, last_arrival = 0, now
            while True:
                count = sum(len(j.posts) for j in self._queue if (j.task, j.explain) == kind)
                now = time.monotonic()
                if count > gathered:
                    gathered, last_arrival = count, now
                # Go when the batch is full, the wait is over, or posts stopped coming (clients answered
                # together send again together; waiting longer only adds latency).
                if gathered >= self.max_batch or now >= deadline or now - last_arrival >= quiet or self._stopping:
                    break
                self._cond.wait(min(deadline, last_arrival + quiet) - now)
            taken, size = [], 0
            for job in list(self._queue):
                if (job.task, job.explain) != kind:
                    continue
                if taken and size + len(job.posts) > self.max_batch:
                    break
                taken.append(job)
                size += len(job.posts)
                self._queue.remove(job)
                self._queued_posts -= len(job.posts)
            self.metrics.queue_depth = self._queued_posts
            return taken

    def _run(self) -> None:
        while True:
            jobs = self._take()
            if jobs is None:
                return
            jobs = [j for j in jobs if not j.cancelled.is_set()]
            if not jobs:
                continue
            # Posts of several clients share one call: internal ids keep them apart, the clients' come back.
            posts = [replace(post, id=f"{next(self._ids)}") for job in jobs for post in job.posts]
            analyzer = self.analyzers[(jobs[0].task, jobs[0].explain)]
            try:
                predictions = list(analyzer.analyze_many(posts))
            except Exception as exc:  # noqa: BLE001 -- the clients of this batch get the error, the service goes on
                for job in jobs:
                    job.loop.call_soon_threadsafe(_settle, job.future, None, exc)
                continue
            self.metrics.batch(len(posts))
            self.metrics.predictions(jobs[0].task, len(predictions), sum(not p.valid for p in predictions))
            start = 0
            for job in jobs:
                mine = predictions[start:start + len(job.posts)]
                start += len(job.posts)
                for prediction, post in zip(mine, job.posts):
                    prediction.id = post.id
                job.loop.call_soon_threadsafe(_settle, job.future, mine, None)


def _settle(future: asyncio.Future, result, error) -> None:
    if future.done():  # the client went away meanwhile
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)
