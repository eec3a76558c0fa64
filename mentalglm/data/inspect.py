"""``mentalglm data inspect`` and ``data convert``: how a file is read, and the file rewritten in mentalglm's own form.

Inspect reads the whole file once (streamed) and reports what detection decided — format,
encoding, delimiter, columns, which field is the post, the label and the id, and how each was
chosen — the first posts as the model will get them, the label distribution, and every problem
with its file and line (collected, not stopping at the first, up to a cap).

Convert writes posts JSONL (``{"id", "text", "label"}``; ``label`` a list for multi-label tasks,
an object for extraction; ``instruction`` when the row had its own) or C-IMHI records
(``instruction``, ``input``, ``output``) for training. It writes to a temporary name and renames
at the end, so a bad row leaves no half-written output behind.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from mentalglm.core.errors import DataError, MentalGLMError
from mentalglm.data.mapping import DataMapping
from mentalglm.data.readers import DataSource, iter_posts, iter_records, open_source
from mentalglm.data.schema import RowReader, gold_as_json, gold_labels

DEFAULT_EXAMPLES = 5
DEFAULT_MAX_PROBLEMS = 50
NO_LABEL = "(no label)"


class ProblemLog:
    """Row errors collected up to ``limit`` (all of them counted)."""

    def __init__(self, limit: int = DEFAULT_MAX_PROBLEMS):
        self.limit, self.items, self.total = limit, [], 0

    def append(self, error: DataError) -> None:
        """Count ``error`` and keep it while under the limit."""
        self.total += 1
        if len(self.items) < self.limit:
            self.items.append(error)

    def to_list(self) -> list[dict]:
        """JSON-ready problems: file, line, field, message and the one-line error."""
        return [{"file": e.path, "line": e.line, "field": e.field, "message": e.message, "error": str(e)}
                for e in self.items]


def shorten(text: str, limit: int) -> str:
    """``text`` on one line, cut to about ``limit`` display columns (CJK characters count double)."""
    import unicodedata

    flat = " ".join(text.split())
    width, out = 0, []
    for ch in flat:
        width += 2 if unicodedata.east_asian_width(ch) in "WF" else 1
        if width > limit:
            return "".join(out) + "…"
        out.append(ch)
    return flat


def _conversation_notes(tally: dict, posts_without_instruction: int) -> list[str]:
    notes = []
    for schema in tally:
        if schema.shape in ("chat", "sharegpt") and posts_without_instruction:
            turn = "user" if schema.shape == "chat" else "human"
            notes.append(f"{posts_without_instruction} conversation(s) have no system turn: the whole {turn} turn is "
                         "the post and the task's instruction is used (if the turn starts with an instruction of its "
                         "own, the model sees both)")
            break
    return notes


def inspect_data(spec: str | os.PathLike, task, mapping: DataMapping | None = None, *,
                 examples: int = DEFAULT_EXAMPLES, max_problems: int = DEFAULT_MAX_PROBLEMS,
                 text_width: int = 60) -> dict:
    """Read a data source once and describe how it was read.

    Args:
        spec: a file, ``sample:NAME``, ``hf:…`` or a dataset card.
        task: the task the data is for.
        mapping: the mapping flags.
        examples: how many posts to show.
        max_problems: how many problems to keep (all are counted).
        text_width: display columns per shown post.

    Returns:
        A JSON-ready document (see ``mentalglm data inspect --json``).

    Raises:
        DataError, MentalGLMError: the source cannot be opened at all (missing file, bad card).
    """
    source = open_source(spec, mapping)
    reader = RowReader(task, source.mapping, tabular=source.tabular)
    reader.tally = {}
    problems = ProblemLog(max_problems)
    distribution: dict[str, int] = {}
    shown: list[dict] = []
    count = labelled = own_instruction = 0
    multi = getattr(task, "multi_label", False)
    for post in iter_posts(source, task, problems=problems, reader=reader):
        count += 1
        own_instruction += post.instruction is not None
        if post.gold is not None:
            labelled += 1
            labels = gold_labels(post.gold)
            if labels is not None:
                for label in labels or (NO_LABEL,):
                    distribution[label] = distribution.get(label, 0) + 1
        if len(shown) < examples:
            shown.append({"id": post.id, "line": post.line,
                          "instruction": shorten(post.instruction, text_width) if post.instruction else None,
                          "instruction_from": "the record" if post.instruction else "the task",
                          "text": shorten(post.text, text_width), "gold": gold_as_json(post.gold, task)})
    order = list(getattr(task, "label_names", ())) + [NO_LABEL]
    schemas = [{**schema.describe(), "rows": rows} for schema, rows in reader.tally.items()]
    return {
        "source": source.describe(),
        "task": task.name,
        "schemas": schemas,
        "posts": count,
        "labelled": labelled,
        "unlabelled": count - labelled,
        "own_instruction": own_instruction,
        "label_distribution": {k: distribution[k] for k in order if k in distribution},
        "multi_label": multi,
        "examples": shown,
        "problems": problems.to_list(),
        "problems_total": problems.total,
        "notes": source.notes + _conversation_notes(reader.tally, count - own_instruction),
    }


def _post_object(post, task) -> dict:
    obj: dict[str, Any] = {"id": post.id, "text": post.text}
    if post.instruction is not None:
        obj["instruction"] = post.instruction
    if post.gold is not None:
        obj["label"] = gold_as_json(post.gold, task)
    return obj


def convert_data(spec: str | os.PathLike, task, output: str | os.PathLike, mapping: DataMapping | None = None, *,
                 to: str = "posts") -> dict:
    """Rewrite a data source as posts JSONL (``to="posts"``) or C-IMHI records (``to="cimhi"``).

    Returns:
        ``{"output", "to", "written", "rendered_outputs", "source"}``.

    Raises:
        DataError: the first bad row (nothing is left at ``output`` then).
        MentalGLMError: ``output`` is the input itself, an unknown ``to``, an unwritable folder.
    """
    if to not in ("posts", "cimhi"):
        raise MentalGLMError(f"unknown --to '{to}'; use posts or cimhi")
    source: DataSource = open_source(spec, mapping)
    target = Path(output)
    if any(target.resolve() == f.resolve() for f in source.files):
        raise MentalGLMError(f"{target}: the output would overwrite the input; write somewhere else")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise MentalGLMError(f"{target}: cannot create its folder: {exc.strerror or exc}") from None
    temporary = target.with_name(f".{target.name}.partial")
    rendered = [0]
    written = 0

    def count_rendered(_id: str) -> None:
        rendered[0] += 1

    try:
        with open(temporary, "w", encoding="utf-8") as sink:
            if to == "posts":
                for post in iter_posts(source, task):
                    sink.write(json.dumps(_post_object(post, task), ensure_ascii=False) + "\n")
                    written += 1
            else:
                for record in iter_records(source, task, on_rendered=count_rendered):
                    sink.write(json.dumps({"id": record.id, "instruction": record.instruction, "input": record.input,
                                           "output": record.output}, ensure_ascii=False) + "\n")
                    written += 1
        os.replace(temporary, target)
    except OSError as exc:
        temporary.unlink(missing_ok=True)
        raise MentalGLMError(f"{target}: cannot write: {exc.strerror or exc}") from None
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return {"output": str(target), "to": to, "written": written, "rendered_outputs": rendered[0],
            "source": source.describe()}
