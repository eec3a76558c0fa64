"""The one place that touches llama-cpp-python below its public high-level API.

llama_cpp with its C-level logs routed to Python logging, so they stay off stderr by default;
``Llama`` objects opened with the model parameters its constructor does not expose; and the
few reads of a ``Llama`` object's internals the backend needs (the vocabulary handle for
end-of-generation tokens, the last row of logits). When llama-cpp-python renames them, only
this module changes.

llama.cpp prints model-loading and quantization chatter from C; ``verbose=False`` does not
silence all of it. Installing one log callback sends every line to the ``mentalglm.llama_cpp``
logger: errors at WARNING, warnings at INFO (``mentalglm -v``), the rest at DEBUG (``-vv``).
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

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


def end_of_generation(llm) -> Callable[[int], bool]:
    """A test for ``llm``'s end-of-generation tokens (GLM-4: ``<|endoftext|>``, ``<|user|>``, ``<|observation|>``)."""
    llama_cpp = load_llama_cpp()
    vocab = llm._model.vocab  # private: llama-cpp-python exposes no public vocab handle
    return lambda token: bool(llama_cpp.llama_vocab_is_eog(vocab, token))


def last_logits(llm) -> np.ndarray:
    """The logits after the last evaluated token, as float64.

    Without ``logits_all`` llama-cpp-python keeps no scores of its own, so the row is read
    from the context directly.
    """
    pointer = load_llama_cpp().llama_get_logits_ith(llm.ctx, -1)
    return np.ctypeslib.as_array(pointer, shape=(llm.n_vocab(),)).astype(np.float64)


def cpu_advertises_amx(cpuinfo: str | None = None) -> bool:
    """Whether the CPU flags list Intel AMX tiles (``amx_tile`` in ``/proc/cpuinfo``)."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
        except OSError:
            return False
    return any(line.startswith("flags") and " amx_tile" in line for line in cpuinfo.splitlines())


def default_extra_buffers() -> bool:
    """Whether to let llama.cpp repack weights into its extra CPU buffer types (AMX, AVX repack).

    Off where the CPU advertises AMX: on such virtual machines (seen on a 2-core Xeon guest
    whose kernel grants the AMX permission) llama.cpp's AMX matmul dies with SIGILL on
    ``tilezero`` for q8_0 weights, taking the whole process down. Without extra buffers the
    same weights run on the plain AVX-512 kernels; ``-O extra_buffers=true`` turns them back on
    where AMX works.
    """
    return not cpu_advertises_amx()


@contextlib.contextmanager
def _model_params(**fields) -> Iterator[None]:
    # Llama() builds its llama_model_params from llama_model_default_params() and exposes only
    # some fields; for the others, the defaults are amended for the duration of one load.
    module = load_llama_cpp().llama_cpp
    original = module.llama_model_default_params

    def amended():
        params = original()
        for name, value in fields.items():
            setattr(params, name, value)
        return params

    module.llama_model_default_params = amended
    try:
        yield
    finally:
        module.llama_model_default_params = original


def open_llama(path, *, extra_buffers: bool | None = None, **kwargs):
    """A ``llama_cpp.Llama`` for ``path`` with quiet logs and a safe choice of weight buffers.

    Args:
        path: the GGUF file.
        extra_buffers: allow llama.cpp's extra CPU buffer types (None: :func:`default_extra_buffers`).
        **kwargs: passed to ``llama_cpp.Llama``.
    """
    llama_cpp = load_llama_cpp()
    extra = default_extra_buffers() if extra_buffers is None else extra_buffers
    kwargs.setdefault("verbose", False)
    with _model_params(use_extra_bufts=extra):
        return llama_cpp.Llama(str(path), **kwargs)
