"""The ``replay`` backend: saved model outputs stand in for a model, so runs can be re-scored."""

from __future__ import annotations

from typing import Iterable, Sequence

from pydantic import Field

from mentalglm.core.backend import Backend, BackendOptions, Completion, GenerationRequest
from mentalglm.core.errors import DataError, MentalGLMError
from mentalglm.data.readers import iter_json_objects, resolve_path


class ReplayOptions(BackendOptions):
    """Options of the replay backend."""

    output_field: str = Field("output", description="field of each saved line that holds the model text")


class ReplayBackend(Backend):
    """Answers each request with the saved output of the same post id.

    ``model`` is a JSONL file of ``{"id": ..., "output": ...}`` lines — for example the
    ``predictions.jsonl`` of an earlier ``mentalglm evaluate`` — or ``sample:NAME``.

    Raises:
        DataError: the file is malformed, an id repeats, or a requested id has no saved output.

    Example:
        >>> backend = ReplayBackend("sample:depression.outputs")
        >>> backend.generate([GenerationRequest(id="dep-001", prompt="")])[0].finish_reason
        'replay'
    """

    name = "replay"
    description = "Saved model outputs (JSONL with id and output): re-score earlier generations without a model"
    Options = ReplayOptions

    def __init__(self, model: str | None = None, options=None):
        super().__init__(model, options)
        self.path = resolve_path(model)
        self._outputs: dict[str, str] = {}
        self._unchecked: set[str] = set()  # lines a batch import marked unchecked
        self._used_unchecked: set[str] = set()
        key = self.options.output_field
        for line, obj in iter_json_objects(self.path):
            if "id" not in obj or isinstance(obj["id"], (dict, list, bool)) or obj["id"] is None:
                raise DataError(self.path, line, "id", "missing or not a string")
            if not isinstance(obj.get(key), str):
                raise DataError(self.path, line, key, "missing or not a string")
            post_id = str(obj["id"])
            if post_id in self._outputs:
                raise DataError(self.path, line, "id", f"duplicate id '{post_id}'")
            self._outputs[post_id] = obj[key]
            if obj.get("unchecked") is True:
                self._unchecked.add(post_id)
        if not self._outputs:
            raise DataError(self.path, None, None, "no saved outputs found")

    def preflight(self, post_ids: Iterable[str], response_format=None) -> None:
        """Refuse a run when any of its posts has no saved output, counting all of them."""
        self._check([str(i) for i in post_ids if str(i) not in self._outputs])

    def _check(self, ids: Sequence[str]) -> None:
        missing = [i for i in ids if i not in self._outputs]
        if missing:
            raise MentalGLMError(f"{self.path}: no saved output for post id '{missing[0]}'"
                                 + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))

    def generate(self, requests: Sequence[GenerationRequest]) -> list[Completion]:
        """The saved output for each request's id."""
        self._check([r.id for r in requests])
        self._used_unchecked.update(r.id for r in requests if r.id in self._unchecked)
        return [Completion(r.id, self._outputs[r.id], finish_reason="replay") for r in requests]

    def run_stats(self) -> dict:
        """How many replayed outputs a batch import marked unchecked (none: nothing to say)."""
        return {"unchecked_outputs": len(self._used_unchecked)} if self._used_unchecked else {}
