"""Reviewed labels put to use: as gold for ``evaluate --gold``, and as corrected records for ``train``.

Both take, for each post, the label set most reviewers gave (see
:func:`~mentalglm.review.agreement.majority_labels`); posts tied between label sets are
reported and left out, never decided by a coin.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

from mentalglm.core.errors import DataError, MentalGLMError
from mentalglm.core.prediction import Post
from mentalglm.review.agreement import latest_reviews, majority_labels

_REQUIRED = ("post_id", "reviewer", "labels")


def read_reviews(path: str | Path) -> list[dict]:
    """The review records of a ``review import`` output (JSONL).

    Raises:
        DataError: a missing file, a line that is not JSON, or a record without ``post_id``,
            ``reviewer`` or ``labels``, naming the line.
    """
    path = Path(path)
    records = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise DataError(path, None, None, "reviewed records not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(path, None, None, f"unreadable: {exc}") from None
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except (json.JSONDecodeError, RecursionError):
            raise DataError(path, number, None, "not JSON (expected one review record per line, from mentalglm "
                            "review import)") from None
        if not isinstance(record, dict):
            raise DataError(path, number, None, "not a JSON object")
        for name in _REQUIRED:
            if name not in record:
                raise DataError(path, number, name, "missing (not a mentalglm review import record)")
        if not isinstance(record["labels"], list) or not all(isinstance(v, str) for v in record["labels"]):
            raise DataError(path, number, "labels", "not a list of labels")
        _check_ratings(path, number, record)
        records.append(record)
    if not records:
        raise DataError(path, None, None, "no review records")
    return records


def _check_ratings(path: Path, number: int, record: dict) -> None:
    """Ratings must be whole numbers on the record's scale (agreement statistics count the scale's points)."""
    scale = record.get("scale", [1, 5])
    if not (isinstance(scale, list) and len(scale) == 2 and all(isinstance(v, int) for v in scale)
            and scale[0] < scale[1]):
        raise DataError(path, number, "scale", f"not [LOW, HIGH]: {scale!r}")
    ratings = record.get("ratings") or {}
    if not isinstance(ratings, dict):
        raise DataError(path, number, "ratings", "not an object")
    for name, value in ratings.items():
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                                  or not scale[0] <= value <= scale[1]):
            raise DataError(path, number, f"ratings.{name}", f"{value!r} is not a point of the scale "
                            f"{scale[0]}-{scale[1]}")


def reviewed_gold(records: Sequence[Mapping[str, Any]], label_names: Sequence[str]) -> tuple[dict[str, tuple], list]:
    """post id → gold labels (the reviewers' majority, as a tuple in the task's order), and the tied post ids.

    Raises:
        MentalGLMError: a majority label outside ``label_names`` (the records are of another task).
    """
    reviews, _ = latest_reviews(records)
    majority, ties = majority_labels(reviews)
    known = set(label_names)
    for post_id, labels in majority.items():
        unknown = [label for label in labels if label not in known]
        if unknown:
            raise MentalGLMError(f"reviewed post '{post_id}' has label '{unknown[0]}', not one of the task's: "
                                 f"{'、'.join(label_names)}")
    return {post_id: tuple(label for label in label_names if label in labels)
            for post_id, labels in majority.items()}, ties


def apply_gold(posts: Sequence[Post], gold: Mapping[str, tuple]) -> tuple[list[Post], dict]:
    """The posts that have a reviewed gold label, with it as their gold; and what was left out.

    Returns:
        ``(posts, note)``: note has ``reviewed`` (posts given reviewed gold), ``unreviewed``
        (posts of the data without one), ``not_in_data`` (reviewed ids missing from the data),
        ``changed`` (posts whose reviewed gold differs from the data's).

    Raises:
        MentalGLMError: no post of the data has reviewed gold.
    """
    chosen, changed = [], 0
    seen = set()
    for post in posts:
        labels = gold.get(post.id)
        if labels is None:
            continue
        seen.add(post.id)
        changed += post.gold is not None and tuple(post.gold) != labels
        chosen.append(replace(post, gold=labels))
    if not chosen:
        raise MentalGLMError("no post of the data has a reviewed label (do the post ids match the reviewed records?)")
    return chosen, {"reviewed": len(chosen), "unreviewed": len(posts) - len(chosen),
                    "not_in_data": sorted(set(gold) - seen), "changed": changed}


def training_records(records: Sequence[Mapping[str, Any]], tasks: Sequence[Mapping[str, Any]], task) -> Iterator[dict]:
    """C-IMHI records (``instruction``, ``input``, ``output``) of the reviewed posts, for ``mentalglm train``.

    ``input`` is the post as exported (redacted unless the export said ``--no-redact``);
    ``output`` is the task's answer format with the reviewers' majority label and an
    explanation: the first (by annotation id) edited explanation of a reviewer who gave that
    label; else the model's explanation when the label is the model's; else none (a label line
    only: a corrected label with the model's explanation would teach a contradiction).

    Args:
        records: review records.
        tasks: the exported Label Studio tasks (their ``data`` holds post text and model answer).
        task: the task (for its instruction and answer format).
    """
    reviews, _ = latest_reviews(records)
    majority, _ = majority_labels(reviews)
    data_by_id = {str(t["data"]["post_id"]): t["data"] for t in tasks}
    answer = task.response_format()
    for post_id, labels in majority.items():
        data = data_by_id.get(post_id)
        if data is None:
            continue
        agreeing = sorted((r for r in reviews[post_id].values() if r.get("labels") == labels),
                          key=lambda r: (r.get("annotation_id") is None, r.get("annotation_id") or 0))
        edited = [r["explanation"] for r in agreeing if r.get("explanation_edited") and (r.get("explanation") or "")
                  .strip()]
        if edited:
            explanation = edited[0].strip()
        elif list(data.get("model_labels") or ()) == labels:
            explanation = str(data.get("explanation") or "")
        else:
            explanation = ""
        yield {"id": post_id, "instruction": task.instruction, "input": data["text"],
               "output": answer.render(tuple(labels), explanation), "reviewed_by": sorted(reviews[post_id])}
