"""The backend contract: prompts in, completions out, with typed options.

A backend is a class registered under a short name (``torch``, ``llamacpp``, ``openai``,
``replay``). Its options are a pydantic model with ``extra="forbid"``, so a misspelt option
is an error that lists the valid ones instead of a silently ignored setting.
"""

from __future__ import annotations

import difflib
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar, Iterable, Mapping, Sequence

from pydantic import BaseModel, ConfigDict, ValidationError

from mentalglm.core.errors import OptionsError
from mentalglm.core.response_format import ResponseFormat


class BackendOptions(BaseModel):
    """Options every backend accepts; subclasses add their own fields.

    Attributes:
        max_new_tokens: upper bound on generated tokens per post.
        seed: seed for any sampling (greedy decoding ignores it).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_new_tokens: int = 256
    seed: int = 0


@dataclass(frozen=True)
class GenerationRequest:
    """One prompt to complete.

    Attributes:
        id: the post id (the replay backend looks outputs up by it).
        prompt: the exact model input rendered by a prompt style (GLM-4 prompts start with
            ``[gMASK]<sop>``: tokenize with special tokens and without adding a BOS).
        stop: strings that end the completion.
        max_new_tokens: overrides the backend's option when set.
        response_format: the task's answer format; backends whose ``constrained`` option is on
            decode only answers of that format (GBNF in llama.cpp, a byte-prefix test in torch).
        messages: the chat turns (``{"role", "content"}``) when the server renders the prompt with
            its own template (``--prompt server``); ``prompt`` then holds them as JSON.
        answer_labels: score mode's chosen labels, for a backend that reads posts (``reads_posts``):
            it answers with what follows their explanation lead. A language model finds the lead
            at the end of ``prompt`` instead.
    """

    id: str
    prompt: str
    stop: tuple[str, ...] = ()
    max_new_tokens: int | None = None
    response_format: ResponseFormat | None = None
    messages: tuple[dict, ...] | None = None
    answer_labels: tuple[str, ...] | None = None


@dataclass
class Completion:
    """A backend's answer to one request.

    Attributes:
        id: the request's id.
        text: the generated text, without the prompt and without the stop string.
        usage: token counts (``prompt_tokens``, ``completion_tokens``) where known.
        finish_reason: ``stop``, ``length`` or ``replay``.
    """

    id: str
    text: str
    usage: dict[str, int] = field(default_factory=dict)
    finish_reason: str = "stop"


def _type_name(annotation) -> str:
    """An option's type for people: ``int``, ``auto|vllm|llama.cpp``, ``str | None``."""
    import types
    import typing

    origin = typing.get_origin(annotation)
    if origin is typing.Literal:
        return "|".join(str(value) for value in typing.get_args(annotation))
    if origin in (typing.Union, types.UnionType):
        return " | ".join(_type_name(arg) for arg in typing.get_args(annotation))
    if annotation is type(None):
        return "None"
    return getattr(annotation, "__name__", None) or str(annotation).replace("typing.", "")


class Backend(ABC):
    """Base class of backends.

    Subclasses set ``name``, ``description``, ``Options`` and ``capabilities`` and implement
    :meth:`generate`; those that can score labels implement :meth:`score_labels`. Backends
    holding native or GPU memory release it in :meth:`close`; use them as context managers.

    Args:
        model: what to load (a directory, a GGUF file, a server model name, a saved-outputs
            file), or None for backends that need none.
        options: an ``Options`` instance or a mapping validated into one.

    Raises:
        OptionsError: the options do not validate.
    """

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    Options: ClassVar[type[BackendOptions]] = BackendOptions
    #: What the backend can do: ``generate``, ``score_labels``, ``train``.
    capabilities: ClassVar[frozenset[str]] = frozenset({"generate"})
    #: Whether ``model`` must be given.
    requires_model: ClassVar[bool] = True
    #: Whether post text is PII-redacted by default before it reaches this backend (remote servers).
    redacts_by_default: ClassVar[bool] = False
    #: Whether the backend classifies the post text itself (the baseline): its prompts are the posts
    #: alone (no instruction, no template) and score mode asks it for labels' scores directly.
    reads_posts: ClassVar[bool] = False

    def __init__(self, model: str | None = None, options: BackendOptions | Mapping[str, Any] | None = None):
        if self.requires_model and not model:
            raise OptionsError(f"backend '{self.name}' needs a model (--model)")
        self.model = model
        self.options = options if isinstance(options, self.Options) else self.parse_options(options or {})

    @classmethod
    def parse_options(cls, values: Mapping[str, Any]) -> BackendOptions:
        """Validate raw option values (strings from the command line are converted).

        Raises:
            OptionsError: an unknown option (with the closest valid name) or a bad value.
        """
        known = list(cls.Options.model_fields)
        for key in values:
            if key not in known:
                close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
                hint = f" Did you mean '{close[0]}'?" if close else ""
                raise OptionsError(f"backend '{cls.name}' has no option '{key}'.{hint} "
                                   f"Valid options: {', '.join(known)}")
        try:
            return cls.Options(**values)
        except ValidationError as exc:
            error = exc.errors()[0]
            where = ".".join(str(part) for part in error["loc"])
            raise OptionsError(f"backend '{cls.name}' option '{where}': {error['msg']}") from None

    @classmethod
    def describe(cls) -> dict:
        """Name, description, capabilities and options (type, default, help) for ``mentalglm backends``."""
        options = []
        for key, info in cls.Options.model_fields.items():
            type_name = _type_name(info.annotation)
            default = None if info.is_required() else info.get_default(call_default_factory=True)
            options.append({"name": key, "type": type_name, "default": default,
                            "required": info.is_required(), "help": info.description or ""})
        return {"name": cls.name, "description": cls.description, "requires_model": cls.requires_model,
                "capabilities": sorted(cls.capabilities), "options": options}

    def preflight(self, post_ids: Iterable[str], response_format: ResponseFormat | None = None) -> None:
        """Check, before the first post of a run, that the backend can answer these posts (streamed ids)
        in the task's ``response_format`` (a server must prove it enforces the constraint).

        Raises a one-line MentalGLMError when it cannot (``replay``: ids without saved output).
        """

    @abstractmethod
    def generate(self, requests: Sequence[GenerationRequest]) -> list[Completion]:
        """Complete a batch of prompts, one Completion per request, in order."""

    def score_labels(self, prompt: str, candidates: Sequence[str]) -> list[float]:
        """Log-likelihood of each candidate continuation after ``prompt`` (where supported).

        ``prompt`` and each candidate are tokenized separately and their ids concatenated
        (as lm-evaluation-harness does), and the log-probabilities of the candidate's tokens
        are summed, so every backend scores exactly the same token sequence.
        """
        raise NotImplementedError(f"backend '{self.name}' cannot score labels")

    def score_labels_batch(self, prompts: Sequence[str], candidates: Sequence[str]) -> list[list[float]]:
        """:meth:`score_labels` for several prompts (one list of scores per prompt, in order).

        Backends that can score prompts together (llama.cpp's parallel sequences) override this.
        """
        return [self.score_labels(prompt, candidates) for prompt in prompts]

    def run_stats(self) -> dict:
        """Counts about how the backend did its work that are not settings (``openai``: per replica), JSON-ready.

        They go into the run summary, never into the run record: a rerun with the same settings resumes
        whatever they were.
        """
        return {}

    @property
    def preferred_batch_size(self) -> int:
        """Posts per :meth:`generate` call that keep this backend busy (the Analyzer's default batch)."""
        return 8

    def token_count(self, text: str) -> int | None:
        """Tokens in ``text`` as this backend's model counts them (special tokens parsed), or None if unknown."""
        return None

    @property
    def context_length(self) -> int | None:
        """The context window the model runs with, or None if unknown."""
        return None

    def identity(self) -> dict:
        """What a run record keeps of the loaded model beyond its options, JSON-ready.

        The model's content (SHA-256 of the file, or of a folder's files; cached by path, size and
        mtime, so a big file is read once), so a re-exported GGUF or a retrained adapter at the same
        path is not resumed into old predictions. Backends add what they resolve at load time and
        what changes answers (device, dtype, effective parallel sequences, engine versions).
        """
        from pathlib import Path

        from mentalglm.core.files import content_sha256

        model = self.model
        local = bool(model) and not str(model).startswith(("sample:", "hf:")) and Path(model).exists()
        return {"model_sha256": content_sha256(model) if local else None}

    def render_on_server(self) -> None:
        """``--prompt server``: send chat turns from now on and let the server apply its own chat template.

        Raises:
            MentalGLMError: a backend with no server to render for it (only ``openai`` has one).
        """
        from mentalglm.core.errors import MentalGLMError

        raise MentalGLMError(f"--prompt server: backend '{self.name}' sends no chat messages to a server (the openai "
                             "backend does); use --prompt auto for the model's own chat template")

    def chat_template(self):
        """The model's own chat template (a :class:`~mentalglm.core.prompt.ChatTemplate`), or None without one.

        ``--prompt auto`` renders posts with it; a backend that cannot read one returns None and
        ``auto`` is refused for it.
        """
        return None

    def close(self) -> None:
        """Release the model and any native memory; the backend is unusable afterwards."""

    def __enter__(self):
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()
