"""What detection cannot know about a data file: which column is the post, the label, the id; what raw
label values mean; the names of a headerless file's columns; its encoding and format.

The same mapping comes from command-line flags (``--text-field``, ``--label-field``, ``--id-field``,
``--label-map 0=低自杀风险,1=高自杀风险``, ``--columns A,B,C``, ``--encoding``, ``--format``) or from a
small YAML *dataset card* kept next to the data, the way lm-evaluation-harness task files name
``dataset_path`` and ``doc_to_target``::

    # sos-hl.yaml
    path: SOS-HL-1K/train.csv      # relative to the card; hf:FOLDER[:split] works too
    format: tsv                    # optional: json, jsonl, csv, tsv, txt, parquet, arrow
    encoding: gb18030              # optional: detected otherwise
    text_field: comment
    label_field: label
    id_field: id
    label_map: {0: 低自杀风险, 1: 高自杀风险}
    columns: [id, label, comment]  # only for a headerless file

Flags given with a card override the card's keys. A card key that is not one of these is an error
with a did-you-mean, never ignored.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Mapping

from mentalglm.core.errors import DataError, MentalGLMError, UnknownNameError

FORMATS = ("json", "jsonl", "csv", "tsv", "txt", "parquet", "arrow")
CARD_SUFFIXES = (".yaml", ".yml")
#: Keys a dataset card may hold: ``path`` plus every mapping field.
CARD_KEYS = ("path", "format", "encoding", "text_field", "label_field", "id_field", "label_map", "columns")
_INTEGRAL = re.compile(r"^[+-]?\d+\.0*$")


def raw_key(value: Any) -> str:
    """The label-map key a raw label value is looked up under.

    ``1``, ``1.0``, ``"1"`` and ``" 1 "`` are one key, and so are ``True``, ``"true"`` and ``"True"``:
    the same label written by pandas (floats), JSON (numbers, booleans) and CSV (strings).
    """
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    text = str(value).strip()
    if _INTEGRAL.match(text) and "." in text:
        text = text.split(".")[0]
    return text.lower() if text.lower() in ("true", "false") else text


@dataclass(frozen=True)
class DataMapping:
    """How to read a data file where detection cannot know (every field optional).

    Attributes:
        format: force the reader (``json``, ``jsonl``, ``csv``, ``tsv``, ``txt``, ``parquet``, ``arrow``).
        encoding: the text encoding; detected when None.
        text_field: the field or column holding the post.
        label_field: the field or column holding the gold label.
        id_field: the field or column holding the post id.
        label_map: raw label value → label (or alias) of the task; keys as :func:`raw_key` spells them.
        columns: names of a headerless file's columns, in order.
        origin: where each set field came from (``--text-field``, ``card.yaml``), for messages.
    """

    format: str | None = None
    encoding: str | None = None
    text_field: str | None = None
    label_field: str | None = None
    id_field: str | None = None
    label_map: Mapping[str, str] | None = None
    columns: tuple[str, ...] | None = None
    origin: Mapping[str, str] = field(default_factory=dict, compare=False)

    def __post_init__(self):
        if self.format is not None and self.format not in FORMATS:
            raise UnknownNameError("data format", self.format, FORMATS)

    def is_empty(self) -> bool:
        """True when nothing is set: everything is detected."""
        return all(getattr(self, f.name) in (None, {}, ()) for f in fields(self) if f.name != "origin")

    def overridden_by(self, other: DataMapping | None) -> DataMapping:
        """This mapping with every field that ``other`` sets replaced (flags over a card)."""
        if other is None:
            return self
        changes = {f.name: getattr(other, f.name) for f in fields(self)
                   if f.name != "origin" and getattr(other, f.name) not in (None, {}, ())}
        return replace(self, **changes, origin={**self.origin, **{k: other.origin.get(k, "") for k in changes}})

    def where(self, name: str) -> str:
        """Where field ``name`` was set (``--label-map``), for messages."""
        return self.origin.get(name) or f"--{name.replace('_', '-')}"

    def describe(self) -> dict:
        """The set fields, JSON-ready (what ``data inspect`` shows as the mapping given)."""
        shown = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "origin" or value in (None, {}, ()):
                continue
            shown[f.name] = dict(value) if f.name == "label_map" else (list(value) if f.name == "columns" else value)
        return shown

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], origin: str) -> DataMapping:
        """A mapping from card-style keys (``label_map`` a mapping or ``0=A,1=B``, ``columns`` a list or ``A,B``).

        Args:
            values: keys among :data:`CARD_KEYS` other than ``path``.
            origin: where they come from (a card's file name), for messages.

        Raises:
            MentalGLMError: an unknown key (with the closest one), or a value of the wrong type.
        """
        allowed = [k for k in CARD_KEYS if k != "path"]
        for key in values:
            if key not in allowed:
                raise UnknownNameError(f"key in {origin}", str(key), CARD_KEYS)
        parsed: dict[str, Any] = {}
        for key, value in values.items():
            if value is None:
                continue
            if key == "label_map":
                parsed[key] = parse_label_map(value, where=f"{origin}: label_map")
            elif key == "columns":
                parsed[key] = parse_columns(value, where=f"{origin}: columns")
            elif isinstance(value, (str, int)) and not isinstance(value, bool):
                parsed[key] = str(value)
            else:
                raise MentalGLMError(f"{origin}: {key}: expected a string, got {type(value).__name__}")
        return cls(**parsed, origin={k: origin for k in parsed})


def parse_label_map(value: str | Mapping, *, where: str = "--label-map") -> dict[str, str]:
    """``0=低自杀风险,1=高自杀风险`` (or a mapping) as ``{raw key: label}``.

    Raises:
        MentalGLMError: a piece without ``=``, an empty side, or a raw value given twice.
    """
    if isinstance(value, Mapping):
        pairs = [(k, v) for k, v in value.items()]
    elif isinstance(value, str):
        pairs = []
        for piece in value.split(","):
            if not piece.strip():
                continue
            raw, sep, label = piece.partition("=")
            if not sep:
                raise MentalGLMError(f"{where}: expected RAW=LABEL pairs separated by commas, got '{piece.strip()}'")
            pairs.append((raw, label))
    else:
        raise MentalGLMError(f"{where}: expected RAW=LABEL,… or a mapping, got {type(value).__name__}")
    mapping: dict[str, str] = {}
    for raw, label in pairs:
        key = raw_key(raw)
        if not key or not isinstance(label, str) or not label.strip():
            raise MentalGLMError(f"{where}: '{raw}={label}': both the raw value and the label must be non-empty")
        if key in mapping:
            raise MentalGLMError(f"{where}: raw value '{key}' is mapped twice")
        mapping[key] = label.strip()
    if not mapping:
        raise MentalGLMError(f"{where}: empty")
    return mapping


def parse_columns(value: str | list | tuple, *, where: str = "--columns") -> tuple[str, ...]:
    """``id,label,text`` (or a list) as a tuple of column names.

    Raises:
        MentalGLMError: an empty or repeated name.
    """
    names = value.split(",") if isinstance(value, str) else list(value)
    names = [str(n).strip() for n in names]
    if not names or any(not n for n in names):
        raise MentalGLMError(f"{where}: expected comma-separated column names, got {value!r}")
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise MentalGLMError(f"{where}: column '{repeated[0]}' is named twice")
    return tuple(names)


def is_card(spec: str | os.PathLike) -> bool:
    """Whether ``spec`` names a dataset card (a ``.yaml``/``.yml`` file)."""
    return Path(os.fspath(spec)).suffix.lower() in CARD_SUFFIXES


def load_card(path: str | os.PathLike) -> tuple[str, DataMapping]:
    """The data spec (``path`` resolved against the card's folder) and the mapping of a dataset card.

    Raises:
        DataError: the card is missing, not YAML, not a mapping, or has no ``path``.
        MentalGLMError: an unknown key or a bad value.
    """
    import yaml

    card = Path(path)
    try:
        document = yaml.safe_load(card.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(card, None, None, "no such file") from None
    except OSError as exc:
        raise DataError(card, None, None, f"cannot read: {exc.strerror or exc}") from None
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        mark = getattr(exc, "problem_mark", None)
        raise DataError(card, mark.line + 1 if mark else None, None,
                        f"not a valid dataset card: {str(exc).splitlines()[0]}") from None
    if not isinstance(document, dict):
        raise DataError(card, None, None, f"a dataset card is a YAML mapping with keys {', '.join(CARD_KEYS)}")
    target = document.get("path")
    if not isinstance(target, str) or not target.strip():
        raise DataError(card, None, "path", "missing: the card must say where the data is (relative to the card)")
    mapping = DataMapping.from_dict({k: v for k, v in document.items() if k != "path"}, card.name)
    return resolve_relative(target.strip(), card.parent), mapping


def resolve_relative(target: str, folder: Path) -> str:
    """``target`` resolved against ``folder`` unless absolute, a ``sample:`` or a hub ``hf:`` name."""
    if target.startswith("sample:"):
        return target
    if target.startswith("hf:"):
        rest = target[3:]
        local = folder / rest.split(":")[0]
        return f"hf:{folder / rest}" if not Path(rest).is_absolute() and local.exists() else target
    return target if Path(target).is_absolute() else str(folder / target)
