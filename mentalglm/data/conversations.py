"""Fine-tuning conversations as records: OpenAI chat ``messages`` and ShareGPT / LLaMA-Factory ``conversations``.

Only single-turn conversations are records of these tasks: an optional system turn (the
instruction), one user turn (the post) and at most one assistant turn after it (the gold answer).
A longer conversation is refused rather than cut, because which turn is "the post" would be a guess.

ShareGPT files put the system message either in a top-level ``system`` field (LLaMA-Factory) or
as a ``{"from": "system"}`` turn; both are the instruction. Without one, the whole user turn is the
post and the task's own instruction is used (the user turn may then hold an instruction too —
``mentalglm data inspect`` says so).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mentalglm.core.errors import DataError

#: ShareGPT speaker names → chat roles (LLaMA-Factory's defaults and the common variants).
SHAREGPT_ROLES = {"system": "system", "human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                  "bot": "assistant", "chatgpt": "assistant", "model": "assistant"}


@dataclass(frozen=True)
class Turns:
    """The parts of a single-turn conversation.

    Attributes:
        instruction: the system turn, or None when there is none.
        post: the user turn.
        answer: the assistant turn, or None when the conversation ends with the user.
        post_field: where the post is (``messages[1].content``), for error messages.
        answer_field: where the answer is.
    """

    instruction: str | None
    post: str
    answer: str | None
    post_field: str
    answer_field: str | None


def _content(path: Path, line: int, field: str, value: Any) -> str:
    if isinstance(value, str):
        return value
    # The chat API also allows a list of parts: [{"type": "text", "text": "…"}].
    if isinstance(value, list) and all(isinstance(p, dict) and p.get("type") == "text"
                                       and isinstance(p.get("text"), str) for p in value):
        return "".join(p["text"] for p in value)
    raise DataError(path, line, field, f"expected a string, got {type(value).__name__}")


def single_turn(path: Path, line: int, obj: dict, key: str) -> Turns:
    """The single turn of a ``messages`` (``key="messages"``) or ``conversations`` conversation.

    Raises:
        DataError: not a list of turn objects, an unknown role, several user or assistant turns,
            an answer before the post, an empty post — naming the file, line and turn.
    """
    turns = obj.get(key)
    if not isinstance(turns, list) or not turns:
        raise DataError(path, line, key, "expected a non-empty list of turns")
    sharegpt = key != "messages"
    role_key, text_key = ("from", "value") if sharegpt else ("role", "content")
    system = obj.get("system") if sharegpt else None
    if system is not None and not isinstance(system, str):
        raise DataError(path, line, "system", f"expected a string, got {type(system).__name__}")
    instruction = system if system and system.strip() else None
    post = answer = None
    post_field = answer_field = None
    for index, turn in enumerate(turns):
        where = f"{key}[{index}]"
        if not isinstance(turn, dict):
            raise DataError(path, line, where, f"expected a turn object, got {type(turn).__name__}")
        speaker = turn.get(role_key)
        role = SHAREGPT_ROLES.get(speaker) if sharegpt else speaker
        if role not in ("system", "user", "assistant"):
            known = "human, gpt, system" if sharegpt else "system, user, assistant"
            raise DataError(path, line, f"{where}.{role_key}", f"unknown speaker {speaker!r} (expected {known})")
        text = _content(path, line, f"{where}.{text_key}", turn.get(text_key))
        if role == "system":
            if post is not None or (instruction is not None and system is None):
                raise DataError(path, line, where, "a system turn after the conversation started, or a second one")
            instruction = text if text.strip() else None
        elif role == "user":
            if post is not None:
                raise DataError(path, line, where, "a second user turn: only single-turn conversations "
                                "(system, user, assistant) are records of a task")
            post, post_field = text, f"{where}.{text_key}"
        else:
            if post is None:
                raise DataError(path, line, where, "an assistant turn before the user turn")
            if answer is not None:
                raise DataError(path, line, where, "a second assistant turn: only single-turn conversations "
                                "(system, user, assistant) are records of a task")
            answer, answer_field = text, f"{where}.{text_key}"
    if post is None:
        raise DataError(path, line, key, "no user turn (the post)")
    if not post.strip():
        raise DataError(path, line, post_field, "empty")
    return Turns(instruction, post, answer, post_field, answer_field)
