"""Built-in prompt styles: ``glm4-chat`` (MentalGLM-chat), ``plain`` (base models), ``auto`` (the model's template)."""

from __future__ import annotations

from mentalglm.core.hookspecs import hookimpl
from mentalglm.core.prompt import AUTO, GLM4_CHAT, PLAIN


@hookimpl
def register_prompts(register):
    """Register the GLM-4 chat template, the plain style and ``auto``."""
    register(GLM4_CHAT)
    register(PLAIN)
    register(AUTO)
