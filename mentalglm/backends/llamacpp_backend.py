"""The ``llamacpp`` backend: GGUF models through llama-cpp-python, on CPU or with CUDA offload.

- Offload: ``n_gpu_layers`` (a count, or -1 for all) or ``gpu_memory`` (``6GiB``), from which
  the layer count is computed with the file's own tensor sizes and the KV cache at ``n_ctx``.
- Grammar-constrained output: the task's answer format as GBNF, so labels are always valid;
  the explanation is free text bounded by ``max_new_tokens``.
- Prompt-prefix reuse: consecutive prompts share the task instruction, and llama.cpp's KV cache
  keeps it: only the new part of each prompt is evaluated (``prefix_cache=false`` turns it off).
- llama.cpp's C logs go to Python logging (``mentalglm -vv`` shows them), native memory is
  freed by :meth:`close`.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Literal, Sequence

import numpy as np
from pydantic import Field

from mentalglm.backends.llamacpp_native import end_of_generation, last_logits, open_llama
from mentalglm.core.backend import Backend, BackendOptions, Completion, GenerationRequest
from mentalglm.core.errors import MentalGLMError, OptionsError
from mentalglm.core.threads import default_threads

log = logging.getLogger(__name__)

_CACHE_TYPES = {"f32": 0, "f16": 1, "q8_0": 8}


class LlamaCppOptions(BackendOptions):
    """Options of the llamacpp backend, grouped by concern."""

    # where the model runs
    n_gpu_layers: int = Field(0, description="layers to offload to the GPU; -1 = all (needs a CUDA build)")
    gpu_memory: str | None = Field(None, description="GPU-memory budget such as 6GiB; picks n_gpu_layers itself")
    n_threads: int | None = Field(None, description="CPU threads (default: free physical cores, see below)")
    extra_buffers: bool | None = Field(None, description="llama.cpp's repacked CPU weight buffers (AMX/AVX); "
                                       "default: off where the CPU advertises AMX, which crashes some VMs")
    # context and batching
    n_ctx: int = Field(4096, description="context window in tokens (prompt + answer)")
    n_batch: int = Field(512, description="prompt tokens evaluated per step")
    flash_attn: bool = Field(False, description="use flash attention")
    cache_type: Literal["f16", "f32", "q8_0"] = Field("f16", description="KV-cache type")
    prefix_cache: bool = Field(True, description="reuse the evaluated shared prompt prefix between posts")
    # decoding
    constrained: bool = Field(True, description="decode only answers in the task's format (GBNF grammar)")
    temperature: float = Field(0.0, description="0 = greedy")
    top_p: float = Field(1.0, description="nucleus sampling when temperature > 0")


class LlamaCppBackend(Backend):
    """Runs a GGUF model with llama.cpp.

    Args:
        model: path of a ``.gguf`` file (``mentalglm export`` writes one).
        options: :class:`LlamaCppOptions` or a mapping.

    Raises:
        MentalGLMError: llama-cpp-python missing, the file missing or not loadable.
        OptionsError: both ``n_gpu_layers`` and ``gpu_memory``, or a bad memory size.

    Example:
        >>> with LlamaCppBackend("mentalglm-q4_k_m.gguf", {"gpu_memory": "6GiB"}) as backend:  # doctest: +SKIP
        ...     print(backend.offloaded_layers, "of", backend.total_layers, "layers on the GPU")
    """

    name = "llamacpp"
    description = "GGUF models with llama.cpp (CPU or CUDA offload), grammar-constrained, prefix reuse"
    Options = LlamaCppOptions
    capabilities = frozenset({"generate", "score_labels"})

    def __init__(self, model: str | None = None, options=None):
        super().__init__(model, options)
        from mentalglm.backends.llamacpp_native import load_llama_cpp

        llama_cpp = load_llama_cpp()
        path = Path(model)
        if not path.is_file():
            raise MentalGLMError(f"{path}: no such GGUF file")
        opts = self.options
        n_gpu_layers = self._gpu_layers(path, llama_cpp)
        cache = _CACHE_TYPES[opts.cache_type]
        # Not every logical core: hyper-threads and busy cores slow llama.cpp down (core/threads.py).
        threads = opts.n_threads or default_threads()
        log.info("llamacpp: %d CPU threads", threads)
        try:
            self.llm = open_llama(
                path, extra_buffers=opts.extra_buffers, n_gpu_layers=n_gpu_layers, n_ctx=opts.n_ctx,
                n_batch=opts.n_batch, n_threads=threads, n_threads_batch=threads, flash_attn=opts.flash_attn,
                type_k=cache, type_v=cache, seed=opts.seed)
        except ValueError as exc:  # llama-cpp-python reports load failures as ValueError
            raise MentalGLMError(f"{path}: llama.cpp could not load it ({exc})") from None
        self._llama_cpp = llama_cpp
        self._grammars: dict = {}
        self._recent_tokens: dict[tuple[str, bool], list[int]] = {}
        metadata = self.llm.metadata or {}
        self.total_layers = int(metadata.get(f"{metadata.get('general.architecture')}.block_count", 0))
        can_offload = bool(llama_cpp.llama_supports_gpu_offload())
        wanted = self.total_layers + 1 if n_gpu_layers < 0 else n_gpu_layers
        self.offloaded_layers = min(wanted, self.total_layers + 1) if can_offload else 0
        log.info("llamacpp: %s loaded, %d of %d layers offloaded to the GPU%s", path.name,
                 min(self.offloaded_layers, self.total_layers), self.total_layers,
                 "" if can_offload or not wanted else " (this llama-cpp-python build has no GPU support)")

    def _gpu_layers(self, path: Path, llama_cpp) -> int:
        opts = self.options
        if opts.gpu_memory is None:
            return opts.n_gpu_layers
        if opts.n_gpu_layers != 0:
            raise OptionsError("backend 'llamacpp': give n_gpu_layers or gpu_memory, not both")
        from mentalglm.backends.gpu_budget import layer_costs, parse_bytes

        budget = parse_bytes(opts.gpu_memory)
        kv_bytes = 4 if opts.cache_type == "f32" else 2
        layers = layer_costs(path, opts.n_ctx, kv_bytes).layers_that_fit(budget)
        log.info("llamacpp: %s of GPU memory fits %d layers at n_ctx=%d", opts.gpu_memory, layers, opts.n_ctx)
        return layers

    # -- tokens ------------------------------------------------------------------------------
    def _tokenize(self, text: str, special: bool = True) -> list[int]:
        # The Analyzer counts a prompt's tokens (to fit the context) right before generating it:
        # remember the last few so each prompt is tokenized once.
        key = (text, special)
        ids = self._recent_tokens.get(key)
        if ids is None:
            ids = self.llm.tokenize(text.encode("utf-8"), add_bos=False, special=special)
            if len(self._recent_tokens) >= 16:
                self._recent_tokens.pop(next(iter(self._recent_tokens)))
            self._recent_tokens[key] = ids
        return list(ids)

    def token_count(self, text: str) -> int:
        """Tokens in ``text`` with special tokens parsed (GLM-4 prompts carry ``[gMASK]<sop>``)."""
        return len(self._tokenize(text))

    @property
    def context_length(self) -> int:
        """The context window llama.cpp was opened with."""
        return self.llm.n_ctx()

    # -- generation --------------------------------------------------------------------------
    def _grammar(self, response_format):
        key = response_format.gbnf()
        if key not in self._grammars:
            self._grammars[key] = self._llama_cpp.LlamaGrammar.from_string(key, verbose=False)
        return self._grammars[key]

    def generate(self, requests: Sequence[GenerationRequest]) -> list[Completion]:
        """Complete each prompt in turn (llama.cpp decodes one sequence; the shared prefix is reused)."""
        return [self._complete(request) for request in requests]

    def _complete(self, request: GenerationRequest) -> Completion:
        # Our own token loop rather than create_completion: that one drops control tokens and
        # invalid UTF-8 from the text and runs past max_tokens to finish a character, so the
        # same tokens would read differently from the torch backend's answer.
        opts = self.options
        if not opts.prefix_cache:
            self.llm.reset()
        tokens = self._tokenize(request.prompt)
        grammar = self._grammar(request.response_format) if opts.constrained and request.response_format else None
        budget = request.max_new_tokens if request.max_new_tokens is not None else opts.max_new_tokens
        self.llm.set_seed(opts.seed)
        is_end = end_of_generation(self.llm)
        generated: list[int] = []
        finish, text = "length", ""
        stops = [s for s in request.stop if s]
        if budget > 0:
            for token in self.llm.generate(tokens, top_k=0, top_p=opts.top_p, min_p=0.0, temp=opts.temperature,
                                           repeat_penalty=1.0, grammar=grammar):
                if is_end(token):
                    finish = "stop"
                    break
                generated.append(token)
                if stops:
                    text = self._detokenize(generated)
                    if any(stop in text for stop in stops):
                        finish = "stop"
                        break
                if len(generated) >= budget:
                    break
        text = self._detokenize(generated)
        cuts = [text.find(stop) for stop in stops if stop in text]
        if cuts:
            text = text[: min(cuts)]
        return Completion(request.id, text, {"prompt_tokens": len(tokens), "completion_tokens": len(generated)}, finish)

    def _detokenize(self, ids: list[int]) -> str:
        """Token ids → text as transformers decodes them (control tokens kept, broken UTF-8 as U+FFFD)."""
        return self.llm.detokenize(ids, special=True).decode("utf-8", "replace")

    def score_labels(self, prompt: str, candidates: Sequence[str]) -> list[float]:
        """Summed log-probabilities of each candidate's tokens after ``prompt``, reusing the prompt's KV cache."""
        prompt_ids = self._tokenize(prompt)
        self._evaluate(prompt_ids)
        first = _log_softmax(self._last_logits())
        scores = []
        for candidate in candidates:
            ids = self._tokenize(candidate, special=False)
            total = float(first[ids[0]])
            self.llm.n_tokens = len(prompt_ids)  # drop the previous candidate, keep the prompt
            for previous, token in zip(ids, ids[1:]):
                self.llm.eval([previous])
                total += float(_log_softmax(self._last_logits())[token])
            scores.append(total)
        return scores

    def _evaluate(self, ids: list[int]) -> None:
        """Bring the KV cache to exactly ``ids``, re-evaluating only what differs from what it holds."""
        held = list(self.llm.input_ids[: self.llm.n_tokens]) if self.options.prefix_cache else []
        common = 0
        for a, b in zip(held, ids):
            if a != b:
                break
            common += 1
        common = min(common, len(ids) - 1)  # the last prompt token must be evaluated for its logits
        self.llm.n_tokens = common
        self.llm.eval(ids[common:])

    def _last_logits(self) -> np.ndarray:
        return last_logits(self.llm)

    def close(self) -> None:
        """Free the model and its context (native memory)."""
        llm = getattr(self, "llm", None)
        if llm is not None:
            llm.close()
            self.llm = None


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max()
    return shifted - np.log(np.exp(shifted).sum())
