"""Built-in prompt styles: ``glm4-chat`` (MentalGLM-chat), ``plain`` (base models), ``auto`` (the model's
template), ``server`` (the server's template) and the named chat families (chatml, qwen, llama-3, gemma)."""

from __future__ import annotations

from mentalglm.core.hookspecs import hookimpl
from mentalglm.core.prompt import AUTO, GLM4_CHAT, NAMED_STYLES, PLAIN, SERVER


@hookimpl
def register_prompts(register):
    """Register the GLM-4 chat template, the plain style, ``auto``, ``server`` and the named chat families."""
    register(GLM4_CHAT)
    register(PLAIN)
    register(AUTO)
    register(SERVER)
    for style in NAMED_STYLES:
        register(style)
