"""Prompt styles: how a task's instruction and a post become the exact text a model reads."""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

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
        prefix: the part of ``template`` that stays before the system turn when one is given
            (``[gMASK]<sop>`` for GLM-4; Gemma, which has no system turn, puts the system text at
            the head of the user turn).
        default_system: the system text used when none is given (Qwen2.5's chat template has one).
        trim: strip white space around the user turn and the system text, as the Llama 3 and
            Gemma chat templates (and llama.cpp's renderings of them) do.

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
    default_system: str = ""
    trim: bool = False

    def __post_init__(self):
        if not _NAME.match(self.name):
            raise ValueError(f"prompt style name {self.name!r} must be letters, digits, '-', '_' or '.'")
        if "{content}" not in self.template:
            raise ValueError(f"prompt style {self.name!r}: template lacks '{{content}}'")

    def content(self, instruction: str, post: str) -> str:
        """The user turn: the instruction, a new line, the post."""
        content = f"{instruction}\n{post}" if instruction else post
        return content.strip() if self.trim else content

    def render(self, instruction: str, post: str, system: str | None = None) -> str:
        """The exact model input for one post (byte for byte what the backend receives)."""
        body = self.template.replace("{content}", self.content(instruction, post))
        system = system or self.default_system
        if system and self.trim:
            system = system.strip()
        if system:
            if not self.system_template:
                raise ValueError(f"prompt style {self.name!r} has no system turn")
            head, _, tail = body.partition(self.prefix) if self.prefix else ("", "", body)
            return head + self.prefix + self.system_template.replace("{system}", system) + tail
        return body

    def messages(self, instruction: str, post: str, system: str | None = None) -> list[dict]:
        """The chat turns of one post: the system message (when given) and the user turn."""
        system = system or self.default_system
        return ([{"role": "system", "content": system}] if system else []) + [
            {"role": "user", "content": self.content(instruction, post)}]


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

# -- named styles of the common chat families, for models whose GGUF or tokenizer has no template ---
# They write no BOS token: backends add it as the model asks (llama.cpp's own renderings of these
# templates, which the tests compare against, leave it to the tokenizer too).

#: ChatML (SmolLM2, Qwen, many fine-tunes): ``<|im_start|>user\n…<|im_end|>\n<|im_start|>assistant\n``.
CHATML = PromptStyle(
    name="chatml",
    description="ChatML (<|im_start|>user … <|im_end|>), as SmolLM2, Qwen and many fine-tunes were tuned",
    template="<|im_start|>user\n{content}<|im_end|>\n<|im_start|>assistant\n",
    system_template="<|im_start|>system\n{system}<|im_end|>\n",
    stop=("<|im_end|>",),
)

#: Qwen2.5-Instruct: ChatML with the system message its template adds when none is given.
QWEN = PromptStyle(
    name="qwen",
    description="Qwen2.5-Instruct: ChatML with Qwen's default system message when --system is not given",
    template=CHATML.template, system_template=CHATML.system_template, stop=CHATML.stop,
    default_system="You are Qwen, created by Alibaba Cloud. You are a helpful assistant.",
)

#: Llama 3 instruct: header-delimited turns ending in ``<|eot_id|>``, turns trimmed.
LLAMA3 = PromptStyle(
    name="llama-3",
    description="Llama 3 instruct (<|start_header_id|>user<|end_header_id|> … <|eot_id|>)",
    template="<|start_header_id|>user<|end_header_id|>\n\n{content}<|eot_id|>"
             "<|start_header_id|>assistant<|end_header_id|>\n\n",
    system_template="<|start_header_id|>system<|end_header_id|>\n\n{system}<|eot_id|>",
    stop=("<|eot_id|>",), trim=True,
)

#: Gemma instruct: ``<start_of_turn>user`` … ``<start_of_turn>model``; no system turn, so a system
#: text opens the user turn, followed by a blank line.
GEMMA = PromptStyle(
    name="gemma",
    description="Gemma instruct (<start_of_turn>user … <start_of_turn>model); --system opens the user turn",
    template="<start_of_turn>user\n{content}<end_of_turn>\n<start_of_turn>model\n",
    system_template="{system}\n\n", prefix="<start_of_turn>user\n",
    stop=("<end_of_turn>",), trim=True,
)

#: The named styles, in the order ``mentalglm plugins`` lists them.
NAMED_STYLES = (CHATML, QWEN, LLAMA3, GEMMA)


# -- the model's own chat template (--prompt auto) -------------------------------------------------
#: Stand-ins rendered through a chat template and then replaced: the template may wrap or trim the
#: content, never rewrite text it cannot see.
_CONTENT, _SYSTEM = "\x00mentalglm-content\x00", "\x00mentalglm-system\x00"


@dataclass(frozen=True)
class ChatTemplate:
    """A model's own chat template: Jinja2 text as transformers reads it, and the special tokens it may name.

    Args:
        text: the template (GGUF ``tokenizer.chat_template``; HF ``tokenizer_config.json`` /
            ``chat_template.jinja``).
        source: where it was read, for messages (``model.gguf``, a model folder).
        bos_token, eos_token: the strings ``{{ bos_token }}`` and ``{{ eos_token }}`` render to.
    """

    text: str
    source: str
    bos_token: str = ""
    eos_token: str = ""


class ChatTemplateError(ValueError):
    """A chat template failed to render (a syntax error, or the template's own ``raise_exception``)."""


def render_chat_template(template: ChatTemplate, messages: list[dict], *, add_generation_prompt: bool = True) -> str:
    """Render ``messages`` through ``template`` as transformers' ``apply_chat_template`` renders them.

    The same Jinja2 environment: sandboxed (a template cannot reach Python objects),
    ``trim_blocks`` and ``lstrip_blocks``, loop controls, the ``raise_exception`` and
    ``strftime_now`` globals and a ``tojson`` that keeps non-ASCII text.

    Raises:
        ChatTemplateError: the template does not compile or refuses the messages.
    """
    import jinja2

    try:
        compiled = _compiled(template.text)
        return compiled.render(messages=messages, add_generation_prompt=add_generation_prompt,
                               bos_token=template.bos_token, eos_token=template.eos_token)
    except jinja2.TemplateError as exc:
        raise ChatTemplateError(str(exc).splitlines()[0] if str(exc) else type(exc).__name__) from None


@lru_cache(maxsize=32)
def _compiled(text: str):
    import json
    from datetime import datetime

    import jinja2
    from jinja2.ext import loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message):
        raise jinja2.TemplateError(message)

    def tojson(value, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    environment = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
    environment.filters["tojson"] = tojson
    environment.globals["raise_exception"] = raise_exception
    environment.globals["strftime_now"] = lambda format: datetime.now().strftime(format)
    return environment.from_string(text)


@dataclass(frozen=True)
class ChatTemplatePrompt(PromptStyle):
    """``--prompt auto`` resolved: the model's own chat template renders every post.

    The user turn (instruction and post) is the one user message, ``--system`` the system
    message, and the generation prompt is added. ``template`` holds the rendering of a stand-in
    user turn (what ``mentalglm plugins`` and the run record's prompt digest see).
    """

    chat: ChatTemplate | None = None

    @classmethod
    def from_chat_template(cls, chat: ChatTemplate) -> "ChatTemplatePrompt":
        """The prompt style of ``chat``, checked by rendering it once with and without a system message.

        Raises:
            ChatTemplateError: it does not render.
        """
        bare = render_chat_template(chat, [{"role": "user", "content": _CONTENT}])
        if _CONTENT not in bare:
            raise ChatTemplateError("the rendered template does not contain the user's message")
        try:
            with_system = render_chat_template(chat, [{"role": "system", "content": _SYSTEM},
                                                      {"role": "user", "content": _CONTENT}])
        except ChatTemplateError:  # e.g. Gemma's: no system turn; a --system is refused when rendered
            with_system = ""
        return cls(name="auto", description=f"the chat template of {chat.source}",
                   template=bare.replace(_CONTENT, "{content}"),
                   system_template="{system}" if _SYSTEM in with_system else "",
                   stop=(chat.eos_token,) if chat.eos_token else (), chat=chat)

    @classmethod
    def for_model(cls, chat: ChatTemplate | None, model: str, system: str | None = None) -> "ChatTemplatePrompt":
        """``--prompt auto`` for ``model``: its chat template, checked with ``system`` — or a one-line refusal,
        never a fallback (llama-cpp-python falls back to a llama-2 format without a word).

        Raises:
            MentalGLMError: the model has no template, or it does not render (a system turn it refuses).
        """
        from mentalglm.core.errors import MentalGLMError

        if chat is None:
            raise MentalGLMError(f"{model}: the model has no chat template (GGUF tokenizer.chat_template, "
                                 "tokenizer_config.json); use --prompt plain for a base model, or a named style ("
                                 f"{', '.join(style.name for style in NAMED_STYLES)})")
        try:
            prompt = cls.from_chat_template(chat)
            prompt.render("", "", system)  # a system turn the template refuses fails here, not mid-run
        except ChatTemplateError as exc:
            raise MentalGLMError(f"{model}: its chat template does not render ({exc}); use --prompt plain "
                                 f"or a named style ({', '.join(style.name for style in NAMED_STYLES)})") from None
        return prompt

    def render(self, instruction: str, post: str, system: str | None = None) -> str:
        """The exact model input: the chat template rendered for this post (and system message).

        Raises:
            ChatTemplateError: the template refuses the messages (a system turn it does not have).
        """
        return render_chat_template(self.chat, self.messages(instruction, post, system))


#: ``--prompt auto``: a placeholder the Analyzer replaces by the loaded model's own chat template.
AUTO = PromptStyle(
    name="auto",
    description="the model's own chat template (GGUF tokenizer.chat_template or the HF tokenizer's), rendered "
                "as transformers renders it; refused for a model without one",
    template="{content}",
)


class ServerTemplatePrompt(PromptStyle):
    """``--prompt server``: the server renders each post's chat turns with the template it serves.

    Requests carry :meth:`messages` (``/v1/chat/completions``); :meth:`render` gives those turns as
    JSON — what is sent, and what the run record's prompt digest covers. Only backends that talk
    to a server can honour it (``Backend.render_on_server``).
    """

    def render(self, instruction: str, post: str, system: str | None = None) -> str:
        """The chat turns as JSON (the run record's digest covers them; the server renders the text)."""
        import json

        return json.dumps(self.messages(instruction, post, system), ensure_ascii=False)


#: ``--prompt server``: posts go to the server as chat messages and it applies its own template.
SERVER = ServerTemplatePrompt(
    name="server",
    description="the server's own chat template: the openai backend sends system and user turns as messages "
                "to /v1/chat/completions (the constraint still sent, canaried and checked)",
    template="{content}", system_template="{system}",
)


class PostTextPrompt(PromptStyle):
    """What a backend that classifies the post itself (``reads_posts``: the baseline) receives: the post alone."""

    def render(self, instruction: str, post: str, system: str | None = None) -> str:
        """The post text, without instruction or template."""
        return post


#: Chosen by the Analyzer for ``reads_posts`` backends, never by ``--prompt`` (not registered).
POST_TEXT = PostTextPrompt(name="post", description="the post text alone, for backends that classify the post "
                                                    "itself (baseline)", template="{content}")
