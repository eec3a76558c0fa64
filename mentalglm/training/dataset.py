"""Training examples: C-IMHI records checked, rendered, tokenized and masked; batches and data order.

Every record becomes ``prompt tokens + response tokens + end token``, where the prompt is the
record's ``instruction`` and ``input`` rendered by the prompt style — byte for byte what the
backends send at inference — and the response is the record's ``output``. Labels are -100 on
the prompt, so the loss is on the response and the end token only.

The prompt and the response are tokenized separately and concatenated. At inference the
model continues the prompt's own tokenization, so training must see the same prompt tokens
(a joint tokenization could merge characters across the boundary). Both are tokenized with
``add_special_tokens=False``: GLM-4 prompts already start with ``[gMASK]<sop>``, and the
backends tokenize rendered prompts the same way.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Sequence

from mentalglm.core.errors import DataError, MentalGLMError
from mentalglm.core.prompt import PromptStyle
from mentalglm.data.readers import Record, open_source, read_records

log = logging.getLogger(__name__)

#: Label value the loss ignores (PyTorch's ``cross_entropy`` default).
IGNORE_INDEX = -100


@dataclass(frozen=True)
class EndToken:
    """The token appended to every response and learnt, so the tuned model stops by itself.

    Attributes:
        text: the token's text (``<|endoftext|>`` for GLM-4).
        id: its id in the tokenizer.
        reason: how it was chosen (recorded in ``train_config.json``).
    """

    text: str
    id: int
    reason: str


@dataclass
class Example:
    """One tokenized training sequence.

    Attributes:
        input_ids: prompt, response and end token ids.
        labels: ``input_ids`` with the prompt positions set to -100.
        source: the data file.
        line: the record's line in it.
        truncated: the response was cut to fit ``max_length``.
    """

    input_ids: list[int]
    labels: list[int]
    source: str
    line: int
    truncated: bool = False

    @property
    def prompt_length(self) -> int:
        """Number of leading positions without a label."""
        return next((i for i, label in enumerate(self.labels) if label != IGNORE_INDEX), len(self.labels))


@dataclass
class DataFile:
    """A data file as recorded in ``train_config.json``: where it is, its hash and size."""

    spec: str
    path: str
    sha256: str
    records: int

    def to_dict(self) -> dict:
        """JSON-ready form."""
        return {"spec": self.spec, "path": self.path, "sha256": self.sha256, "records": self.records}


@dataclass
class StageData:
    """The examples of one stage and what was noticed while building them.

    Attributes:
        examples: in file order (files in the order given).
        files: the files with hashes.
        truncated: how many examples had their response cut by ``max_length``.
    """

    examples: list[Example]
    files: list[DataFile] = field(default_factory=list)
    truncated: int = 0


def _single_token_id(tokenizer, text: str) -> int | None:
    """The id of ``text`` when the tokenizer reads it as exactly one token, else None."""
    ids = tokenizer(text, add_special_tokens=False).input_ids
    return ids[0] if len(ids) == 1 else None


def resolve_end_token(tokenizer, style: PromptStyle, setting: str = "auto") -> EndToken | None:
    """Choose the token that ends every training response.

    ``auto`` picks, in order: the tokenizer's eos token when the prompt style stops on it
    (``glm4-chat`` → ``<|endoftext|>``, the token GLM-4's own fine-tuning code appends after
    the assistant turn and a stop token of every backend); else the first of the style's stop
    strings that is a single token; else, for styles without stop strings (``plain``), the
    tokenizer's eos token.

    Args:
        tokenizer: a transformers tokenizer.
        style: the prompt style the data is rendered with.
        setting: ``auto``, ``none`` (learn no end token — the model will not stop by itself),
            or the text of one token.

    Returns:
        The end token, or None for ``none``.

    Raises:
        MentalGLMError: an explicit token that is not one token of this tokenizer, or ``auto``
            with nothing to choose from.
    """
    if setting == "none":
        return None
    if setting != "auto":
        token_id = _single_token_id(tokenizer, setting)
        if token_id is None:
            raise MentalGLMError(f"--end-token {setting!r} is not a single token of this tokenizer")
        return EndToken(setting, token_id, "given with --end-token")
    eos = tokenizer.eos_token
    if eos and eos in style.stop and _single_token_id(tokenizer, eos) is not None:
        return EndToken(eos, _single_token_id(tokenizer, eos),
                        f"the tokenizer's eos token, a stop string of prompt style '{style.name}'")
    for stop in style.stop:
        token_id = _single_token_id(tokenizer, stop)
        if token_id is not None:
            return EndToken(stop, token_id, f"the first single-token stop string of prompt style '{style.name}'")
    if eos and _single_token_id(tokenizer, eos) is not None:
        return EndToken(eos, _single_token_id(tokenizer, eos), "the tokenizer's eos token")
    raise MentalGLMError(f"cannot choose an end token: prompt style '{style.name}' has no single-token stop "
                         "string and the tokenizer has no eos token; give --end-token TEXT or --end-token none")


def read_stage_records(specs: Sequence[str], task=None, mapping=None) -> list[tuple[DataFile, list[Record]]]:
    """Read and check the record files of one stage.

    Args:
        specs: file paths, dataset cards or ``sample:NAME`` specs.
        task: when given, every ``output`` must state a valid gold answer of this task.
        mapping: how to read them (:class:`~mentalglm.data.mapping.DataMapping`), or None.

    Returns:
        ``(file, records)`` per spec, in order.

    Raises:
        DataError: a missing/empty/malformed file, a record without ``output`` (or another
            required field), or an output whose answer is not valid for ``task`` — one line
            naming file, line and field.
    """
    result = []
    for spec in specs:
        source = open_source(spec, mapping)
        records = read_records(source, task)  # checks every gold answer against the task
        where = str(source.files[0].resolve()) if len(source.files) == 1 else source.display
        info = DataFile(spec=spec, path=where, sha256=source.fingerprint(), records=len(records))
        result.append((info, records))
    return result


def encode_record(tokenizer, style: PromptStyle, record: Record, *, end_token: EndToken | None,
                  max_length: int, system: str | None = None, source: str = "") -> Example:
    """Tokenize one record with the response-only loss mask.

    Args:
        tokenizer: a transformers tokenizer.
        style: the prompt style.
        record: the C-IMHI record.
        end_token: appended to the response and labelled (None: nothing appended).
        max_length: the longest sequence; a longer response is cut at the end (end token too).
        system: optional system message for chat styles.
        source: the data file, for errors.

    Returns:
        The example; ``truncated`` says whether the response was cut.

    Raises:
        DataError: the prompt alone leaves no room for a response within ``max_length``.
    """
    prompt = style.render(record.instruction, record.input, system)
    prompt_ids = tokenizer(prompt, add_special_tokens=False).input_ids
    response_ids = tokenizer(record.output, add_special_tokens=False).input_ids
    if end_token is not None:
        response_ids = response_ids + [end_token.id]
    if len(prompt_ids) >= max_length:
        raise DataError(source, record.line, "input",
                        f"the prompt alone is {len(prompt_ids)} tokens, no room for the response within "
                        f"--max-length {max_length}; shorten the post or raise --max-length")
    room = max_length - len(prompt_ids)
    truncated = len(response_ids) > room
    response_ids = response_ids[:room]
    return Example(input_ids=prompt_ids + response_ids, labels=[IGNORE_INDEX] * len(prompt_ids) + response_ids,
                   source=source, line=record.line, truncated=truncated)


def encode_stage(tokenizer, style: PromptStyle, files: list[tuple[DataFile, list[Record]]], *,
                 end_token: EndToken | None, max_length: int, system: str | None = None) -> StageData:
    """Tokenize every record of a stage.

    Returns:
        The stage's examples, files and truncation count.

    Raises:
        DataError: see :func:`encode_record`.
    """
    examples: list[Example] = []
    for info, records in files:
        examples += [encode_record(tokenizer, style, r, end_token=end_token, max_length=max_length,
                                   system=system, source=info.spec) for r in records]
    return StageData(examples=examples, files=[info for info, _ in files],
                     truncated=sum(e.truncated for e in examples))


# -- data order and batches -------------------------------------------------------------------
def epoch_order(n: int, *, seed: int, stage: int, epoch: int, world_size: int = 1, rank: int = 0) -> list[int]:
    """This process's example indices for one epoch, shuffled reproducibly.

    A ``DistributedSampler`` does the shuffling and sharding (with one process it is a plain
    seeded shuffle), seeded per stage and by epoch, so the order is a pure function of
    (seed, stage, epoch) and a resumed run sees exactly the batches the interrupted one would
    have seen.

    Args:
        n: number of examples in the stage.
        seed: the run's seed.
        stage: 0-based stage index.
        epoch: 0-based epoch within the stage.
        world_size, rank: the DDP layout (indices are padded by repetition to split evenly).

    Returns:
        Indices into the stage's examples.
    """
    from torch.utils.data import DistributedSampler

    sampler = DistributedSampler(range(n), num_replicas=world_size, rank=rank, shuffle=True,
                                 seed=seed + 1000 * stage, drop_last=False)
    sampler.set_epoch(epoch)
    return list(sampler)


def step_batches(order: Sequence[int], batch_size: int, accumulation: int) -> list[list[list[int]]]:
    """Group an epoch's indices into optimizer steps of micro-batches.

    Returns:
        One entry per optimizer step: up to ``accumulation`` micro-batches of up to
        ``batch_size`` indices (the last step of an epoch may be smaller).
    """
    micro = [list(order[i:i + batch_size]) for i in range(0, len(order), batch_size)]
    return [micro[i:i + accumulation] for i in range(0, len(micro), accumulation)]


def steps_per_epoch(n: int, batch_size: int, accumulation: int, world_size: int = 1) -> int:
    """Optimizer steps in one epoch of ``n`` examples (per process under DDP)."""
    per_rank = -(-n // world_size)
    micro = -(-per_rank // batch_size)
    return -(-micro // accumulation)


def collate(examples: Sequence[Example], pad_id: int) -> dict[str, Any]:
    """Right-pad examples into tensors.

    Returns:
        ``input_ids``, ``attention_mask`` and ``labels`` (-100 on padding) as ``torch.long``
        tensors of shape (batch, longest).
    """
    import torch

    width = max(len(e.input_ids) for e in examples)
    input_ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)
    attention = torch.zeros((len(examples), width), dtype=torch.long)
    for row, example in enumerate(examples):
        size = len(example.input_ids)
        input_ids[row, :size] = torch.tensor(example.input_ids, dtype=torch.long)
        labels[row, :size] = torch.tensor(example.labels, dtype=torch.long)
        attention[row, :size] = 1
    return {"input_ids": input_ids, "attention_mask": attention, "labels": labels}
