"""How far reviewers agree with each other and with the model, and what they thought of the explanations.

- **Inter-rater agreement** per dimension and for the label: Cohen's κ
  (:func:`mentalglm.evaluation.statistics.cohen_kappa`) when there are exactly two reviewers, on the
  posts both reviewed;
  Krippendorff's α (the ``krippendorff`` package) in every case — it takes any number of
  reviewers and missing reviews — nominal for labels, ordinal for ratings. Ratings also get the
  quadratically weighted κ for two reviewers, as an ordinal κ. A multi-label post's label set is
  one nominal value.
- **Model vs. expert**: the reviewers' majority label per post (ties are listed and left out)
  against the model's label: accuracy with its Wilson interval, and Cohen's κ.
- **Mean ratings** per dimension with a 95 % percentile-bootstrap interval over posts (a post's
  ratings stay together in a resample), by :mod:`mentalglm.evaluation.statistics`.
"""

from __future__ import annotations

import warnings
from collections import Counter, defaultdict
from typing import Any, Iterable, Mapping, Sequence

from mentalglm.evaluation import statistics
from mentalglm.review.label_studio import DIMENSIONS

LABEL = "label"


def krippendorff_alpha(units: Mapping[str, Mapping[str, Any]], *, level: str,
                       domain: Sequence[Any] | None = None) -> float | None:
    """Krippendorff's α of ``units`` (unit → rater → value), by the ``krippendorff`` package.

    Args:
        level: ``"nominal"``, ``"ordinal"``, ``"interval"`` or ``"ratio"``.
        domain: every possible value in order (ordinal ratings: the whole scale, so that the
            distances count the scale's points); default: the values that occur, sorted.

    Returns:
        α, or None when it is undefined: no unit with two values, or a single value throughout.
    """
    import krippendorff
    import numpy as np

    raters = sorted({rater for values in units.values() for rater in values})
    observed = sorted({value for values in units.values() for value in values.values()}, key=str)
    domain = list(domain) if domain is not None else observed
    if len(observed) < 2 or not any(len(values) >= 2 for values in units.values()):
        return None
    code = {value: index for index, value in enumerate(domain)}
    data = np.full((len(raters), len(units)), np.nan)
    for column, values in enumerate(units.values()):
        for rater, value in values.items():
            data[raters.index(rater), column] = code[value]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            value = float(krippendorff.alpha(reliability_data=data, level_of_measurement=level,
                                             value_domain=list(range(len(domain)))))
    except (ValueError, ZeroDivisionError):
        return None
    return value if value == value else None


def _label_value(labels: Sequence[str]) -> str | None:
    return "、".join(labels) if labels else None


def latest_reviews(records: Iterable[Mapping[str, Any]]) -> tuple[dict[str, dict[str, dict]], int]:
    """post id → reviewer → that reviewer's latest record (highest annotation id), and how many were set aside."""
    latest: dict[str, dict[str, dict]] = defaultdict(dict)
    duplicates = 0
    for record in records:
        by_reviewer = latest[str(record["post_id"])]
        reviewer = str(record["reviewer"])
        if reviewer in by_reviewer:
            duplicates += 1
            if _order(record) < _order(by_reviewer[reviewer]):
                continue
        by_reviewer[reviewer] = dict(record)
    return dict(latest), duplicates


def _order(record: Mapping[str, Any]) -> tuple:
    annotation = record.get("annotation_id")
    return (0, annotation) if isinstance(annotation, (int, float)) else (1, str(annotation))


def majority_labels(reviews: Mapping[str, Mapping[str, Mapping[str, Any]]]) -> tuple[dict[str, list[str]], list[str]]:
    """post id → the label set most reviewers gave (plurality), and the ids of posts tied between sets.

    Reviews without a label do not vote; a post where nobody gave one is neither.
    """
    chosen: dict[str, list[str]] = {}
    ties: list[str] = []
    for post_id, by_reviewer in reviews.items():
        votes = Counter(tuple(r["labels"]) for r in by_reviewer.values() if r.get("labels"))
        if not votes:
            continue
        ranked = votes.most_common()
        if len(ranked) > 1 and ranked[0][1] == ranked[1][1]:
            ties.append(post_id)
            continue
        chosen[post_id] = list(ranked[0][0])
    return chosen, ties


def _dimension_agreement(units: dict[str, dict[str, Any]], *, level: str, domain: Sequence[Any] | None,
                         raters: Sequence[str]) -> dict:
    """Agreement of one dimension: κ for two reviewers, α always, the share of exact agreement."""
    paired = {unit: values for unit, values in units.items() if len(values) >= 2}
    exact = sum(len(set(values.values())) == 1 for values in paired.values())
    result: dict[str, Any] = {"level": level, "reviewers": len(raters), "posts": len(units),
                              "posts_with_two_or_more": len(paired),
                              "percent_agreement": exact / len(paired) if paired else None,
                              "krippendorff_alpha": krippendorff_alpha(units, level=level, domain=domain)}
    if len(raters) == 2:
        first, second = raters
        both = [values for values in units.values() if first in values and second in values]
        a, b = [values[first] for values in both], [values[second] for values in both]
        result["cohen_kappa"] = statistics.cohen_kappa(a, b)
        if level == "ordinal":
            result["cohen_kappa_quadratic"] = statistics.cohen_kappa(a, b, weights="quadratic", labels=domain)
        result["primary"] = "cohen_kappa"
    else:
        result["primary"] = "krippendorff_alpha"
    return result


def mean_rating(per_post: Mapping[str, Sequence[int]], *, resamples: int = statistics.DEFAULT_RESAMPLES,
                seed: int = statistics.DEFAULT_SEED) -> dict:
    """The mean of all ratings, with a percentile-bootstrap interval that resamples posts (their ratings together)."""
    import numpy as np

    sums = np.array([sum(v) for v in per_post.values()], dtype=float)
    counts = np.array([len(v) for v in per_post.values()], dtype=float)
    if not counts.sum():
        return {"mean": None, "ratings": 0, "posts": 0, "interval": None}
    result: dict[str, Any] = {"mean": float(sums.sum() / counts.sum()), "ratings": int(counts.sum()),
                              "posts": len(per_post), "interval": None}
    if resamples and len(per_post) > 1:
        replicates = []
        for block in statistics.resample_blocks(len(per_post), resamples, seed):
            replicates.append(sums[block].sum(axis=1) / counts[block].sum(axis=1))
        bounds = statistics.percentile_interval(np.concatenate(replicates))
        if bounds is not None:
            result["interval"] = {"low": bounds[0], "high": bounds[1], "method": statistics.PERCENTILE_BOOTSTRAP,
                                  "resamples": resamples, "seed": seed, "confidence": statistics.CONFIDENCE,
                                  "unit": "post"}
    return result


def review_stats(records: Sequence[Mapping[str, Any]], *, model_labels: Mapping[str, Sequence[str]] | None = None,
                 resamples: int = statistics.DEFAULT_RESAMPLES, seed: int = statistics.DEFAULT_SEED) -> dict:
    """Inter-rater agreement, model-vs-expert agreement and mean ratings of review records.

    Args:
        records: review records (``mentalglm review import``).
        model_labels: post id → the model's labels (from ``predictions.jsonl``); default: the
            model labels the export recorded in each record.
        resamples, seed: the bootstrap of the mean-rating intervals (0: none).

    Returns:
        A JSON-ready document: ``reviews``, ``posts``, ``reviewers``, ``duplicates``,
        ``agreement`` (``label`` and each dimension), ``model_vs_expert``, ``ratings``.
    """
    reviews, duplicates = latest_reviews(records)
    raters = sorted({reviewer for by_reviewer in reviews.values() for reviewer in by_reviewer})
    scales = {tuple(r.get("scale") or (1, 5)) for by_reviewer in reviews.values() for r in by_reviewer.values()}
    scale = max(scales, key=lambda s: s[1] - s[0]) if scales else (1, 5)
    domain = list(range(int(scale[0]), int(scale[1]) + 1))
    agreement: dict[str, dict] = {}
    label_units = {post: {rater: _label_value(r["labels"]) for rater, r in by_reviewer.items() if r.get("labels")}
                   for post, by_reviewer in reviews.items()}
    agreement[LABEL] = _dimension_agreement({u: v for u, v in label_units.items() if v}, level="nominal",
                                            domain=None, raters=raters)
    ratings: dict[str, dict] = {}
    for name in DIMENSIONS:
        units = {post: {rater: r["ratings"][name] for rater, r in by_reviewer.items()
                        if (r.get("ratings") or {}).get(name) is not None}
                 for post, by_reviewer in reviews.items()}
        units = {u: v for u, v in units.items() if v}
        agreement[name] = _dimension_agreement(units, level="ordinal", domain=domain, raters=raters)
        ratings[name] = mean_rating({u: list(v.values()) for u, v in units.items()}, resamples=resamples, seed=seed)
    majority, ties = majority_labels(reviews)
    if model_labels is None:
        model_labels = {post: next(iter(by_reviewer.values())).get("model_labels") or []
                        for post, by_reviewer in reviews.items()}
    compared = [post for post in majority if post in model_labels]
    model = [_label_value(model_labels[post]) or "(no label)" for post in compared]
    expert = [_label_value(majority[post]) for post in compared]
    correct = sum(m == e for m, e in zip(model, expert))
    versus: dict[str, Any] = {"posts": len(compared), "ties": sorted(ties),
                              "without_model_prediction": sorted(p for p in majority if p not in model_labels),
                              "accuracy": correct / len(compared) if compared else None,
                              "accuracy_interval": None, "cohen_kappa": statistics.cohen_kappa(model, expert)}
    if compared:
        low, high = statistics.wilson_interval(correct, len(compared))
        versus["accuracy_interval"] = {"low": low, "high": high, "method": statistics.WILSON,
                                       "confidence": statistics.CONFIDENCE}
    verdicts = Counter(r.get("verdict") for by_reviewer in reviews.values() for r in by_reviewer.values())
    versus["reviews_confirming"] = verdicts.get("confirmed", 0)
    versus["reviews_correcting"] = verdicts.get("corrected", 0)
    return {"reviews": sum(len(v) for v in reviews.values()), "records": len(records), "duplicates": duplicates,
            "posts": len(reviews), "reviewers": raters, "scale": list(scale), "agreement": agreement,
            "model_vs_expert": versus, "ratings": ratings}
