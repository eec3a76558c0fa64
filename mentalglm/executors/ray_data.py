"""Ray Data executor: one job over a cluster, each post predicted exactly once by id (the ``[ray]`` extra).

Posts flow through :meth:`ray.data.Dataset.map_batches` into a pool of ``workers`` actors (Ray
Data's ``ActorPoolStrategy``: its LLM processors' ``concurrency``); each actor builds one
:class:`~mentalglm.analysis.analyzer.Analyzer` — one backend: ``llamacpp`` on CPU nodes, ``torch`` on
GPU nodes, ``openai`` against servers — in its ``__init__`` and keeps it for every batch, as Ray
Data's LLM batch processors do. A post whose
prediction fails becomes a row with its id and a one-line error, never a crash of the job.

The driver (this process) receives the blocks of predictions and writes each as a part file,
atomically (:mod:`mentalglm.executors.blocks`), so no shared file system is needed and nothing
is written anywhere but the output the user named. A rerun — after a worker was killed, the
driver restarted, or posts failed — skips every id already written; at the end the parts are
merged into one predictions file, each id once, in input order. The run record (``run.json`` /
``FILE.run.json``) is the local executor's: a rerun with other settings or data is refused.

Ray starts with its dashboard off, usage statistics off and worker logs kept on the workers
(:func:`init_ray`); without an address it is a local cluster on this machine.

Example:
    >>> import ray
    >>> from mentalglm.executors.ray_data import analyze_dataset, init_ray
    >>> init_ray(num_cpus=2)                                                      # doctest: +SKIP
    >>> posts = ray.data.read_json("posts.jsonl")           # columns id, text    # doctest: +SKIP
    >>> summary = analyze_dataset(posts, task="depression", model="mentalglm-q4_k_m.gguf",
    ...                           output="runs/ray", workers=2)                   # doctest: +SKIP
    >>> summary.analysed, summary.errors                                          # doctest: +SKIP
    (2000, 0)
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import logging
import os
from dataclasses import dataclass
from typing import Any, Iterable, Iterator, Mapping

from mentalglm.analysis import run_record
from mentalglm.core.errors import MentalGLMError
from mentalglm.core.plugin_manager import PluginManager, get_plugin_manager
from mentalglm.core.prediction import Post, Prediction, posts_digest
from mentalglm.executors import blocks
from mentalglm.executors.blocks import Fingerprint, OutputLayout

log = logging.getLogger(__name__)

#: Posts per ``map_batches`` call (and so per part file) unless ``batch_size`` is given.
DEFAULT_BATCH_SIZE = 64
#: The columns of the blocks that come back from the workers.
RESULT_COLUMNS = ("id", "prediction", "error", "settings")
NEEDS_RAY = "--executor ray needs Ray Data: pip install 'mentalglm[ray]'"
#: Keys of the run record that identify the data (checked before any worker starts).
_DATA_KEYS = ("data", "data_sha256", "posts_sha256")


def _ray():
    try:
        import ray
        import ray.data  # noqa: F401  (the extra installs both; a bare ray lacks Data's dependencies)
    except ImportError:
        raise MentalGLMError(NEEDS_RAY) from None
    return ray


def init_ray(address: str | None = None, *, num_cpus: int | None = None, log_to_driver: bool = False) -> None:
    """Join the cluster at ``address``, or start a local one; does nothing when Ray is already initialised.

    Ray's dashboard is off and its usage statistics are not sent; workers' own logs stay on the
    workers unless ``log_to_driver``. Without an address the cluster is local even when
    ``RAY_ADDRESS`` is set: data goes only where the user said.

    Args:
        address: ``ray://HOST:10001`` (Ray Client) or ``HOST:6379`` (a node of the cluster); None: local.
        num_cpus: CPUs of the local cluster (default: all of this machine's); ignored with an address.
        log_to_driver: show the workers' stdout/stderr here (``mentalglm -v``).

    Raises:
        MentalGLMError: Ray is not installed, or the cluster cannot be reached.
    """
    ray = _ray()
    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # inherited by a local cluster's processes
    if not log_to_driver:  # Ray's C++ core logs (even routine notes at error level) go to its log files only
        os.environ.setdefault("RAY_BACKEND_LOG_LEVEL", "fatal")
    quiet = {"logging_level": logging.WARNING if log_to_driver else logging.ERROR, "log_to_driver": log_to_driver}
    try:
        if address:
            ray.init(address=address, **quiet)
        else:
            ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, **quiet)
    except (ConnectionError, ValueError, RuntimeError) as exc:
        where = address or "a local cluster"
        raise MentalGLMError(f"ray: cannot start or join {where}: {str(exc).splitlines()[0]}") from None
    ray.data.DataContext.get_current().enable_progress_bars = False  # the driver draws one line of its own
    logging.getLogger("ray.data").setLevel(logging.WARNING if log_to_driver else logging.ERROR)


@dataclass
class RaySummary:
    """What a distributed run did.

    Attributes:
        total: posts in the data.
        analysed: predictions written by this run.
        skipped: posts already predicted before it.
        invalid: of those written now, answers no label could be read from.
        without_label_line: of those written now, valid answers read without a ``标签：`` line.
        errors: posts that failed (ids and one-line errors in ``errors_file``); a rerun retries them.
        first_error: ``id: error`` of the first failure, for the summary line.
        output: the merged predictions file.
        errors_file: where the failures of this run are listed (absent when there were none).
        duplicates: lines of one id written twice (a retried block), merged into one.
    """

    total: int
    analysed: int
    skipped: int
    invalid: int
    without_label_line: int
    errors: int
    first_error: str | None
    output: str
    errors_file: str
    duplicates: int = 0


class PostAnalyzer:
    """The Ray Data actor: one Analyzer (one backend) built in ``__init__``, then a batch of posts per call.

    Args:
        config: the :class:`~mentalglm.analysis.analyzer.Analyzer` keyword arguments (task object,
            backend name, model, options, …), the same on every worker.
        skip: ids not to predict (already written), or an ObjectRef of that set.

    A batch is a ``pyarrow.Table`` of posts (``id``, ``text``, optional ``instruction`` and
    ``gold``); the result has one row per post not skipped: ``id``, ``prediction`` (its JSON
    line) or ``error`` (one line, no post text), and in the first row the worker's settings,
    which the driver checks against the run record before writing anything.
    """

    def __init__(self, config: Mapping[str, Any], skip: Any = frozenset()):
        from mentalglm.analysis.analyzer import Analyzer

        self.analyzer, self.failure = None, None
        try:
            self.analyzer = Analyzer(**config)
        except MentalGLMError as exc:  # raised from __call__: Ray Data reports a UDF's error, not an actor's death
            self.failure = exc
        if not isinstance(skip, (set, frozenset)):
            skip = _ray().get(skip)
        self.skip = skip
        self.settings: str | None = None  # after the first batch's preflight: a server backend identifies itself

    def __call__(self, batch):
        """Predict one batch (``pyarrow.Table``) of posts; failures become rows with an error.

        Raises:
            MentalGLMError: the backend could not be built, or its preflight refuses (fail closed).
        """
        import pyarrow as pa

        if self.failure is not None:
            raise self.failure
        posts = [post for post in map(post_from_row, batch.to_pylist()) if post.id not in self.skip]
        if posts and self.settings is None:
            # Fail closed, before the first answer: a server that ignores the constraint stops the job.
            self.analyzer.backend.preflight((p.id for p in posts), response_format=self.analyzer.response_format)
            self.settings = json.dumps(self.analyzer.settings(), ensure_ascii=False, sort_keys=True)
        rows = list(self._predict(posts))
        columns = {name: [row[i] for row in rows] for i, name in enumerate(RESULT_COLUMNS[:3])}
        columns["settings"] = [self.settings if i == 0 else None for i in range(len(rows))]
        return pa.table(columns, schema=result_schema())

    def _predict(self, posts: list[Post]) -> Iterator[tuple[str, str | None, str | None]]:
        analyzer = self.analyzer
        for start in range(0, len(posts), analyzer.batch_size):
            chunk = posts[start:start + analyzer.batch_size]
            try:
                # _batches, not analyze_many: on_prediction fires on the driver once the block is on disk.
                predictions = list(analyzer._batches(chunk))
            except Exception:  # find the post that fails, keep the others
                predictions = None
            if predictions is not None:
                yield from ((p.id, json.dumps(p.to_dict(), ensure_ascii=False), None) for p in predictions)
                continue
            for post in chunk:
                try:
                    prediction = next(iter(analyzer._batches([post])))
                except Exception as exc:  # an error row, never a crashed job
                    yield post.id, None, one_line_error(exc)
                else:
                    yield post.id, json.dumps(prediction.to_dict(), ensure_ascii=False), None

    def __del__(self):
        analyzer = getattr(self, "analyzer", None)
        if analyzer is not None:
            analyzer.close()


def result_schema():
    """The Arrow schema of the workers' result blocks (all strings; ``prediction``/``error``/``settings`` nullable)."""
    import pyarrow as pa

    return pa.schema([(name, pa.string()) for name in RESULT_COLUMNS])


def one_line_error(exc: BaseException) -> str:
    """``Type: first line`` of an exception, at most 300 characters: what an error row says."""
    text = str(exc).strip().splitlines()
    line = f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__
    return line if len(line) <= 300 else line[:297] + "…"


def post_from_row(row: Mapping[str, Any]) -> Post:
    """A dataset row (``id``, ``text``, optional ``instruction``, ``gold``) as a Post; a list gold becomes a tuple.

    Raises:
        MentalGLMError: no ``id`` or no text.
    """
    if row.get("id") is None:
        raise MentalGLMError(f"a dataset row has no 'id' (columns: {', '.join(sorted(row)) or 'none'}); "
                             "posts need columns id and text")
    text = row.get("text")
    if not isinstance(text, str):
        raise MentalGLMError(f"post '{row['id']}' has no text (a string column 'text' is needed)")
    gold = row.get("gold")
    return Post(id=str(row["id"]), text=text, gold=tuple(gold) if isinstance(gold, list) else gold,
                instruction=row.get("instruction"))


def _rows(posts: Iterable[Post]) -> list[dict]:
    return [{"id": p.id, "text": p.text, "instruction": p.instruction,
             "gold": list(p.gold) if isinstance(p.gold, tuple) else p.gold} for p in posts]


def _dataset_posts(ds) -> Iterator[Post]:
    """The posts of ``ds`` in its order (the digest depends on it), streamed through the driver."""
    options = ds.context.execution_options
    before, options.preserve_order = options.preserve_order, True
    try:
        for batch in ds.iter_batches(batch_format="pyarrow", batch_size=None):
            yield from map(post_from_row, batch.to_pylist())
    finally:
        options.preserve_order = before


def analyze_dataset(ds, *, task, output: str | os.PathLike, backend: str = "llamacpp", model: str | None = None,
                    options: Mapping[str, Any] | None = None, prompt: Any = "glm4-chat", system: str | None = None,
                    mode: str = "generate", explain: bool = True, redact: bool | None = None,
                    strict_format: bool = False, calibration: Any = None, workers: int | tuple[int, int] = 1,
                    batch_size: int | None = None, num_cpus: float = 1, num_gpus: float = 0,
                    data: str | None = None, progress: bool | None = None,
                    plugins: PluginManager | None = None) -> RaySummary:
    """Analyse a ``ray.data.Dataset`` of posts into ``output/`` (``predictions.jsonl``, ``run.json``, ``parts/``).

    The dataset needs columns ``id`` and ``text`` (``instruction`` and ``gold`` are used when
    present); ids must be unique. The driver reads it once, in order, for the run record's
    fingerprint of the posts and their order, then the workers read it again to analyse it.

    Args:
        ds: the posts.
        task, backend, model, options, prompt, system, mode, explain, redact, strict_format,
            calibration: as for :class:`~mentalglm.analysis.analyzer.Analyzer` (names are resolved
            here, so a typo fails before any worker starts).
        output: the output folder; rerunning into it resumes.
        workers: actors, each owning one backend (the size of Ray Data's actor pool: a number, or
            ``(min, max)`` for an autoscaling pool).
        batch_size: posts per actor call and per part file (default :data:`DEFAULT_BATCH_SIZE`);
            each call hands the backend batches of its own preferred size.
        num_cpus, num_gpus: resources reserved per actor. A backend with an ``n_threads``
            option (llamacpp) gets ``num_cpus`` threads unless the options set them.
        data: the name of the data for the run record (its SHA-256 is recorded when it is a file).
        progress: a progress line on stderr (default: when stderr is a terminal).
        plugins: the plugin manager that resolves names and whose ``on_prediction`` hooks fire
            here, on the driver, once a prediction's block is on disk.

    Returns:
        A :class:`RaySummary`; failed posts are counted there (and listed in ``errors.jsonl``), not raised.

    Raises:
        MentalGLMError: Ray missing, unknown names, bad options, duplicate ids, a rerun with
            other settings or data, or a worker that cannot start its backend.
    """
    arguments = {"task": task, "backend": backend, "model": model, "options": options, "prompt": prompt,
                 "system": system, "mode": mode, "explain": explain, "redact": redact, "strict_format": strict_format,
                 "calibration": calibration, "workers": workers, "batch_size": batch_size, "num_cpus": num_cpus,
                 "num_gpus": num_gpus, "data": data, "progress": progress, "plugins": plugins}
    return _run(lambda: _dataset_posts(ds), lambda skip: (ds, skip), OutputLayout.for_dir(output), arguments,
                retry_hint="use another output folder or delete it")


def analyze_posts(posts: Iterable[Post], *, output: str | os.PathLike, data: str | None = None,
                  retry_hint: str = "use another --output or delete it and its .run.json",
                  **settings: Any) -> RaySummary:
    """Analyse posts this process reads (``mentalglm analyze --executor ray --input FILE --output FILE``).

    The posts are read once here (a re-iterable stream such as
    :class:`~mentalglm.data.readers.PostSource` stays in flat memory): fingerprinted, and those not
    yet done put into the cluster's object store in blocks of ``batch_size`` — one actor call
    each, so every worker gets work however small the file. The layout is the local
    executor's (``FILE``, ``FILE.run.json``), plus ``FILE.parts/`` and ``FILE.errors.jsonl``.

    Args:
        posts: the posts.
        output: the predictions file.
        data: the file the posts came from (its SHA-256 is recorded).
        retry_hint: how a refusal tells the user to start afresh.
        settings: the keyword arguments of :func:`analyze_dataset` (task, backend, model, workers, …).

    Raises:
        MentalGLMError: as :func:`analyze_dataset`.
    """
    layout = OutputLayout.for_file(output)
    sent: list = []
    block = settings.get("batch_size") or DEFAULT_BATCH_SIZE

    def read():
        import pyarrow as pa

        ray, pending = _ray(), []
        for post in posts:
            if post.id not in done:
                pending.append(post)
                if len(pending) == block:
                    sent.append(ray.put(pa.Table.from_pylist(_rows(pending))))
                    pending = []
            yield post
        if pending:
            sent.append(ray.put(pa.Table.from_pylist(_rows(pending))))

    def dataset(skip):
        return _ray().data.from_arrow_refs(sent), frozenset()  # done posts were never sent

    done = blocks.done_ids(layout)
    return _run(read, dataset, layout, {**settings, "data": data}, retry_hint=retry_hint, done=done)


def _config(arguments: Mapping[str, Any], plugins: PluginManager) -> dict:
    """The Analyzer arguments every worker gets: names resolved and options checked here, on the driver."""
    task = arguments["task"]
    task = plugins.task(task) if isinstance(task, (str, os.PathLike)) else task
    backend_class = plugins.backend_class(arguments.get("backend", "llamacpp"))
    options = dict(arguments.get("options") or {})
    num_cpus = arguments.get("num_cpus", 1)
    if "n_threads" in backend_class.Options.model_fields and options.get("n_threads") is None and num_cpus >= 1:
        options["n_threads"] = int(num_cpus)  # not the machine's free cores: other workers share the node
    backend_class.parse_options(options)  # a misspelt option fails now, not on every worker
    keys = ("backend", "model", "prompt", "system", "mode", "explain", "redact", "strict_format", "calibration")
    config = {key: arguments[key] for key in keys if key in arguments}
    return {**config, "task": task, "options": options, "batch_size": arguments.get("batch_size")}


def _check_data(layout: OutputLayout, data: dict, has_predictions: bool, retry_hint: str) -> None:
    """Refuse other data before any worker starts (the settings are checked on the first block)."""
    if has_predictions and layout.record.is_file():
        from mentalglm.core.files import read_json

        previous = read_json(layout.record, "run record")
        if isinstance(previous, dict):
            changed = run_record.differences({k: previous.get(k) for k in _DATA_KEYS}, data)
            if changed:
                raise MentalGLMError(f"{layout.record} records predictions made with other settings: "
                                     f"{'; '.join(changed[:3])}; {retry_hint}")


def _pool(workers: int | tuple[int, int]):
    """Ray Data's actor pool for ``workers``: a fixed size, or ``(min, max)`` to autoscale."""
    from ray.data import ActorPoolStrategy

    if isinstance(workers, int):
        if workers < 1:
            raise MentalGLMError("ray: workers must be at least 1")
        return ActorPoolStrategy(size=workers)
    low, high = workers
    if not 1 <= low <= high:
        raise MentalGLMError(f"ray: workers (min, max) must have 1 ≤ min ≤ max, got {workers}")
    return ActorPoolStrategy(min_size=low, max_size=high)


def _settings_of(config: Mapping[str, Any], post_ids: list[str]) -> dict:
    """The settings a worker records, after the preflight a worker makes on ``post_ids`` (a server then
    identifies itself); run as a Ray task when no post is left, so a rerun is still checked."""
    from mentalglm.analysis.analyzer import Analyzer

    with Analyzer(**config) as analyzer:
        analyzer.backend.preflight(iter(post_ids), response_format=analyzer.response_format)
        return analyzer.settings()


def _run(read_posts, make_dataset, layout: OutputLayout, arguments: Mapping[str, Any], *, retry_hint: str,
         done: set[str] | None = None) -> RaySummary:
    """The driver of both entry points: fingerprint, check, run the actors, write blocks, merge."""
    ray = _ray()
    init_ray()
    plugins = arguments.get("plugins") or get_plugin_manager()
    config = _config(arguments, plugins)
    done = blocks.done_ids(layout) if done is None else done
    fingerprint = Fingerprint()
    fingerprint.sha256 = posts_digest(fingerprint.track(read_posts()))
    data = run_record.data_settings(arguments.get("data"), fingerprint.sha256)
    _check_data(layout, data, bool(done), retry_hint)
    skipped = len(done & fingerprint.positions.keys())
    if done:
        log.info("resuming: %d of %d posts already in %s", skipped, fingerprint.count, layout.predictions)
    batch_size = arguments.get("batch_size") or DEFAULT_BATCH_SIZE
    if batch_size < 1:
        raise MentalGLMError("batch size must be at least 1")
    num_cpus, num_gpus = arguments.get("num_cpus", 1), arguments.get("num_gpus", 0)
    claimed: dict | None = None

    def claim(settings: dict) -> None:
        nonlocal claimed
        settings = {**settings, **data}
        if claimed is None:
            run_record.claim(layout.record, settings, output=layout.predictions, has_predictions=bool(done),
                             retry_hint=retry_hint)
            claimed = settings
        elif run_record.differences(claimed, settings):
            raise MentalGLMError(f"ray: workers report different settings: "
                                 f"{'; '.join(run_record.differences(claimed, settings)[:3])}; "
                                 "give every node the same model, options and server")

    writer = blocks.BlockWriter(layout.parts)
    counts = {"analysed": 0, "invalid": 0, "without_label_line": 0}
    errors: list[tuple[str, str]] = []
    task = config["task"]
    from mentalglm.analysis.analyzer import _Progress  # the local executor's progress line, not a second one

    meter = _Progress(fingerprint.count - skipped, arguments.get("progress"))
    if fingerprint.count > skipped:
        ds, skip = make_dataset(done)
        skip_ref = ray.put(frozenset(skip)) if skip else frozenset()
        results = ds.map_batches(PostAnalyzer, fn_constructor_kwargs={"config": config, "skip": skip_ref},
                                 batch_size=batch_size, batch_format="pyarrow",
                                 compute=_pool(arguments.get("workers", 1)), num_cpus=num_cpus,
                                 num_gpus=num_gpus or None)
        try:
            for block in results.iter_batches(batch_format="pyarrow", batch_size=None):
                rows = block.to_pylist()
                for row in rows:
                    if row["settings"] is not None:
                        claim(json.loads(row["settings"]))
                lines = [row["prediction"] for row in rows if row["prediction"] is not None]
                writer.write(lines)
                errors.extend((row["id"], row["error"]) for row in rows if row["error"] is not None)
                for line in lines:
                    prediction = _prediction(json.loads(line))
                    counts["analysed"] += 1
                    counts["invalid"] += not prediction.valid
                    counts["without_label_line"] += prediction.valid and not prediction.label_line
                    plugins.notify_prediction(prediction, task)
                meter.advance(len(rows))
        except ray.exceptions.RayError as exc:
            raise _user_error(exc, layout) from None
        finally:
            meter.finish()
    if claimed is None:  # nothing reached a worker: the settings are still checked against the record
        probe = ray.remote(_settings_of).options(num_cpus=num_cpus, num_gpus=num_gpus or None)
        try:
            claim(ray.get(probe.remote(config, list(itertools.islice(fingerprint.positions, 1)))))
        except ray.exceptions.RayError as exc:
            raise _user_error(exc, layout) from None
    merged = blocks.merge(layout, fingerprint.positions)
    blocks.write_errors(layout, errors)
    return RaySummary(total=fingerprint.count, analysed=counts["analysed"], skipped=skipped,
                      invalid=counts["invalid"], without_label_line=counts["without_label_line"], errors=len(errors),
                      first_error=f"{errors[0][0]}: {errors[0][1]}" if errors else None,
                      output=str(layout.predictions), errors_file=str(layout.errors), duplicates=merged.duplicates)


_PREDICTION_FIELDS = frozenset(f.name for f in dataclasses.fields(Prediction))


def _prediction(obj: dict) -> Prediction:
    """A Prediction again from its JSON record (for ``on_prediction`` hooks on the driver)."""
    return Prediction(**{key: value for key, value in obj.items() if key in _PREDICTION_FIELDS})


def _user_error(exc: BaseException, layout: OutputLayout) -> MentalGLMError:
    """One line for a failed job: the MentalGLMError a worker raised, or what stopped Ray, with how to resume."""
    from ray.exceptions import RayError

    seen, stack = set(), [exc]
    while stack:
        error = stack.pop()
        if id(error) in seen:
            continue
        seen.add(id(error))
        # Ray re-raises a worker's exception as a RayTaskError subclassing it: the original is its cause.
        if isinstance(error, MentalGLMError) and not isinstance(error, RayError):
            return MentalGLMError(str(error).splitlines()[0] if str(error) else type(error).__name__)
        stack.extend(e for e in (getattr(error, "cause", None), error.__cause__, error.__context__)
                     if isinstance(e, BaseException))
    return MentalGLMError(f"ray: the run stopped ({one_line_error(exc)}); the blocks written so far are kept in "
                          f"{layout.parts}: rerun the same command to finish")


def analyze_on_cluster(posts: Iterable[Post], *, output: str | os.PathLike, address: str | None = None,
                       log_to_driver: bool = False, **settings: Any) -> RaySummary:
    """:func:`analyze_posts` on the cluster at ``address`` (default: a local one), shut down afterwards.

    Raises:
        MentalGLMError: Ray is missing, or what :func:`analyze_posts` raises.
    """
    ray = _ray()
    init_ray(address, log_to_driver=log_to_driver)
    try:
        return analyze_posts(posts, output=output, **settings)
    finally:
        ray.shutdown()
