"""How one row of any data file — a JSON object, a CSV row, a Parquet record — becomes a :class:`Post`.

A row has a *shape*, decided from its keys (and the mapping) once per distinct set of keys:

- ``chat``: OpenAI fine-tuning ``messages`` — system turn = instruction, user turn = post,
  assistant turn = gold answer, read by the task's own parser (``低自杀风险`` alone parses);
- ``sharegpt``: ``conversations`` with ``from``/``value`` turns, the same way;
- ``record``: C-IMHI / Alpaca ``instruction``, ``input``, ``output``;
- ``post``: a text field (``text``, or ``--text-field``, or a common name such as ``comment``,
  ``content``, ``内容``) with the gold answer in a label field (``label``, ``--label-field``), in
  one-hot label columns named by the task's labels or aliases, or (extraction tasks) in columns
  named by the task's fields.

Raw label values go through ``--label-map`` when one is given; a value outside the map is an error
naming file, line and field, never a default.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from mentalglm.core.errors import DataError, MentalGLMError
from mentalglm.core.parsing import LABEL_SEPARATORS
from mentalglm.core.prediction import Post
from mentalglm.data.conversations import single_turn
from mentalglm.data.mapping import DataMapping, raw_key

#: Column names taken for the post when no ``text`` column and no ``--text-field`` is given, by priority.
TEXT_NAMES = ("text", "post", "content", "comment", "内容", "微博", "微博内容", "帖子", "帖子内容", "正文", "文本",
              "评论", "sentence", "review")
#: Column names taken for the gold label when no ``--label-field`` is given, by priority.
LABEL_NAMES = ("label", "labels", "标签", "类别")
_MAX_SCHEMAS = 256
#: Parsed gold answers kept per schema, by their text: label spellings are few; the bound keeps memory flat.
GOLD_CACHE_SIZE = 10_000
_TRUE = frozenset({"1", "true"})
_FALSE = frozenset({"0", "false"})


@dataclass(frozen=True)
class Schema:
    """Which fields of a row hold what, decided once per distinct set of keys.

    Attributes:
        shape: ``post``, ``record``, ``chat`` or ``sharegpt``.
        text: the field holding the post (``post`` and ``record`` shapes).
        label: the field holding the gold label, if any.
        onehot: ``(column, label)`` pairs of one-hot label columns.
        field_columns: extraction tasks: ``(column, field)`` pairs holding the gold fields.
        id: the field holding the id, if any (otherwise the row's position is its id).
        instruction: the field holding the record's own instruction, if any.
        how: for each of ``text``, ``label``, ``id``: how it was chosen (``--text-field``,
            ``auto-detected``, ``default``), shown by ``data inspect``.
    """

    shape: str
    text: str | None = None
    label: str | None = None
    onehot: tuple[tuple[str, str], ...] = ()
    field_columns: tuple[tuple[str, str], ...] = ()
    id: str | None = None
    instruction: str | None = None
    how: tuple[tuple[str, str], ...] = ()

    def describe(self) -> dict:
        """JSON-ready: the shape and where each part comes from."""
        how = dict(self.how)
        info: dict[str, Any] = {"shape": self.shape}
        if self.text:
            info["text"] = {"field": self.text, "how": how.get("text", "default")}
        if self.label:
            info["label"] = {"field": self.label, "how": how.get("label", "default")}
        if self.onehot:
            info["label"] = {"one_hot_columns": dict(self.onehot), "how": how.get("label", "auto-detected")}
        if self.field_columns:
            info["label"] = {"field_columns": dict(self.field_columns), "how": "auto-detected"}
        if self.shape in ("chat", "sharegpt"):
            turn = "assistant" if self.shape == "chat" else "gpt"
            info["label"] = info.get("label") or {"field": None, "how": f"the {turn} turn, read by the task's parser"}
        info["id"] = ({"field": self.id, "how": how.get("id", "default")} if self.id
                      else {"field": None, "how": "position in the file"})
        if self.instruction:
            info["instruction"] = self.instruction
        return info


def _find(keys, names) -> str | None:
    """The first of ``names`` among ``keys``, comparing case-insensitively (the key as spelt in the file)."""
    folded = {str(k).strip().lower(): k for k in keys}
    for name in names:
        if name in folded:
            return folded[name]
    return None


def string_field(path: Path, line: int, obj: dict, name: str, *, required: bool = True, allow_empty: bool = False,
                 numeric: bool = False) -> str | None:
    """The string in ``obj[name]`` (``numeric``: an int is taken too).

    A missing, mistyped or empty value is a one-line DataError naming file, line and field.
    """
    value = obj.get(name)
    if value is None:
        if required:
            raise DataError(path, line, name, "missing")
        return None
    allowed = (str, int) if numeric else (str,)  # numeric ids are common in exported data
    if isinstance(value, bool) or not isinstance(value, allowed):
        raise DataError(path, line, name, f"expected a string, got {type(value).__name__}")
    value = str(value)
    if not allow_empty and not value.strip():
        raise DataError(path, line, name, "empty")
    return value


class RowReader:
    """Turns rows into Posts for one task and one mapping (see the module docstring).

    Args:
        task: the task gold answers are read for (None: gold is ignored).
        mapping: the data mapping (None: everything detected).
        tabular: rows are table cells (CSV, Parquet): an empty label or id cell means "none", and
            a float id such as ``7.0`` (pandas writes integer columns with gaps so) is ``7``. JSON
            keeps its stricter rule: an empty id or label is an error.

    Raises:
        MentalGLMError: a ``--label-map`` value that is not a label or alias of the task.
    """

    def __init__(self, task=None, mapping: DataMapping | None = None, *, tabular: bool = False):
        self.task, self.tabular = task, tabular
        self.mapping = mapping or DataMapping()
        self.schemas: dict[tuple, Schema] = {}
        #: rows per schema, counted when set to a dict (``data inspect``); None costs nothing.
        self.tally: dict[Schema, int] | None = None
        self._gold_cache: dict[str, Any] = {}
        self.label_map: dict[str, tuple] | None = None
        if self.mapping.label_map and task is not None:
            self.label_map = {}
            for raw, label in self.mapping.label_map.items():
                try:
                    self.label_map[raw] = task.gold_from_value(label)
                except (ValueError, AttributeError) as exc:
                    raise MentalGLMError(f"{self.mapping.where('label_map')}: {raw}={label}: {exc}") from None

    # -- schema ------------------------------------------------------------------------------
    def schema(self, keys) -> Schema:
        """The schema of a row with these keys (cached per distinct key tuple)."""
        signature = tuple(keys)
        found = self.schemas.get(signature)
        if found is None:
            found = self._resolve(signature)
            if len(self.schemas) < _MAX_SCHEMAS:  # rows with ever-new keys must not grow memory
                self.schemas[signature] = found
        return found

    def _resolve(self, keys: tuple) -> Schema:
        m = self.mapping
        how: dict[str, str] = {}
        id_field = m.id_field or ("id" if "id" in keys else None)
        if id_field:
            how["id"] = m.where("id_field") if m.id_field else "default"
        label = onehot = field_columns = None
        if m.label_field:
            label, how["label"] = m.label_field, m.where("label_field")
        if m.text_field:
            shape, text, how["text"] = "post", m.text_field, m.where("text_field")
        elif "messages" in keys:
            shape, text = "chat", None
        elif "conversations" in keys:
            shape, text = "sharegpt", None
        elif "text" in keys:
            shape, text, how["text"] = "post", "text", "default"
        elif "input" in keys or "instruction" in keys:
            return Schema("record", text="input", label=label, id=id_field, instruction="instruction",
                          how=tuple(how.items()))
        else:
            text = _find(keys, TEXT_NAMES)
            if text is None:
                return Schema("unknown", id=id_field, how=tuple(how.items()))
            shape, how["text"] = "post", "auto-detected"
        instruction = "instruction" if shape == "post" and "instruction" in keys and text != "instruction" else None
        if shape == "post" and label is None:
            taken = {text, id_field, instruction}
            label = _find([k for k in keys if k not in taken], LABEL_NAMES)
            if label is not None:
                how["label"] = "default" if label in ("label", "labels") else "auto-detected"
            elif self.task is not None:
                onehot, field_columns = self._label_columns([k for k in keys if k not in taken])
                if onehot:
                    how["label"] = "--columns" if m.columns else "auto-detected"
        return Schema(shape, text=text, label=label, onehot=onehot or (), field_columns=field_columns or (),
                      id=id_field, instruction=instruction, how=tuple(how.items()))

    def _label_columns(self, keys: list) -> tuple[tuple, tuple]:
        """One-hot columns named by the task's labels/aliases, or extraction columns named by its fields."""
        matcher = getattr(self.task, "matcher", None)
        if matcher is not None:
            pairs = [(k, matcher.lookup(str(k))) for k in keys]
            pairs = [(k, label) for k, label in pairs if label]
            labels = [label for _, label in pairs]
            repeated = sorted({label for label in labels if labels.count(label) > 1})
            if repeated:
                columns = [k for k, label in pairs if label == repeated[0]]
                raise MentalGLMError(f"columns {', '.join(map(str, columns))} all name label '{repeated[0]}'; "
                                     "give the label column with --label-field")
            return tuple(pairs), ()
        names = getattr(self.task, "fields", ())
        pairs = []
        for f in names:
            column = next((k for k in keys if str(k).strip() in (f.name, *f.aliases)), None)
            if column is None:
                return (), ()
            pairs.append((column, f.name))
        return (), tuple(pairs)

    def check_columns(self, path, columns, line: int | None, named_by: str = "the header") -> Schema:
        """The schema of a table's columns, checked before any row is read.

        Raises:
            DataError: no column holds the post, or a named field is not a column — one line
                listing the columns there are.
        """
        shown = ", ".join(map(str, columns))
        m = self.mapping
        for key in ("text_field", "label_field", "id_field"):
            name = getattr(m, key)
            if name and name not in columns:
                raise DataError(path, line, name, f"named by {m.where(key)} but not a column ({named_by}: {shown})")
        schema = self.schema(columns)
        if schema.shape == "unknown":
            raise DataError(path, line, "text", f"missing from {named_by} (columns: {shown}); name the post's "
                            "column with --text-field, or a headerless file's columns with --columns")
        return schema

    # -- rows --------------------------------------------------------------------------------
    def row_id(self, path: Path, line: int, obj: dict, position: int) -> str:
        """The id of a row: its id field, or its position (1-based) among the file's rows."""
        field = self.schema(obj.keys()).id
        if field is None:
            return str(position)
        value = obj.get(field)
        if self.tabular:
            if isinstance(value, str) and not value.strip():
                value = None  # an empty id cell is no id
            elif isinstance(value, float) and value.is_integer():
                value = int(value)
        return string_field(path, line, {field: value}, field, required=False, numeric=True) or str(position)

    def post(self, path: Path, line: int, obj: dict, position: int) -> Post:
        """The Post of one row.

        Raises:
            DataError: a missing/empty/mistyped field, a gold answer outside the task, a raw label
                outside the label map, a bad one-hot row — naming file, line and field.
        """
        schema = self.schema(obj.keys())
        if self.tally is not None:
            self.tally[schema] = self.tally.get(schema, 0) + 1
        shape = schema.shape
        gold = None
        if shape == "post":
            if schema.text not in obj and self.mapping.text_field:
                raise DataError(path, line, schema.text,
                                f"missing (named by {self.mapping.where('text_field')}; fields: "
                                f"{', '.join(map(str, obj))})")
            text = string_field(path, line, obj, schema.text)
            instruction = (string_field(path, line, obj, schema.instruction, required=False)
                           if schema.instruction else None)
            post = Post(id="", text=text, instruction=instruction, line=line)
        elif shape == "record":
            text = string_field(path, line, obj, "input")
            instruction = string_field(path, line, obj, "instruction", required=False)
            post = Post(id="", text=text, instruction=instruction, line=line)
            output = string_field(path, line, obj, "output", required=False, allow_empty=True)
            if self.task is not None and output is not None and not schema.label:
                gold = self._gold_from_output(path, line, "output", output)
                post.gold_explanation = self.task.explanation_of(output)
        elif shape in ("chat", "sharegpt"):
            turns = single_turn(path, line, obj, "messages" if shape == "chat" else "conversations")
            post = Post(id="", text=turns.post, instruction=turns.instruction, line=line)
            if self.task is not None and turns.answer is not None and not schema.label:
                gold = self._gold_from_output(path, line, turns.answer_field, turns.answer)
                post.gold_explanation = self.task.explanation_of(turns.answer)
        else:
            names = ", ".join(map(str, obj)) or "none"
            raise DataError(path, line, "text", "missing (a post needs 'text'; a C-IMHI record needs "
                            f"'instruction', 'input' and 'output'; fields here: {names}; "
                            "name the post's field with --text-field)")
        if self.task is not None:
            if schema.label:
                value = obj.get(schema.label)
                if schema.label not in obj and self.mapping.label_field:
                    raise DataError(path, line, schema.label, f"missing (named by {self.mapping.where('label_field')})")
                if value is not None and not (self.tabular and isinstance(value, str) and not value.strip()):
                    gold = self.gold_from_value(path, line, schema.label, value)
            elif schema.onehot:
                gold = self._gold_from_onehot(path, line, obj, schema.onehot)
            elif schema.field_columns:
                gold = self._gold_from_fields(path, line, obj, schema.field_columns)
        post.gold = gold
        post.id = self.row_id(path, line, obj, position)
        return post

    # -- gold --------------------------------------------------------------------------------
    def _gold_from_output(self, path: Path, line: int, field: str, output: str):
        try:
            return self.task.gold_from_output(output)
        except ValueError as exc:
            raise DataError(path, line, field, str(exc)) from None

    def _map_hint(self) -> str:
        return "; map raw values to labels with --label-map RAW=LABEL,…" if hasattr(self.task, "label_names") else ""

    def gold_from_value(self, path: Path, line: int, field: str, value: Any):
        """The gold answer stated by a label field's raw ``value`` (through the label map, if any)."""
        if self.label_map is not None:
            return self._mapped(path, line, field, value)
        cacheable = isinstance(value, str)
        if cacheable and value in self._gold_cache:
            return self._gold_cache[value]
        try:
            gold = self.task.gold_from_value(value)
        except ValueError as exc:
            numeric = isinstance(value, (int, float)) or (isinstance(value, str) and raw_key(value).isdigit())
            raise DataError(path, line, field, f"{exc}{self._map_hint() if numeric else ''}") from None
        if cacheable and len(self._gold_cache) < GOLD_CACHE_SIZE:
            self._gold_cache[value] = gold
        return gold

    def _mapped(self, path: Path, line: int, field: str, value: Any):
        multi = getattr(self.task, "multi_label", False)
        if multi and isinstance(value, list):
            pieces = value
        elif multi and isinstance(value, str):
            pieces = [p for p in LABEL_SEPARATORS.split(value) if p.strip()]
        else:
            pieces = [value]
        labels: list[str] = []
        for piece in pieces:
            if isinstance(piece, (dict, list)):
                raise DataError(path, line, field, f"expected a raw label value, got {type(piece).__name__}")
            key = raw_key(piece)
            if key not in self.label_map:
                keys = ", ".join(self.label_map)
                raise DataError(path, line, field, f"raw value '{key}' is not in the label map "
                                f"({self.mapping.where('label_map')} maps {keys})")
            labels.extend(label for label in self.label_map[key] if label not in labels)
        if not multi and len(labels) != 1:
            raise DataError(path, line, field, f"expected one label, the label map gives {len(labels)}")
        return tuple(labels)

    def _gold_from_onehot(self, path: Path, line: int, obj: dict, columns) -> tuple[str, ...]:
        labels = []
        for column, label in columns:
            value = obj.get(column)
            key = raw_key(value) if value is not None else ""
            if key in _TRUE:
                labels.append(label)
            elif key not in _FALSE:
                raise DataError(path, line, column, f"expected 0 or 1 (a one-hot label column), got {value!r}")
        if not getattr(self.task, "multi_label", False):
            if len(labels) > 1:
                raise DataError(path, line, columns[0][0], f"several one-hot label columns are 1 "
                                f"({', '.join(labels)}) in a single-label task")
            if not labels:
                raise DataError(path, line, columns[0][0], "no one-hot label column is 1 "
                                f"({', '.join(str(c) for c, _ in columns)}) in a single-label task")
        order = {name: i for i, name in enumerate(self.task.label_names)}
        return tuple(sorted(labels, key=order.get))

    def _gold_from_fields(self, path: Path, line: int, obj: dict, columns) -> dict[str, str]:
        values = {}
        for column, name in columns:
            value = obj.get(column)
            if not isinstance(value, str):
                raise DataError(path, line, column, "missing" if value is None else
                                f"expected a string, got {type(value).__name__}")
            values[name] = value
        try:
            return self.task.gold_from_value(values)
        except ValueError as exc:
            raise DataError(path, line, columns[0][0], str(exc)) from None


def gold_as_json(gold: Any, task) -> Any:
    """A gold answer as a post file's ``label`` writes it, so reading it back gives the same gold.

    A label (single-label), a list (multi-label), an object of fields (extraction), or for
    hierarchical tasks an object of parts, each ``{"labels": [...], "summary": "..."}``.
    """
    if gold is None:
        return None
    if isinstance(gold, tuple):
        return list(gold) if getattr(task, "multi_label", False) else (gold[0] if gold else None)
    parent_of = getattr(task, "parent_of", None)
    if parent_of is not None and isinstance(gold, Mapping) and "labels" in gold:
        summaries = gold.get("summaries") or {}
        return {part: {"labels": [label for label in gold["labels"] if parent_of.get(label) == part],
                       "summary": summaries.get(part, "")} for part in task.part_names}
    return dict(gold) if isinstance(gold, Mapping) else gold


def gold_labels(gold: Any) -> tuple[str, ...] | None:
    """The labels a gold answer names (hierarchical: its sub-labels), None when it names fields only."""
    if isinstance(gold, tuple):
        return gold
    if isinstance(gold, Mapping) and isinstance(gold.get("labels"), tuple):
        return gold["labels"]
    return None
