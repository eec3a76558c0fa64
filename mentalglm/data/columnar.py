"""Parquet, Arrow and Hugging Face ``datasets`` data, read in record batches (constant memory).

Optional: these need ``pyarrow`` (``pip install 'mentalglm[hf]'``); only a dataset on the Hub needs
``datasets`` as well. Local data never touches the network and is read with pyarrow alone:

- a ``.parquet`` file, or an ``.arrow`` file (IPC file or stream — ``datasets`` caches are streams);
- a ``save_to_disk`` folder: ``state.json`` lists its Arrow files; a ``DatasetDict`` folder has
  ``dataset_dict.json`` and one such folder per split;
- a folder of ``.parquet`` / ``.arrow`` / ``.jsonl`` / ``.json`` / ``.csv`` / ``.tsv`` files (the
  Hub's ``data/train-00000-of-00001.parquet`` layout), a split chosen by file or folder name.

``hf:NAME[:split]`` where NAME is not a local path is a Hub dataset, streamed with
``datasets.load_dataset(NAME, split=..., streaming=True)`` — the only case that downloads.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from mentalglm.core.errors import DataError, MentalGLMError

HF_SCHEME = "hf:"
EXTRA_HINT = "pip install 'mentalglm[hf]'"
_BATCH_ROWS = 2048
_FOLDER_SUFFIXES = (".parquet", ".arrow", ".jsonl", ".json", ".ndjson", ".csv", ".tsv")
_SPLIT = re.compile(r"^[A-Za-z0-9_.\-\[\]%+]+$")


def require_pyarrow(what: str):
    """The ``pyarrow`` module, or a one-line error saying which install brings it."""
    try:
        import pyarrow  # noqa: F401
        import pyarrow.ipc  # noqa: F401
        import pyarrow.parquet  # noqa: F401
    except ImportError:
        raise MentalGLMError(f"reading {what} needs pyarrow: {EXTRA_HINT}") from None
    return pyarrow


def _batches_to_rows(path: Path, batches) -> Iterator[tuple[Path, int, dict]]:
    row = 0
    for batch in batches:
        for obj in batch.to_pylist():
            row += 1
            yield path, row, obj


def parquet_columns(path: Path) -> list[str]:
    """Column names of a Parquet file (read from its footer only)."""
    pa = require_pyarrow("Parquet")
    try:
        return list(pa.parquet.ParquetFile(path).schema_arrow.names)
    except (OSError, pa.ArrowException) as exc:
        raise DataError(path, None, None, f"not a readable Parquet file: {exc}") from None


def iter_parquet(path: Path) -> Iterator[tuple[Path, int, dict]]:
    """(file, row, record) for every row of a Parquet file, one record batch in memory at a time."""
    pa = require_pyarrow("Parquet")
    try:
        handle = pa.parquet.ParquetFile(path)
        yield from _batches_to_rows(path, handle.iter_batches(batch_size=_BATCH_ROWS))
    except (OSError, pa.ArrowException) as exc:
        raise DataError(path, None, None, f"not a readable Parquet file: {exc}") from None


def _open_arrow(path: Path):
    pa = require_pyarrow("Arrow files")
    source = pa.memory_map(str(path))
    try:
        return pa.ipc.open_file(source)
    except pa.ArrowInvalid:
        source.seek(0)
        return pa.ipc.open_stream(source)


def arrow_columns(path: Path) -> list[str]:
    """Column names of an Arrow IPC file or stream."""
    pa = require_pyarrow("Arrow files")
    try:
        return list(_open_arrow(path).schema.names)
    except (OSError, pa.ArrowException) as exc:
        raise DataError(path, None, None, f"not a readable Arrow file: {exc}") from None


def iter_arrow(path: Path) -> Iterator[tuple[Path, int, dict]]:
    """(file, row, record) for every row of an Arrow IPC file or stream (memory-mapped)."""
    pa = require_pyarrow("Arrow files")
    try:
        reader = _open_arrow(path)
        if isinstance(reader, pa.ipc.RecordBatchFileReader):
            batches = (reader.get_batch(i) for i in range(reader.num_record_batches))
        else:
            batches = reader
        yield from _batches_to_rows(path, batches)
    except (OSError, pa.ArrowException) as exc:
        raise DataError(path, None, None, f"not a readable Arrow file: {exc}") from None


@dataclass
class HfData:
    """What an ``hf:`` spec names.

    Attributes:
        spec: as given.
        split: the split read (None: the folder or file has no splits).
        files: local data files, in reading order (empty for a Hub dataset).
        hub_name: the Hub dataset's name when it is not local.
        layout: ``save_to_disk``, ``DatasetDict``, ``folder``, ``file`` or ``hub``.
        splits: the splits that exist, when known.
    """

    spec: str
    split: str | None
    files: list[Path] = field(default_factory=list)
    hub_name: str | None = None
    layout: str = "folder"
    splits: list[str] = field(default_factory=list)


def parse_hf_spec(spec: str) -> tuple[str, str | None]:
    """``hf:PATH_OR_NAME[:split]`` → (path or name, split)."""
    rest = spec[len(HF_SCHEME):] if spec.startswith(HF_SCHEME) else spec
    if not rest:
        raise MentalGLMError("hf: needs a dataset folder or name: hf:PATH_OR_NAME[:split]")
    if Path(rest).exists():
        return rest, None
    head, sep, tail = rest.rpartition(":")
    if sep and head and _SPLIT.match(tail):
        return head, tail
    return rest, None


def _state_files(folder: Path) -> list[Path]:
    state = json.loads((folder / "state.json").read_text(encoding="utf-8"))
    return [folder / f["filename"] for f in state.get("_data_files", [])]


def _split_of(path: Path, root: Path) -> str | None:
    """The split a file of a data folder belongs to, from its name or its folder's (``train-0000.parquet``)."""
    for part in [*path.relative_to(root).parent.parts, path.name]:
        match = re.match(r"^(train|test|validation|valid|dev|eval)(?:[-_.]|$)", part, re.IGNORECASE)
        if match:
            return match.group(1).lower()
    return None


def resolve_hf(spec: str) -> HfData:
    """What ``hf:...`` names: local files to read (with their split) or a Hub dataset.

    Raises:
        DataError: a local folder without data files, or without the split asked for (the
            message lists the splits that exist).
        MentalGLMError: a ``DatasetDict`` folder or a split folder asked for without a split
            when it has several.
    """
    target, split = parse_hf_spec(spec)
    path = Path(target)
    if not path.exists():
        return HfData(spec, split, hub_name=target, layout="hub")
    if path.is_file():
        return HfData(spec, split, files=[path], layout="file")
    if (path / "dataset_dict.json").is_file():
        splits = json.loads((path / "dataset_dict.json").read_text(encoding="utf-8")).get("splits", [])
        if split is None and len(splits) == 1:
            split = splits[0]
        if split is None:
            raise MentalGLMError(f"{path} holds splits {', '.join(splits)}: name one, e.g. hf:{target}:{splits[0]}")
        if split not in splits:
            raise DataError(path, None, None, f"no split '{split}' (splits: {', '.join(splits)})")
        return HfData(spec, split, files=_state_files(path / split), layout="DatasetDict", splits=list(splits))
    if (path / "state.json").is_file():
        if split is not None:
            raise DataError(path, None, None, f"a save_to_disk folder of one split: drop ':{split}'")
        return HfData(spec, None, files=_state_files(path), layout="save_to_disk")
    files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in _FOLDER_SUFFIXES
                   and not any(part.startswith(".") for part in p.relative_to(path).parts))
    if not files:
        raise DataError(path, None, None, f"no data files ({', '.join(_FOLDER_SUFFIXES)}) in this folder")
    by_split: dict[str | None, list[Path]] = {}
    for f in files:
        by_split.setdefault(_split_of(f, path), []).append(f)
    splits = sorted(k for k in by_split if k)
    if split is None:
        if len(by_split) > 1 and splits:
            raise MentalGLMError(f"{path} holds splits {', '.join(splits)}: name one, e.g. hf:{target}:{splits[0]}")
        chosen = files
    else:
        if split not in by_split:
            raise DataError(path, None, None, f"no split '{split}' (splits: {', '.join(splits) or 'none'})")
        chosen = by_split[split]
    suffixes = {f.suffix.lower().replace(".ndjson", ".jsonl") for f in chosen}
    if len(suffixes) > 1:
        raise DataError(path, None, None, f"mixes data formats ({', '.join(sorted(suffixes))}); "
                        "point hf: at one kind of file")
    return HfData(spec, split, files=chosen, layout="folder", splits=splits)


def iter_hub(name: str, split: str | None) -> Iterator[tuple[str, int, dict]]:
    """Rows of a Hub dataset, streamed (downloads: only when the user named a Hub dataset)."""
    try:
        import datasets
    except ImportError:
        raise MentalGLMError(f"'{name}' is not a local folder; reading a Hub dataset needs datasets: "
                             f"{EXTRA_HINT}") from None
    try:
        loaded = datasets.load_dataset(name, split=split, streaming=True)
    except Exception as exc:  # datasets raises many kinds (connection, missing, config); all one line here
        raise MentalGLMError(f"hf:{name}: cannot load the dataset: {str(exc).splitlines()[0] if str(exc) else exc}")\
            from None
    if split is None:
        splits = list(loaded.keys())
        if len(splits) != 1:
            raise MentalGLMError(f"hf:{name} has splits {', '.join(splits)}: name one, e.g. hf:{name}:{splits[0]}")
        loaded = loaded[splits[0]]
    where = f"hf:{name}" + (f":{split}" if split else "")
    for row, obj in enumerate(loaded, 1):
        yield where, row, obj
