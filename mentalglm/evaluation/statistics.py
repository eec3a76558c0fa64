"""Uncertainty of evaluation numbers: confidence intervals and paired tests between runs.

A metric computed on a few hundred posts is an estimate; reporting it without its spread
invites reading noise as progress. This module gives

- :func:`wilson_interval` — the Wilson score interval of a rate (accuracy, invalid rate), which
  keeps sensible bounds near 0 and 1 where the normal approximation does not;
- :func:`bootstrap_replicates` / :func:`metric_intervals` — a seeded percentile bootstrap over
  posts for every scalar metric of a task, computed by the task's own metric definition;
- :func:`mcnemar_exact` and :func:`cohen_kappa` for comparing two runs on the same posts.

The bootstrap resamples post indices. For the built-in task kinds the replicate metrics are
computed from confusion counts in bulk (numpy), which is what makes 1,000 resamples of a few
thousand posts take well under a second; each fast path is checked against the task's own
``compute_metrics`` on the full data before it is used, and any task it does not recognise (or
whose result it does not reproduce) is scored by calling ``compute_metrics`` on every resample.

numpy is imported inside the functions, like scikit-learn in :mod:`~mentalglm.core.metrics`,
so importing this module costs nothing at CLI start-up.
"""

from __future__ import annotations

import math
from statistics import NormalDist
from typing import Any, Callable, Iterator, Mapping, Sequence

from mentalglm.core import metrics as _metrics

#: Confidence level of every interval mentalglm reports.
CONFIDENCE = 0.95
#: Bootstrap resamples unless the caller asks otherwise (``evaluate --bootstrap N``).
DEFAULT_RESAMPLES = 1000
#: Seed of the bootstrap's random generator unless the caller asks otherwise (``--seed``).
DEFAULT_SEED = 0

#: Metrics that are a share of posts (successes / posts): they get a Wilson interval.
RATE_METRICS = ("accuracy", "invalid_rate", "exact_match")

PERCENTILE_BOOTSTRAP = "percentile bootstrap"
WILSON = "wilson"

# Index blocks hold at most this many entries, so memory stays near 8 MiB per block however
# many posts there are; the block size depends on the number of posts only, so a seed always
# draws the same resamples.
_BLOCK_ENTRIES = 1 << 20
# A fast path must reproduce compute_metrics on the full data to this tolerance: summation order
# differs (float rounding, ~1e-16), definitions must not.
_SELF_CHECK_TOLERANCE = 1e-9


# -- closed-form statistics ------------------------------------------------------------------
def _z(confidence: float) -> float:
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be between 0 and 1, got {confidence}")
    return NormalDist().inv_cdf(0.5 + confidence / 2)


def wilson_interval(successes: int, n: int, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """The Wilson score interval of the rate ``successes / n``.

    Args:
        successes: how many of the ``n`` trials succeeded (0 ≤ successes ≤ n).
        n: the number of trials (posts); must be positive.
        confidence: the confidence level (default 0.95).

    Returns:
        ``(low, high)``, clipped to [0, 1].

    Example:
        >>> [round(x, 4) for x in wilson_interval(8, 10)]
        [0.4902, 0.9433]
    """
    if n <= 0:
        raise ValueError("a rate needs at least one trial")
    if not 0 <= successes <= n:
        raise ValueError(f"successes must be between 0 and {n}, got {successes}")
    z = _z(confidence)
    p = successes / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z / denominator * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    # At 0 and n successes the bound is exactly 0 or 1; say so rather than 1e-17 or 0.9999999999999999.
    low = 0.0 if successes == 0 else max(0.0, centre - half)
    high = 1.0 if successes == n else min(1.0, centre + half)
    return low, high


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value for ``b`` and ``c`` discordant pairs.

    Under the null hypothesis each discordant post is equally likely to favour either run, so
    ``min(b, c)`` is Binomial(b + c, 1/2); the two-sided p-value doubles its lower tail (capped
    at 1). Computed with exact integers, so it is exact for any count.

    Args:
        b: posts only the first run got right.
        c: posts only the second run got right.

    Example:
        >>> round(mcnemar_exact(10, 2), 4)
        0.0386
    """
    if b < 0 or c < 0:
        raise ValueError("discordant counts cannot be negative")
    n = b + c
    if n == 0:
        return 1.0
    # Exact integers throughout: the terms C(n, k) overflow floats past n ≈ 1000, and Python
    # divides big integers with correct rounding.
    term, tail = 1, 1
    for k in range(min(b, c)):
        term = term * (n - k) // (k + 1)
        tail += term
    return min(1.0, 2 * tail / (1 << n))


def cohen_kappa(first: Sequence[Any], second: Sequence[Any], *, weights: str | None = None,
                labels: Sequence[Any] | None = None) -> float | None:
    """Cohen's κ between two aligned sequences of categorical (or, weighted, ordinal) labels.

    κ = 1 − Σ wᵢⱼ·Oᵢⱼ / Σ wᵢⱼ·Eᵢⱼ over the categories' confusion counts O and the counts E that
    chance would give (the product of the two sides' marginals), with wᵢⱼ = 1 for a disagreement
    (nominal: the familiar (p_o − p_e) / (1 − p_e)), |i − j| (``linear``) or (i − j)² (``quadratic``).

    Args:
        weights: None (nominal), ``"linear"`` or ``"quadratic"`` (ordinal ratings).
        labels: every category, in order; needed for weighted κ so the scale's distances are right
            (default: the categories seen, sorted).

    Returns:
        κ, or None when it is undefined (chance disagreement is zero: both sequences give one and
        the same category to every item) or there are no items.

    Example:
        >>> cohen_kappa(["a", "a", "b", "b"], ["a", "b", "b", "b"])
        0.5
    """
    if len(first) != len(second):
        raise ValueError("κ needs two sequences of the same length")
    if weights not in (None, "linear", "quadratic"):
        raise ValueError(f"weights must be None, 'linear' or 'quadratic', got {weights!r}")
    n = len(first)
    if n == 0:
        return None
    from collections import Counter

    categories = list(labels) if labels is not None else sorted(set(first) | set(second), key=repr)
    index = {c: i for i, c in enumerate(categories)}
    missing = (set(first) | set(second)) - index.keys()
    if missing:
        raise ValueError(f"categories not in labels: {sorted(missing, key=repr)}")

    def weight(i: int, j: int) -> int:
        return (i != j) if weights is None else abs(i - j) if weights == "linear" else (i - j) ** 2

    observed = Counter((index[x], index[y]) for x, y in zip(first, second))
    left, right = Counter(index[x] for x in first), Counter(index[y] for y in second)
    # Integers throughout (chance counts scaled by n), so the ratio is exact until the last division.
    disagree = sum(weight(i, j) * count for (i, j), count in observed.items()) * n
    chance = sum(weight(i, j) * a * b for i, a in left.items() for j, b in right.items())
    if chance == 0:
        return None
    return 1 - disagree / chance


# -- the bootstrap ---------------------------------------------------------------------------
def resample_blocks(n: int, resamples: int, seed: int, *, block_rows: int | None = None) -> Iterator[Any]:
    """Bootstrap resamples of ``n`` posts: blocks of rows, each row ``n`` indices drawn with replacement.

    The draws are ``numpy.random.default_rng(seed).integers(0, n, (rows, n))`` block after block —
    the scheme ``scipy.stats.bootstrap`` uses with ``batch=rows`` — so the same seed gives the
    same resamples every time, and tests can check the intervals against scipy's.

    Args:
        n: the number of posts (positive).
        resamples: how many resamples in all.
        seed: seed of the random generator (a non-negative integer).
        block_rows: rows per block (default: as many as fit in about 2**20 indices).
    """
    import numpy as np

    if n <= 0:
        raise ValueError("the bootstrap needs at least one post")
    rng = np.random.default_rng(seed)
    rows = block_rows or default_block_rows(n, resamples)
    for start in range(0, resamples, rows):
        yield rng.integers(0, n, (min(rows, resamples - start), n))


def default_block_rows(n: int, resamples: int) -> int:
    """Rows per index block for ``n`` posts (what :func:`resample_blocks` uses by default)."""
    return max(1, min(resamples, _BLOCK_ENTRIES // max(n, 1)))


def percentile_interval(replicates, confidence: float = CONFIDENCE) -> tuple[float, float] | None:
    """The percentile interval of bootstrap replicates (linear interpolation, as numpy and scipy do).

    Returns None when a replicate is not a finite number (the metric was undefined on a resample).
    """
    import numpy as np

    values = np.asarray(replicates, dtype=float)
    if values.size == 0 or not np.all(np.isfinite(values)):
        return None
    alpha = (1 - confidence) / 2
    low, high = np.quantile(values, [alpha, 1 - alpha])
    return float(low), float(high)


Engine = Callable[[Any], dict]  # an index block (rows, n) → metric name → replicate values (rows,)


def _weights(block):
    """How often each post occurs in each resample: (rows, n) counts."""
    import numpy as np

    rows, n = block.shape
    flat = (block + (np.arange(rows) * n)[:, None]).ravel()
    return np.bincount(flat, minlength=rows * n).reshape(rows, n).astype(float)


def _ratio(numerator, denominator):
    """numerator / denominator, 0 where the denominator is 0 (scikit-learn's ``zero_division=0``)."""
    import numpy as np

    safe = np.where(denominator > 0, denominator, 1)
    return np.where(denominator > 0, numerator / safe, 0.0)


def _single_label_engine(task, golds, responses) -> Engine | None:
    """Confusion counts per resample → the metrics of :func:`~mentalglm.core.metrics.single_label_metrics`."""
    import numpy as np

    from mentalglm.core.task import SingleLabelTask

    if not isinstance(task, SingleLabelTask) or type(task).compute_metrics is not SingleLabelTask.compute_metrics:
        return None
    labels = list(task.label_names)
    size = len(labels)
    index = {label: i for i, label in enumerate(labels)}
    gold = np.array([index[g[0]] for g in golds])
    predicted = np.array([index[r.labels[0]] if r.valid else size for r in responses])  # size = the invalid column
    cells = size * (size + 1)
    pair = gold * (size + 1) + predicted
    reported = {f"f1[{label}]": index[label] for label in task.report_label_f1}

    def engine(block) -> dict:
        rows, n = block.shape
        flat = (pair[block] + (np.arange(rows) * cells)[:, None]).ravel()
        counts = np.bincount(flat, minlength=rows * cells).reshape(rows, size, size + 1).astype(float)
        tp = np.einsum("rii->ri", counts[:, :, :size])
        support = counts.sum(axis=2)
        chosen = counts[:, :, :size].sum(axis=1)  # predictions of each label (invalid ones excluded)
        f1 = _ratio(2 * tp, support + chosen)
        out = {"invalid_rate": counts[:, :, size].sum(axis=1) / n,
               "accuracy": tp.sum(axis=1) / n,
               "weighted_f1": _ratio((f1 * support).sum(axis=1), support.sum(axis=1)),
               "macro_f1": f1.mean(axis=1),
               "micro_f1": _ratio(2 * tp.sum(axis=1), support.sum(axis=1) + chosen.sum(axis=1))}
        out.update({name: f1[:, i] for name, i in reported.items()})
        return out

    return engine


def _multi_label_engine(task, golds, responses) -> Engine | None:
    """Per-label counts per resample → the metrics of :func:`~mentalglm.core.metrics.multi_label_metrics`."""
    import numpy as np

    from mentalglm.core.task import MultiLabelTask

    if not isinstance(task, MultiLabelTask) or type(task).compute_metrics is not MultiLabelTask.compute_metrics:
        return None
    labels = list(task.label_names)
    index = {label: i for i, label in enumerate(labels)}
    n = len(golds)
    truth = np.zeros((n, len(labels)))
    guess = np.zeros((n, len(labels)))
    for i, (g, r) in enumerate(zip(golds, responses)):
        truth[i, [index[label] for label in g]] = 1
        if r.valid:
            guess[i, [index[label] for label in r.labels if label in index]] = 1
    both = truth * guess
    per_post_true, per_post_guess, per_post_both = truth.sum(axis=1), guess.sum(axis=1), both.sum(axis=1)
    # Per-post quantities whose mean over posts is the metric: linear in the resample weights.
    linear = np.stack([
        np.array([not r.valid for r in responses], dtype=float),               # invalid_rate
        _ratio(2 * per_post_both, per_post_true + per_post_guess),            # samples_f1 (empty/empty = 0)
        (truth == guess).all(axis=1).astype(float),                           # exact_match
        (truth != guess).sum(axis=1) / len(labels),                           # hamming_loss
    ], axis=1)

    def engine(block) -> dict:
        weights = _weights(block)
        tp, support, chosen = weights @ both, weights @ truth, weights @ guess
        f1 = _ratio(2 * tp, support + chosen)
        means = weights @ linear / block.shape[1]
        return {"invalid_rate": means[:, 0], "samples_f1": means[:, 1], "exact_match": means[:, 2],
                "hamming_loss": means[:, 3],
                "micro_f1": _ratio(2 * tp.sum(axis=1), support.sum(axis=1) + chosen.sum(axis=1)),
                "macro_f1": f1.mean(axis=1),
                "weighted_f1": _ratio((f1 * support).sum(axis=1), support.sum(axis=1))}

    return engine


def _extraction_engine(task, golds, responses) -> Engine | None:
    """Per-post ROUGE-L → the metrics of :func:`~mentalglm.core.metrics.extraction_metrics` (means over posts)."""
    import numpy as np

    from mentalglm.core.task import ExtractionTask

    if not isinstance(task, ExtractionTask) or type(task).compute_metrics is not ExtractionTask.compute_metrics:
        return None
    fields = task.field_names
    scores = []
    for g, r in zip(golds, responses):
        predicted = dict(r.fields or {})
        scores.append(sum(_metrics.rouge_l_chars(predicted.get(name, ""), g[name]) for name in fields) / len(fields)
                      if r.valid else 0.0)
    linear = np.stack([np.array([not r.valid for r in responses], dtype=float), np.array(scores)], axis=1)

    def engine(block) -> dict:
        means = _weights(block) @ linear / block.shape[1]
        return {"invalid_rate": means[:, 0], "rouge_l": means[:, 1]}

    return engine


def _hierarchical_engine(task, golds, responses) -> Engine | None:
    """Per-post counts of both levels and per-post summary ROUGE.

    Reproduces :func:`~mentalglm.core.metrics.hierarchical_metrics` on every resample.
    """
    import numpy as np

    from mentalglm.core.task import HierarchicalTask

    if not isinstance(task, HierarchicalTask) or type(task).compute_metrics is not HierarchicalTask.compute_metrics:
        return None
    parent_of, parts = task.parent_of, task.part_names
    rows = []
    for g, r in zip(golds, responses):
        truth2, guess2 = set(g["labels"]), set(r.labels) if r.valid else set()
        truth1, guess1 = {parent_of[x] for x in truth2}, {parent_of[x] for x in guess2}
        predicted = dict(r.fields or {}) if r.valid else {}
        rouge = [_metrics.summary_rouge([predicted.get(part, "")], [g["summaries"].get(part, "")], [not r.valid])
                 for part in parts]
        rows.append([not r.valid,
                     len(truth1 & guess1), len(truth1), len(guess1), len(truth2 & guess2), len(truth2), len(guess2),
                     *(sum(scores[name] for scores in rouge) / len(parts) for name in ("rouge1", "rouge2", "rougeL"))])
    table = np.array(rows, dtype=float)

    def engine(block) -> dict:
        sums = _weights(block) @ table
        out = {"invalid_rate": sums[:, 0] / block.shape[1]}
        levels = {"level1": sums[:, 1:4], "level2": sums[:, 4:7], "overall": sums[:, 1:4] + sums[:, 4:7]}
        for level, (tp, truth, guess) in ((k, v.T) for k, v in levels.items()):
            name = {"level1": "level1_micro_f1", "level2": "level2_micro_f1", "overall": "hierarchical_f1"}[level]
            out[name] = _ratio(2 * tp, truth + guess)
            out[f"{level}_precision"] = _ratio(tp, guess)
            out[f"{level}_recall"] = _ratio(tp, truth)
        for offset, name in enumerate(("rouge1", "rouge2", "rougeL")):
            out[name] = sums[:, 7 + offset] / block.shape[1]
        return out

    return engine


def _generic_engine(task, golds, responses, names: Sequence[str]) -> Engine:
    """Calls the task's own ``compute_metrics`` on every resample: slow, right for any task."""
    import numpy as np

    def engine(block) -> dict:
        out = {name: np.empty(len(block)) for name in names}
        for row, indices in enumerate(block):
            metrics = task.compute_metrics([golds[i] for i in indices], [responses[i] for i in indices])
            for name in names:
                value = metrics.get(name)
                out[name][row] = value if isinstance(value, (int, float)) and not isinstance(value, bool) else np.nan
        return out

    return engine


_FAST_ENGINES = (_single_label_engine, _multi_label_engine, _extraction_engine, _hierarchical_engine)


def replicate_engine(task, golds: Sequence[Any], responses: Sequence[Any], names: Sequence[str],
                     reference: Mapping[str, Any] | None = None) -> tuple[Engine, str]:
    """The function that scores resamples of one run, and which kind it is (``vectorised`` or ``per resample``).

    A fast path is used only when it reproduces ``reference`` (the task's own metrics on the
    full data, computed here when not given) for every name in ``names``.
    """
    import numpy as np

    names = list(names)
    if reference is None:
        reference = task.compute_metrics(golds, responses)
    identity = np.arange(len(golds))[None, :]
    for build in _FAST_ENGINES:
        try:
            engine = build(task, golds, responses)
        except (KeyError, IndexError, TypeError, ValueError):
            # Answers the fast path cannot encode (a gold label outside the label set, say): the task's
            # own compute_metrics decides what they score.
            engine = None
        if engine is None:
            continue
        values = engine(identity)
        if all(name in values and abs(float(values[name][0]) - float(reference[name])) <= _SELF_CHECK_TOLERANCE
               for name in names):
            return engine, "vectorised"
        break  # it recognised the task but disagrees with it: trust the task
    return _generic_engine(task, golds, responses, names), "per resample"


def bootstrap_replicates(task, golds: Sequence[Any], response_sets: Sequence[Sequence[Any]], names: Sequence[str], *,
                         resamples: int = DEFAULT_RESAMPLES, seed: int = DEFAULT_SEED,
                         references: Sequence[Mapping[str, Any]] | None = None) -> list[dict]:
    """Bootstrap replicates of metrics for one or more runs, all on the *same* resamples of posts.

    With two response sets this is the paired bootstrap: replicate ``k`` of run B minus replicate
    ``k`` of run A is the difference on one and the same resample.

    Args:
        task: the task whose ``compute_metrics`` defines the metrics.
        golds: gold answers, aligned with every response set.
        response_sets: one sequence of parsed responses per run.
        names: the scalar metrics to replicate.
        resamples: how many resamples (positive).
        seed: random seed (non-negative).
        references: each run's full-data metrics, when already computed.

    Returns:
        One dict per run: metric name → numpy array of ``resamples`` values.
    """
    engines = [replicate_engine(task, golds, responses, names, None if references is None else references[i])[0]
               for i, responses in enumerate(response_sets)]
    return replicates_of(engines, len(golds), names, resamples=resamples, seed=seed)


def replicates_of(engines: Sequence[Engine], n: int, names: Sequence[str], *, resamples: int, seed: int) -> list[dict]:
    """Run each engine (see :func:`replicate_engine`) on the same ``resamples`` resamples of ``n`` posts."""
    import numpy as np

    parts: list[dict[str, list]] = [{name: [] for name in names} for _ in engines]
    for block in resample_blocks(n, resamples, seed):
        for engine, collected in zip(engines, parts):
            values = engine(block)
            for name in names:
                collected[name].append(np.asarray(values[name], dtype=float))
    return [{name: np.concatenate(chunks) for name, chunks in collected.items()} for collected in parts]


def interval_names(metrics: Mapping[str, Any]) -> list[str]:
    """The metrics that get an interval: the real-valued scalars (counts such as ``invalid`` and ``n`` do not)."""
    return [k for k, v in metrics.items() if isinstance(v, float) and k != "n"]


def _rate_successes(name: str, value: float, n: int) -> int | None:
    """The success count behind a rate metric, or None when ``value`` is not a share of ``n`` posts."""
    if name not in RATE_METRICS or n <= 0:
        return None
    count = round(value * n)
    return count if abs(count - value * n) < 1e-6 else None


def metric_intervals(task, golds: Sequence[Any], responses: Sequence[Any], metrics: Mapping[str, Any], *,
                     resamples: int = DEFAULT_RESAMPLES, seed: int = DEFAULT_SEED,
                     confidence: float = CONFIDENCE) -> tuple[dict, dict]:
    """A confidence interval for every real-valued scalar metric of one run.

    Rates of posts (:data:`RATE_METRICS`) get the Wilson score interval; every other metric
    gets a percentile bootstrap over posts. ``resamples=0`` turns the bootstrap off (Wilson
    intervals are still given: they cost nothing).

    Args:
        task: the task that computed ``metrics``.
        golds, responses: the aligned gold answers and parsed responses the metrics came from.
        metrics: the task's metrics on the full data.
        resamples: bootstrap resamples (0: none).
        seed: bootstrap seed.
        confidence: confidence level.

    Returns:
        ``(intervals, settings)``: metric → ``{"low", "high", "method", …}``, and the bootstrap
        settings to record next to them.

    Example:
        >>> from mentalglm.core.task import SingleLabelTask, Label, ParsedResponse
        >>> task = SingleLabelTask(name="t", instruction="判断。", labels=[Label("是"), Label("否")])
        >>> golds = [("是",), ("否",)] * 10
        >>> responses = [ParsedResponse(("是",), "", True)] * 20
        >>> intervals, _ = metric_intervals(task, golds, responses, task.compute_metrics(golds, responses))
        >>> intervals["accuracy"]["method"], round(intervals["accuracy"]["low"], 3)
        ('wilson', 0.299)
    """
    import time

    if resamples < 0:
        raise ValueError("resamples cannot be negative")
    n = len(golds)
    names = interval_names(metrics)
    settings: dict = {"resamples": resamples, "seed": seed, "confidence": confidence, "unit": "post",
                      "method": PERCENTILE_BOOTSTRAP if resamples else None}
    intervals: dict = {}
    if n == 0:
        return intervals, settings
    bootstrapped = []
    for name in names:
        successes = _rate_successes(name, metrics[name], n)
        if successes is not None:
            low, high = wilson_interval(successes, n, confidence)
            intervals[name] = {"low": low, "high": high, "method": WILSON, "confidence": confidence}
        else:
            bootstrapped.append(name)
    if resamples and bootstrapped:
        started = time.perf_counter()
        engine, kind = replicate_engine(task, golds, responses, bootstrapped, metrics)
        replicates = replicates_of([engine], n, bootstrapped, resamples=resamples, seed=seed)[0]
        for name in bootstrapped:
            bounds = percentile_interval(replicates[name], confidence)
            if bounds is not None:
                intervals[name] = {"low": bounds[0], "high": bounds[1], "method": PERCENTILE_BOOTSTRAP,
                                   "resamples": resamples, "seed": seed, "confidence": confidence}
        settings.update(scoring=kind, seconds=round(time.perf_counter() - started, 3))
    # Same order as the metrics themselves, so tables line up.
    return {name: intervals[name] for name in names if name in intervals}, settings


def format_interval(interval: Mapping[str, Any] | None, digits: int = 4) -> str:
    """``[low, high]`` for tables, '' when there is no interval."""
    if not interval:
        return ""
    return f"[{interval['low']:.{digits}f}, {interval['high']:.{digits}f}]"
