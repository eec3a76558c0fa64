"""Built-in prompt styles: ``glm4-chat`` (MentalGLM-chat) and ``plain`` (base models)."""

from __future__ import annotations

from mentalglm.core.hookspecs import hookimpl
from mentalglm.core.prompt import GLM4_CHAT, PLAIN


@hookimpl
def register_prompts(register):
    """Register the GLM-4 chat template and the plain style."""
    register(GLM4_CHAT)
    register(PLAIN)
