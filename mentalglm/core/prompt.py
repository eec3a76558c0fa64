"""Prompt styles: how a task's instruction and a post become the exact text a model reads."""

from __future__ import annotations

import re
from dataclasses import dataclass

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


@dataclass(frozen=True)
class PromptStyle:
    """A way to turn (instruction, post) into model input.

    The user turn is ``instruction + "\\n" + post`` — how C-IMHI's instruction/input pairs are
    joined for fine-tuning — wrapped by the style's template.

    Args:
        name: short name for ``--prompt``.
        description: one line for ``mentalglm plugins``.
        template: the input text with ``{content}`` where the user turn goes.
        system_template: text put before ``template`` when a system message is given, with
            ``{system}`` for it; empty when the style has no system turn.
        stop: strings that end generation (chat turn markers).
        prefix: the part of ``template`` before ``{content}`` that the model's tokenizer may
            add by itself (``[gMASK]<sop>`` for GLM-4), so backends can avoid adding it twice.

    Example:
        >>> GLM4_CHAT.render("判断帖子。", "好累")
        '[gMASK]<sop><|user|>\\n判断帖子。\\n好累<|assistant|>\\n'
    """

    name: str
    description: str
    template: str
    system_template: str = ""
    stop: tuple[str, ...] = ()
    prefix: str = ""

    def __post_init__(self):
        if not _NAME.match(self.name):
            raise ValueError(f"prompt style name {self.name!r} must be letters, digits, '-', '_' or '.'")
        if "{content}" not in self.template:
            raise ValueError(f"prompt style {self.name!r}: template lacks '{{content}}'")

    def content(self, instruction: str, post: str) -> str:
        """The user turn: the instruction, a new line, the post."""
        return f"{instruction}\n{post}" if instruction else post

    def render(self, instruction: str, post: str, system: str | None = None) -> str:
        """The exact model input for one post (byte for byte what the backend receives)."""
        body = self.template.replace("{content}", self.content(instruction, post))
        if system:
            if not self.system_template:
                raise ValueError(f"prompt style {self.name!r} has no system turn")
            head, _, tail = body.partition(self.prefix) if self.prefix else ("", "", body)
            return head + self.prefix + self.system_template.replace("{system}", system) + tail
        return body


#: GLM-4 chat: ``[gMASK]<sop><|user|>\n{content}<|assistant|>\n``; stops at the next turn marker.
GLM4_CHAT = PromptStyle(
    name="glm4-chat",
    description="GLM-4 chat template ([gMASK]<sop><|user|>…<|assistant|>), as MentalGLM-chat was tuned",
    template="[gMASK]<sop><|user|>\n{content}<|assistant|>\n",
    system_template="<|system|>\n{system}",
    stop=("<|user|>", "<|endoftext|>", "<|observation|>"),
    prefix="[gMASK]<sop>",
)

#: Plain text for base (non-chat) models: the user turn and a new line.
PLAIN = PromptStyle(
    name="plain",
    description="Instruction and post as plain text, for base (non-chat) models",
    template="{content}\n",
)
