"""Which OpenAI-compatible server the ``openai`` backend talks to, and how that server takes a constraint.

Servers accept unknown request fields with HTTP 200 and ignore them, so a constraint sent in the
wrong field fails *open*: answers come back unconstrained and look like any others. vLLM takes
constraints only in ``structured_outputs`` (its ``guided_*`` fields were removed in v0.12); the
llama.cpp servers take a GBNF ``grammar``; a plain OpenAI ``/completions`` endpoint has no way to
constrain a completion at all. This module names those dialects, tells them apart from what a
server shows about itself, writes each one's constraint fields, and checks an answer against the
constraint, so the backend can prove (canary) and keep checking (every answer) that it holds.

Signs a server shows, checked against the real servers where noted:

============================  =====================================================================
vLLM (0.32, real server)      ``GET /version`` → ``{"version": "0.32.0"}``; ``GET /v1/models`` cards
                              have ``owned_by: "vllm"``, ``max_model_len``, ``root``, ``parent`` (a
                              LoRA adapter's card names its base model as ``parent``)
llama-cpp-python (0.3.36,     no ``/version`` (404); ``/v1/models`` cards have ``owned_by: "me"``;
real server)                  ``GET /openapi.json`` has ``info.title`` "🦙 llama.cpp Python API" and
                              ``info.version`` = the package version
llama.cpp ``llama-server``    ``/v1/models`` cards have ``owned_by: "llamacpp"``; ``GET /props`` has
(from its source)             ``build_info`` (``b<N>-<commit>``) and ``default_generation_settings``
============================  =====================================================================
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from mentalglm.core.errors import MentalGLMError
from mentalglm.core.response_format import ResponseFormat
from mentalglm.modelfiles.tokens import GLM4_STOP_TOKENS

#: What the canary asks for: an answer nothing like the task format, so a server that ignores the
#: constraint answers outside it (a real chat model writes the digits; a random tiny one, noise).
CANARY_QUESTION = "Reply with the digits 12345 and nothing else."
CANARY_PROMPT = f"[gMASK]<sop><|user|>\n{CANARY_QUESTION}<|assistant|>\n"
#: Enough tokens for an unconstrained answer to leave the grammar, few enough to cost nothing.
CANARY_TOKENS = 32

#: Every construct the task grammars use — literals with CJK text, alternatives, bounded repeats,
#: named rules, a one-line class and the free explanation — so the canary exercises what the task
#: grammars rely on. Used when the caller does not pass the task's own format.
CANARY_FORMAT = ResponseFormat("hierarchical", parts=(("甲部", ("子一", "子二", "子三")), ("乙部", ("子四", "子五"))))
#: The canary of label-only answers (``answer=label``).
CANARY_LABELS = ResponseFormat("single-label", labels=("甲类", "乙类"))


@dataclass(frozen=True)
class ServerInfo:
    """What a server is, as far as its signs tell, and which dialect requests are written in.

    Attributes:
        dialect: how requests are written (``vllm``, ``llama.cpp`` or ``openai``).
        engine: what the signs say the server is (``vLLM``, ``llama-cpp-python``,
            ``llama.cpp server``), or None when they say nothing.
        version: the server's version where it tells one (vLLM's ``/version``,
            llama-cpp-python's OpenAPI version, llama-server's ``build_info``).
        signs: what showed it, for messages (``GET /version``, ``server option``).
        models: the model ids ``/v1/models`` lists (vLLM: the base model and its LoRA adapters).
        forced: whether the dialect came from the ``server`` option rather than from the signs.
    """

    dialect: str
    engine: str | None = None
    version: str | None = None
    signs: str = ""
    models: tuple[str, ...] = ()
    forced: bool = False

    @property
    def detected_dialect(self) -> str | None:
        """The dialect the signs point to (None when they point to none)."""
        return _ENGINE_DIALECT.get(self.engine or "")

    def describe(self) -> str:
        """``vLLM 0.32.0`` / ``an OpenAI-compatible server of unknown make``."""
        if not self.engine:
            return "an OpenAI-compatible server of unknown make"
        return f"{self.engine} {self.version}" if self.version else self.engine


_ENGINE_DIALECT = {"vLLM": "vllm", "llama-cpp-python": "llama.cpp", "llama.cpp server": "llama.cpp"}
#: Where each dialect reads a constraint.
_OWN_FIELD = {"vllm": "structured_outputs", "llama.cpp": "grammar"}


def server_root(base_url: str) -> str:
    """The server's own root: ``base_url`` without a trailing ``/v1`` (``/version``, ``/tokenize`` live there)."""
    return base_url[:-3] if base_url.endswith("/v1") else base_url


def identify(get: Callable[[str], Any], base_url: str) -> tuple[str | None, str | None, str, tuple[str, ...]]:
    """What the server's signs say it is: ``(engine, version, signs, model ids)``.

    Args:
        get: ``get(url)`` → the parsed JSON answer of ``GET url``, or None where the endpoint
            does not exist (404/405/501) or does not answer JSON. Only the probes that can still
            decide are made, at most four.
        base_url: the API root (``http://host:8000/v1``).
    """
    root = server_root(base_url)
    listing = get(f"{base_url}/models")
    cards = [c for c in (listing.get("data") if isinstance(listing, dict) else None) or [] if isinstance(c, dict)]
    models = tuple(str(c["id"]) for c in cards if "id" in c)
    owners = {c.get("owned_by") for c in cards}
    if "vllm" in owners:
        return "vLLM", _text(_field(get(f"{root}/version"), "version")), "owned_by vllm in /v1/models", models
    if "llamacpp" in owners:
        props = get(f"{root}/props")
        return "llama.cpp server", _text(_field(props, "build_info")), "owned_by llamacpp in /v1/models", models
    version = get(f"{root}/version")
    if _field(version, "version") is not None and any("max_model_len" in c for c in cards):
        return "vLLM", _text(_field(version, "version")), "GET /version and max_model_len in /v1/models", models
    info = _field(get(f"{root}/openapi.json"), "info")
    title = _text(_field(info, "title")) or ""
    if "llama.cpp python" in title.lower():
        return "llama-cpp-python", _text(_field(info, "version")), "openapi.json title", models
    return None, _text(_field(version, "version")), "no known sign", models


def _field(obj: Any, key: str) -> Any:
    return obj.get(key) if isinstance(obj, dict) else None


def _text(value: Any) -> str | None:
    return None if value is None else str(value)[:80]


def dialect_of(engine: str | None) -> str:
    """The dialect to write requests in for what :func:`identify` found (``openai`` for an unknown make)."""
    return _ENGINE_DIALECT.get(engine or "", "openai")


# -- constraints -----------------------------------------------------------------------------------
class ConstraintUnsupported(MentalGLMError):
    """The dialect has no way to constrain a ``/completions`` answer."""


@dataclass(frozen=True)
class Constraint:
    """How one request's answer is constrained, and what a constrained answer must look like.

    Attributes:
        sent_as: the request field that carries it, for messages and the run record
            (``structured_outputs.grammar``).
        fields: request fields to add.
        response_format: the task's answer format (full answers are checked against it).
        choices: label-only answers: the exact answers allowed (None for full answers).
    """

    sent_as: str
    fields: dict = field(default_factory=dict)
    response_format: ResponseFormat | None = None
    choices: tuple[str, ...] | None = None

    def violation(self, text: str, finish_reason: str) -> str | None:
        """Why ``text`` (ended for ``finish_reason``) cannot come from a server that enforced this, or None."""
        return violation(text, finish_reason, self.response_format, self.choices)


def label_choices(fmt: ResponseFormat) -> tuple[str, ...]:
    """The whole answers of a label-only run: one label line per label (single-label tasks only).

    Raises:
        MentalGLMError: the task is not single-label (its label lines are combinations, not a short list).
    """
    if fmt.kind != "single-label":
        raise MentalGLMError(f"openai backend option answer=label needs a single-label task; this one is {fmt.kind} "
                             "(use answer=full)")
    return tuple(fmt.label_line([label]) for label in fmt.labels)


def choice_gbnf(choices: Sequence[str]) -> str:
    """A GBNF grammar whose language is exactly ``choices`` (llama.cpp's form of vLLM's ``choice``)."""
    def literal(text: str) -> str:
        return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'

    return "root ::= " + " | ".join(literal(c) for c in choices) + "\n"


def constraint(dialect: str, fmt: ResponseFormat, *, label_only: bool = False,
               grammar_field: str | None = None) -> Constraint:
    """The constraint fields of one request in ``dialect``.

    vLLM gets ``structured_outputs.grammar`` (the task's GBNF, compiled by xgrammar) or, for
    label-only answers, ``structured_outputs.choice``; the llama.cpp servers get ``grammar``;
    ``grammar_field`` (the deprecated option) puts the GBNF under any name.

    Raises:
        ConstraintUnsupported: ``dialect`` is ``openai``: a plain OpenAI ``/completions`` endpoint
            takes no grammar, and forcing JSON instead (``response_format`` exists only for chat)
            would make MentalGLM write a format it was never trained on.
        MentalGLMError: ``label_only`` for a task that is not single-label.
    """
    choices = label_choices(fmt) if label_only else None
    grammar = choice_gbnf(choices) if choices else fmt.gbnf()
    if grammar_field:
        return Constraint(grammar_field, {grammar_field: grammar}, fmt, choices)
    if dialect == "vllm":
        kind, value = ("choice", list(choices)) if choices else ("grammar", grammar)
        return Constraint(f"structured_outputs.{kind}", {"structured_outputs": {kind: value}}, fmt, choices)
    if dialect == "llama.cpp":
        return Constraint("grammar", {"grammar": grammar}, fmt, choices)
    raise ConstraintUnsupported("plain OpenAI /completions takes no grammar")


def violation(text: str, finish_reason: str, fmt: ResponseFormat | None,
              choices: Sequence[str] | None = None) -> str | None:
    """Why ``text`` cannot be a constrained answer, or None when it can.

    An answer cut by the token budget (``finish_reason == "length"``) need only be a prefix of a
    valid one; an answer that stopped must have reached the free explanation (full answers) or be
    one of ``choices`` (label-only answers).
    """
    cut = finish_reason == "length"
    if cut:
        # A budget cut can split a character; servers show its bytes as U+FFFD.
        text = text.rstrip("\ufffd")
    if choices is not None:
        if text in choices or (cut and any(c.startswith(text) for c in choices)):
            return None
        return "is not one of the allowed label lines"
    if fmt is None:
        return None
    data = text.encode("utf-8")
    if not fmt.allows(data):
        return "is outside the answer grammar"
    if not cut and not fmt.in_free_text(data):
        return "stopped before the explanation"
    return None


# -- other dialect-specific fields ----------------------------------------------------------------
def penalty_field(dialect: str) -> str:
    """The name of the repetition penalty: vLLM's ``repetition_penalty``, else llama.cpp's ``repeat_penalty``."""
    return "repetition_penalty" if dialect == "vllm" else "repeat_penalty"


def stop_token_texts() -> tuple[str, ...]:
    """The GLM-4 tokens generation ends at, whose ids vLLM needs as ``stop_token_ids``.

    vLLM drops special tokens from the text it returns, so the stop *strings* ``<|user|>``…
    never match there; only the ids stop it (a model whose ``generation_config.json`` lists
    them stops anyway, one served without it does not).
    """
    return GLM4_STOP_TOKENS


#: llama-cpp-python's server loses token pieces longer than 32 bytes (its detokenize buffer): with a real
#: 151k vocabulary, whose tokens reach eleven Chinese characters and more, answers lose text.
LONG_PIECES = ("llama-cpp-python's server drops token pieces longer than 32 bytes (tokens of eleven or more "
               "Chinese characters, which MentalGLM's 151k vocabulary has), so its answers can lose text; serve "
               "the GGUF with llama.cpp's own llama-server or with vLLM instead")


def advice(info: ServerInfo, sent_as: str) -> str:
    """What to change when a server did not enforce a constraint sent as ``sent_as``."""
    detected = info.detected_dialect
    if detected and detected != info.dialect:
        return (f"this server looks like {info.describe()}, which takes constraints in {_OWN_FIELD[detected]}: "
                f"set server={detected} or server=auto")
    dialect = detected or info.dialect
    if dialect in _OWN_FIELD and sent_as.split(".")[0] != _OWN_FIELD[dialect]:  # grammar_field put it elsewhere
        return (f"{info.describe()} takes constraints in {_OWN_FIELD[dialect]}, not {sent_as}: drop grammar_field "
                f"(deprecated) and set server={dialect} or server=auto")
    if info.engine == "llama-cpp-python":
        return LONG_PIECES
    if info.dialect == "vllm":
        return ("vLLM 0.12+ reads only structured_outputs; check the server's structured-outputs backend and its log, "
                "or set constrained=false to run unconstrained (answers are then parsed as they come)")
    return "set server=vllm or server=llama.cpp to match the engine, or constrained=false to run unconstrained"
