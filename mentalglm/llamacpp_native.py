"""llama_cpp with its C-level logs routed to Python logging, so they stay off stderr by default.

llama.cpp prints model-loading and quantization chatter from C; ``verbose=False`` does not
silence all of it. Installing one log callback sends every line to the ``mentalglm.llama_cpp``
logger: errors at WARNING, warnings at INFO (``mentalglm -v``), the rest at DEBUG (``-vv``).
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
from typing import Iterator

log = logging.getLogger("mentalglm.llama_cpp")
_callback = None  # kept referenced: llama.cpp holds a raw pointer to it
#: ggml_log_level: NONE 0, DEBUG 1, INFO 2, WARN 3, ERROR 4, CONT 5 (continues the previous line).
_LEVELS = {4: logging.WARNING, 3: logging.INFO}
_previous = [logging.DEBUG]


def load_llama_cpp():
    """Import llama_cpp (once) with the quiet log callback installed.

    Raises:
        MentalGLMError: llama-cpp-python is not installed.
    """
    global _callback
    try:
        import llama_cpp
    except ImportError:
        from mentalglm.core.errors import MentalGLMError

        raise MentalGLMError("llama-cpp-python is not installed: pip install 'mentalglm[llamacpp]'") from None
    if _callback is None:
        @llama_cpp.llama_log_callback
        def _route(level: int, text: bytes, user_data) -> None:
            python_level = _previous[0] if level == 5 else _LEVELS.get(level, logging.DEBUG)
            _previous[0] = python_level
            message = text.decode("utf-8", "replace").rstrip()
            if message:
                log.log(python_level, "%s", message)

        _callback = _route
        llama_cpp.llama_log_set(_callback, ctypes.c_void_p(0))
    return llama_cpp


@contextlib.contextmanager
def llama_cpp_quiet() -> Iterator:
    """Context giving the llama_cpp module with quiet logs (the callback stays installed)."""
    yield load_llama_cpp()
