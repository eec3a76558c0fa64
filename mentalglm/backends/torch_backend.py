"""The ``torch`` backend: transformers causal LMs (HF-native GLM-4 and any other) with optional peft LoRA.

Prompts arrive fully rendered (GLM-4 prompts already start with ``[gMASK]<sop>``), so they are
tokenized without added special tokens and generated in left-padded batches. Constrained
decoding keeps, at every step, only tokens whose UTF-8 bytes extend the answer so far to a
prefix of the task's answer format (:meth:`ResponseFormat.allows`) — the same language
llama.cpp gets as a GBNF grammar — and rejects byte sequences llama.cpp's grammar engine
rejects (invalid UTF-8, NUL), so greedy decoding picks the same tokens in both backends.

torch, transformers and peft are imported only when a model is loaded, so ``mentalglm
backends`` can list this backend and its options without them.

Example:
    >>> from mentalglm import get_plugin_manager
    >>> from mentalglm.core.backend import GenerationRequest
    >>> pm = get_plugin_manager()
    >>> task, style = pm.task("depression"), pm.prompt("glm4-chat")
    >>> request = GenerationRequest(id="1", prompt=style.render(task.instruction, "好累"), stop=style.stop,
    ...                             response_format=task.response_format())
    >>> with TorchBackend("glm-4-9b-chat-hf", {"dtype": "bfloat16"}) as backend:   # doctest: +SKIP
    ...     print(backend.generate([request])[0].text)
"""

from __future__ import annotations

import contextlib
import gc
import inspect
import logging
import re
from pathlib import Path
from typing import Literal, Sequence

from pydantic import Field, field_validator

from mentalglm.backends.grammar_utf8 import TokenBytesIndex, utf8_step
from mentalglm.core.backend import Backend, BackendOptions, Completion, GenerationRequest
from mentalglm.core.errors import MentalGLMError, OptionsError
from mentalglm.core.response_format import ResponseFormat

log = logging.getLogger(__name__)

_DEVICE = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")
#: Best-scoring candidates tested first at each constrained step; sampling keeps the allowed ones
#: among them and masks the rest of the vocabulary.
_SAMPLE_CANDIDATES = 64
#: Tokens tested per chunk when none of the best candidates is allowed.
_SCAN_CHUNK = 4096
#: Options that decide how a model is loaded; meaningless for a model handed over loaded.
_LOAD_OPTIONS = ("device", "dtype", "adapter", "trust_remote_code")


class TorchOptions(BackendOptions):
    """Options of the torch backend."""

    device: str = Field("auto", description="auto (cuda if available, else cpu), cpu, cuda or cuda:N")
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = Field(
        "auto", description="weights dtype: auto (bfloat16 on a CUDA GPU that supports it, else float32), "
                            "float32, float16 or bfloat16")
    adapter: str | None = Field(None, description="directory of a peft LoRA adapter, applied without merging")
    constrained: bool = Field(True, description="decode only answers in the task's format (label line, then "
                                                "free explanation)")
    temperature: float = Field(0.0, ge=0.0, description="sampling temperature; 0 = greedy")
    top_p: float = Field(1.0, gt=0.0, le=1.0, description="nucleus sampling mass (with temperature > 0)")
    trust_remote_code: bool = Field(False, description="run model code shipped in the model directory "
                                                       "(never needed for GLM-4)")

    @field_validator("device")
    @classmethod
    def _check_device(cls, value: str) -> str:
        if not _DEVICE.match(value):
            raise ValueError("expected auto, cpu, cuda or cuda:N")
        return value


class _Row:
    """Decoding state of one sequence under the constraint."""

    __slots__ = ("fmt", "data", "utf8", "free", "done", "may_end")

    def __init__(self, fmt: ResponseFormat | None):
        self.fmt, self.data, self.utf8, self.done = fmt, b"", (0, 0), False
        self.free = fmt is None or fmt.in_free_text(b"")
        # llama.cpp drops its "grammar complete" stack whenever a token completes no character
        # (a lone lead or continuation byte), so the answer cannot end right after such a token.
        self.may_end = True


class ConstrainedLogitsProcessor:
    """A transformers logits processor that keeps each sequence inside its response format.

    A token is allowed when it is not an end-of-generation token, llama.cpp's UTF-8 decoder
    accepts its bytes after the bytes generated so far (:func:`utf8_step`), and either the
    answer has reached the free explanation or ``fmt.allows(generated + token)``.
    End-of-generation tokens are allowed only in the free explanation, and (as in llama.cpp)
    not right after a token that completed no character. Greedy keeps the best allowed token
    (what llama.cpp's greedy sampler picks after its grammar; ties go to the lower id), sampling
    the allowed ones among the top ``_SAMPLE_CANDIDATES`` (or the best allowed one beyond them).
    Before the free text the allowed tokens are found all at once (:meth:`_format_allowed`); in
    it, candidates are tested in descending score order, greedy ranking only the tokens UTF-8
    allows there (:meth:`_utf8_mask`), so a 150k–260k vocabulary is never tested token by token.

    Args:
        formats: one response format per row (None: the row is not constrained).
        prompt_width: columns of the (left-padded) prompt; later columns are generated tokens.
        token_bytes: bytes of each vocabulary id (None for ids without a token).
        eog_ids: ids that end generation.
        greedy: keep only the best allowed token.
        index: the :class:`TokenBytesIndex` of ``token_bytes`` (the backend keeps one per model;
            built here when not given).
    """

    def __init__(self, formats: Sequence[ResponseFormat | None], prompt_width: int,
                 token_bytes: Sequence[bytes | None], eog_ids: set[int], greedy: bool,
                 index: TokenBytesIndex | None = None):
        self.rows = [_Row(fmt) for fmt in formats]
        self.prompt_width, self.token_bytes, self.eog_ids, self.greedy = prompt_width, token_bytes, eog_ids, greedy
        self.index = index or TokenBytesIndex(token_bytes)
        self._seen = 0
        self._utf8_masks: dict = {}  # inside a character or not → the tokens UTF-8 allows there, end tokens too

    def _advance(self, input_ids) -> None:
        generated = input_ids[:, self.prompt_width + self._seen:].tolist()
        for row, new in zip(self.rows, generated):
            for token in new:
                if row.done:
                    break
                if token in self.eog_ids:
                    row.done = True
                    break
                piece = self.token_bytes[token] if token < len(self.token_bytes) else None
                if row.fmt is None or not piece:
                    continue
                value, remain, completed = utf8_step(row.utf8, piece) or (0, 0, 1)
                row.data += piece.split(b"\0", 1)[0]  # what llama.cpp's grammar reads of it
                row.utf8, row.may_end = (value, remain), completed > 0
                row.free = row.free or row.fmt.in_free_text(row.data)
        self._seen = input_ids.shape[1] - self.prompt_width

    def allowed(self, row: _Row, token: int) -> bool:
        """Whether ``token`` may follow the row's answer so far."""
        if token in self.eog_ids:
            return row.free and row.may_end
        piece = self.token_bytes[token] if token < len(self.token_bytes) else None
        if piece is None or utf8_step(row.utf8, piece) is None:
            return False
        return row.free or row.fmt.allows(row.data + piece.split(b"\0", 1)[0])

    def __call__(self, input_ids, scores):
        """Mask disallowed tokens with -inf (transformers' LogitsProcessor protocol).

        Args:
            input_ids: ``(batch, prompt_width + generated)`` token ids.
            scores: ``(batch, vocab)`` next-token scores.

        Returns:
            The masked scores.
        """
        import torch

        self._advance(input_ids)
        scores = scores.clone()
        for index, row in enumerate(self.rows):
            if row.fmt is None or row.done:
                continue  # unconstrained or finished (transformers pads finished rows anyway)
            keep = self._candidates(row, scores[index], torch)
            if not keep and not self.eog_ids:
                continue  # nothing can follow and nothing can end: leave the row as it is
            masked = torch.full_like(scores[index], float("-inf"))
            keep = keep or sorted(self.eog_ids)  # nothing can follow: end the answer
            masked[keep] = scores[index, keep]
            scores[index] = masked
        return scores

    def _utf8_mask(self, row: _Row, row_scores, torch):
        """The tokens UTF-8 allows where the row's decoder stands (end tokens too): :func:`utf8_step`
        refuses every other one, so a greedy search over these alone is exact."""
        inside = row.utf8[1] > 0
        if inside not in self._utf8_masks:
            size = row_scores.shape[0]
            mask = torch.zeros(size, dtype=torch.bool)
            allowed = torch.from_numpy(self.index.utf8_allowed(inside)[:size])
            mask[:len(allowed)] = allowed
            mask[[t for t in self.eog_ids if t < size]] = True
            self._utf8_masks[inside] = mask.to(row_scores.device)
        return self._utf8_masks[inside]

    def _format_allowed(self, row: _Row) -> list[int]:
        """Every token the format allows next while the row is still before its free text.

        The vocabulary's pieces, sorted, are walked as a byte trie from the answer so far: a byte
        prefix the format refuses is never extended (``allows`` is a prefix test, so nothing longer
        can pass either), so the walk visits the few prefixes the answer format can take — not the
        150k–260k tokens a ranking walk would test one by one in Python.
        """
        from bisect import bisect_left

        pieces, ids = self.index.by_piece
        found, stack = [], [(b"", 0, len(pieces))]
        while stack:
            prefix, low, high = stack.pop()
            for byte in range(256):
                child = prefix + bytes([byte])
                start = bisect_left(pieces, child, low, high)
                end = bisect_left(pieces, prefix + bytes([byte + 1]), start, high) if byte < 255 else high
                if start == end or not row.fmt.allows(row.data + child):
                    continue
                if utf8_step(row.utf8, child) is not None:
                    found.extend(ids[i] for i in range(start, end) if pieces[i] == child and ids[i] not in self.eog_ids)
                stack.append((child, start, end))
        return found

    def _candidates(self, row: _Row, row_scores, torch) -> list[int]:
        """The tokens to keep: the best allowed one (greedy) or the allowed ones of the top few (sampling)."""
        if not row.free:  # before the free text only a few tokens fit the format: find them all at once
            allowed = self._format_allowed(row)
            if not allowed:
                return []
            scores = row_scores[allowed].tolist()
            best = min(range(len(allowed)), key=lambda i: (-scores[i], allowed[i]))  # ties: the lower id
            if self.greedy:
                return [allowed[best]]
            count = min(_SAMPLE_CANDIDATES, row_scores.shape[0])
            top = set(torch.topk(row_scores, count).indices.tolist())
            return [t for t in allowed if t in top] or [allowed[best]]
        if self.greedy:  # tokens UTF-8 rules out cannot be the best allowed one: leave them out of the ranking
            row_scores = row_scores.masked_fill(~self._utf8_mask(row, row_scores, torch), float("-inf"))
        count = min(_SAMPLE_CANDIDATES, row_scores.shape[0])
        values, ids = torch.topk(row_scores, count)
        # Ties go to the lower id, as with argmax and llama.cpp's greedy sampler.
        top = [t for _, t in sorted(zip(values.tolist(), ids.tolist()), key=lambda pair: (-pair[0], pair[1]))]
        if self.greedy:
            first = next((t for t in top if self.allowed(row, t)), None)
            if first is not None:
                return [first]
        else:
            keep = [t for t in top if self.allowed(row, t)]
            if keep:
                return keep
        # Rare with a trained model: no allowed token among the best few; walk the whole ranking.
        order = torch.sort(row_scores, descending=True, stable=True).indices
        for start in range(count, order.shape[0], _SCAN_CHUNK):
            first = next((t for t in order[start:start + _SCAN_CHUNK].tolist() if self.allowed(row, t)), None)
            if first is not None:
                return [first]
        return []


class TextStopCriteria:
    """A transformers stopping criterion: a row is done once its text contains a stop string.

    Single-token stops are handled as end-of-generation ids; this catches the multi-token ones.

    Args:
        stops: stop strings per row.
        prompt_width: columns of the (left-padded) prompt.
        token_bytes: bytes of each vocabulary id.
    """

    def __init__(self, stops: Sequence[Sequence[str]], prompt_width: int, token_bytes: Sequence[bytes | None]):
        self.stops = [[s.encode() for s in row] for row in stops]
        self.prompt_width, self.token_bytes = prompt_width, token_bytes

    def __call__(self, input_ids, scores, **kwargs):
        """Per-row done flags (transformers' StoppingCriteria protocol)."""
        import torch

        done = []
        for row, stops in zip(input_ids[:, self.prompt_width:].tolist(), self.stops):
            # A stop of n bytes spans at most n tokens (every token has at least one byte), so the
            # newest tokens suffice; older matches were caught at earlier steps.
            window = max((len(s) for s in stops), default=0)
            tail = b"".join(self.token_bytes[t] or b"" for t in row[-window:] if t < len(self.token_bytes))
            done.append(any(s in tail for s in stops) if window else False)
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)


def tokenizer_chat_template(tokenizer, source: str):
    """A transformers tokenizer's chat template as a :class:`~mentalglm.core.prompt.ChatTemplate`, or None.

    Args:
        tokenizer: the tokenizer (its ``chat_template``: one text, or named texts of which ``default`` is used).
        source: where it was read, for messages.
    """
    from mentalglm.core.prompt import ChatTemplate

    text = getattr(tokenizer, "chat_template", None)
    if isinstance(text, dict):  # several named templates: the default one
        text = text.get("default")
    if not text:
        return None
    return ChatTemplate(text=text, source=source, bos_token=tokenizer.bos_token or "",
                        eos_token=tokenizer.eos_token or "")


def token_bytes_table(tokenizer, size: int) -> list[bytes | None]:
    """The bytes each vocabulary id stands for, as llama.cpp's grammar sees its piece.

    Byte-level BPE tokens (GLM-4, GPT-2 style) map through the GPT-2 byte↔unicode table;
    added and special tokens (``<|user|>``, ``[gMASK]``) are their UTF-8 text, as llama.cpp
    renders control tokens for the grammar; ids beyond the tokenizer (GLM pads its embedding
    rows) have no bytes. Tokenizers that are not byte-level get the SentencePiece reading
    (``<0xNN>`` byte tokens, ``▁`` as a space).

    Args:
        tokenizer: a transformers tokenizer.
        size: number of model output ids (at least the tokenizer's size for most models).

    Returns:
        A list of length ``size``.
    """
    from mentalglm.modelfiles.tokens import str_to_token

    count = min(len(tokenizer), size)
    added = {i: t.content for i, t in tokenizer.added_tokens_decoder.items()}
    strings = tokenizer.convert_ids_to_tokens(list(range(count)))
    regular = [(i, s) for i, s in enumerate(strings) if i not in added and s is not None]
    try:
        pieces = {i: str_to_token(s) for i, s in regular}
    except ValueError:  # not a byte-level vocabulary
        pieces = {}
        for i, s in regular:
            match = re.fullmatch(r"<0x([0-9A-Fa-f]{2})>", s)
            pieces[i] = bytes([int(match.group(1), 16)]) if match else s.replace("\u2581", " ").encode()
    table: list[bytes | None] = [None] * size
    for i, piece in pieces.items():
        table[i] = piece
    for i, text in added.items():
        if i < size:
            table[i] = text.encode()
    return table


class TorchBackend(Backend):
    """transformers + peft on PyTorch: batched generation, constrained answers, label scoring.

    ``model`` is a local directory of a transformers causal LM with safetensors weights
    (``GlmForCausalLM`` / ``Glm4ForCausalLM`` load without remote code). The original ChatGLM
    layout must be converted first (``mentalglm convert``).

    A model already in memory (the peft model a training run is tuning) is wrapped with
    :meth:`from_model` instead, so training-time validation and ``mentalglm evaluate`` share
    this one generation path.

    Attributes:
        hf_model: the transformers (or peft) model — for training code; None once closed.
        tokenizer: its tokenizer.
        device: the torch device in use.

    Raises:
        OptionsError: options that do not validate.
        MentalGLMError: a missing directory, a ChatGLM-layout directory, no safetensors
            weights, an unusable adapter, or an unavailable device.
    """

    name = "torch"
    description = "transformers + peft on PyTorch (HF-native GLM-4 or any causal LM; CPU or CUDA; batched)"
    Options = TorchOptions
    capabilities = frozenset({"generate", "score_labels", "train"})

    def __init__(self, model: str | None = None, options=None):
        super().__init__(model, options)
        torch = _import_torch()
        self.device = self._pick_device(torch)
        self.dtype = self._pick_dtype(torch)
        # This backend loaded the model, so close() may free it (and the CUDA cache).
        self._owns_model = True
        self._attach(*self._load(Path(model)))
        log.info("torch backend: %s on %s (%s)%s", model, self.device, str(self.dtype).replace("torch.", ""),
                 f" with adapter {self.options.adapter}" if self.options.adapter else "")

    @classmethod
    def from_model(cls, model, tokenizer, options=None, *, device=None) -> "TorchBackend":
        """Wrap an already-loaded transformers (or peft) model and its tokenizer.

        The caller keeps the model: it is neither moved, nor cast, nor switched between train
        and eval mode (put it in eval mode for dropout-free generation), its generation config
        is left as it is, and :meth:`close` only drops this backend's reference to it.

        Args:
            model: a causal LM (``PeftModel`` included), already on its device.
            tokenizer: its tokenizer.
            options: :class:`TorchOptions` or a mapping; the load-time options (``device``,
                ``dtype``, ``adapter``, ``trust_remote_code``) do not apply and must stay unset.
            device: where inputs go; default the device of the model's first parameter.

        Returns:
            A backend that generates and scores with ``model``.

        Raises:
            OptionsError: options that do not validate, or a load-time option.

        Example:
            >>> backend = TorchBackend.from_model(peft_model, tokenizer, {"constrained": False})  # doctest: +SKIP
            >>> Analyzer(task="depression", backend=backend).analyze("好累").output             # doctest: +SKIP
        """
        name = getattr(getattr(model, "config", None), "name_or_path", None) or type(model).__name__
        backend = cls.__new__(cls)
        Backend.__init__(backend, str(name), options)
        given = backend.options.model_fields_set & set(_LOAD_OPTIONS)
        if given:
            raise OptionsError(f"backend 'torch' option '{sorted(given)[0]}': not for a model already loaded "
                               "(from_model takes the model as it is)")
        _import_torch()
        first = next(model.parameters())
        backend.device, backend.dtype = device if device is not None else first.device, first.dtype
        backend._owns_model = False
        backend._attach(model, tokenizer)
        return backend

    def _attach(self, network, tokenizer) -> None:
        """Take ``network`` and ``tokenizer`` as this backend's model."""
        self.hf_model, self.tokenizer = network, tokenizer
        self._config = _transformers_model(network).config
        self._table: list[bytes | None] | None = None
        self._index: TokenBytesIndex | None = None
        self._settle_generation_config(network, tokenizer)

    # -- loading --------------------------------------------------------------------------
    def _pick_device(self, torch):
        wanted = self.options.device
        if wanted == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        if wanted.startswith("cuda"):
            if not torch.cuda.is_available():
                raise MentalGLMError(f"device '{wanted}' requested but CUDA is not available "
                                     f"(torch {torch.__version__}); use --option device=cpu")
            index = int(wanted.partition(":")[2] or 0)
            if index >= torch.cuda.device_count():
                raise MentalGLMError(f"device '{wanted}' requested but only {torch.cuda.device_count()} "
                                     "CUDA device(s) exist")
        return torch.device(wanted)

    def _pick_dtype(self, torch):
        if self.options.dtype != "auto":
            return getattr(torch, self.options.dtype)
        if self.device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32

    def _load(self, path: Path):
        from mentalglm.modelfiles.layout import is_chatglm_layout

        if not path.is_dir():
            # Only local directories: a hub name would make transformers download.
            raise MentalGLMError(f"{path}: no such model directory (the torch backend loads a local "
                                 "transformers model directory)")
        if is_chatglm_layout(path):
            raise MentalGLMError(f"{path} is in the original ChatGLM layout; run `mentalglm convert --model "
                                 f"{path} -o {path}-hf` first (no remote code is run)")
        if not (path / "config.json").is_file():
            raise MentalGLMError(f"{path}: no config.json (not a transformers model directory)")
        if not any(path.glob("*.safetensors")):
            raise MentalGLMError(f"{path}: no .safetensors weights (pickle checkpoints are refused; convert them "
                                 "with a tool you trust first)")
        import transformers
        from transformers import AutoModelForCausalLM, AutoTokenizer

        remote = self.options.trust_remote_code
        quiet = transformers.utils.logging.is_progress_bar_enabled()
        transformers.utils.logging.disable_progress_bar()  # "Loading weights" bars are stderr noise
        try:
            tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=remote, local_files_only=True)
            # On a GPU the weights stream straight to it (no full copy in host memory first).
            placement = {"device_map": str(self.device)} if self.device.type == "cuda" else {}
            network = AutoModelForCausalLM.from_pretrained(path, dtype=self.dtype, use_safetensors=True,
                                                           trust_remote_code=remote, local_files_only=True,
                                                           **placement)
        except (OSError, ValueError, KeyError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise MentalGLMError(f"{path}: cannot load the model ({first})") from None
        finally:
            if quiet:
                transformers.utils.logging.enable_progress_bar()
        if self.options.adapter:
            network = self._apply_adapter(network, Path(self.options.adapter))
        if self.device.type != "cuda":
            network.to(self.device)
        network.eval()
        return network, tokenizer

    def _settle_generation_config(self, network, tokenizer) -> None:
        """Keep only the end-of-generation ids of the model's generation config.

        transformers fills every setting a call leaves unset from ``model.generation_config``,
        so a checkpoint's ``repetition_penalty`` or ``no_repeat_ngram_size`` would silently
        change greedy decoding; only the backend's options may decide how tokens are chosen.
        A model this backend loaded gets the bare config for good; a caller's model
        (:meth:`from_model`) gets it only for the duration of each ``generate`` call.
        """
        from transformers import GenerationConfig

        inner = _transformers_model(network)
        eos = getattr(getattr(inner, "generation_config", None), "eos_token_id", None)
        if eos is None:
            eos = getattr(inner.config, "eos_token_id", None)
        if eos is None:
            eos = tokenizer.eos_token_id
        self.eos_ids: set[int] = set(eos if isinstance(eos, (list, tuple)) else [] if eos is None else [eos])
        pad = tokenizer.pad_token_id
        self.pad_id: int = pad if pad is not None else (min(self.eos_ids) if self.eos_ids else 0)
        self._generation_defaults = GenerationConfig(eos_token_id=sorted(self.eos_ids) or None,
                                                     pad_token_id=self.pad_id)
        if self._owns_model:
            inner.generation_config = self._generation_defaults

    @contextlib.contextmanager
    def _bare_generation_config(self, network):
        """The backend's bare generation config on ``network`` while a ``generate`` call runs."""
        inner = _transformers_model(network)
        saved = inner.generation_config
        inner.generation_config = self._generation_defaults
        try:
            yield
        finally:
            inner.generation_config = saved

    def _apply_adapter(self, network, adapter: Path):
        if not (adapter / "adapter_config.json").is_file():
            raise MentalGLMError(f"{adapter}: no adapter_config.json (not a peft adapter directory)")
        if not (adapter / "adapter_model.safetensors").is_file():
            raise MentalGLMError(f"{adapter}: no adapter_model.safetensors (pickle adapters are refused)")
        from peft import PeftModel

        try:
            # Unmerged: the base weights stay as loaded, the LoRA matrices run beside them.
            return PeftModel.from_pretrained(network, adapter, is_trainable=False)
        except (OSError, ValueError, KeyError, RuntimeError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise MentalGLMError(f"{adapter}: cannot apply the adapter ({first})") from None

    def _live(self):
        if self.hf_model is None:
            raise MentalGLMError("the torch backend is closed")
        return self.hf_model

    @property
    def token_table(self) -> list[bytes | None]:
        """Bytes of every output id (built on first use; see :func:`token_bytes_table`)."""
        if self._table is None:
            self._table = token_bytes_table(self.tokenizer, self._output_size())
        return self._table

    @property
    def token_index(self) -> TokenBytesIndex:
        """The :class:`TokenBytesIndex` of :attr:`token_table`, built once per model (not per batch)."""
        if self._index is None:
            self._index = TokenBytesIndex(self.token_table)
        return self._index

    def _output_size(self) -> int:
        embeddings = self._live().get_output_embeddings()
        size = getattr(embeddings, "out_features", None) or getattr(self._config, "vocab_size", None)
        return max(int(size or 0), len(self.tokenizer))

    def _encode(self, text: str, *, prompt: bool = False) -> list[int]:
        """Token ids of ``text``; a ``prompt`` starts with the model's BOS once (when its tokenizer adds one)."""
        ids = self.tokenizer(text, add_special_tokens=False).input_ids
        if prompt and self._bos is not None and ids[:1] != [self._bos]:
            ids = [self._bos] + ids
        return ids

    @property
    def _bos(self) -> int | None:
        # The BOS the tokenizer puts before a text by itself (Gemma, Llama); GLM-4 prompts carry
        # [gMASK]<sop> as text and its tokenizers name no BOS token: nothing is added there.
        if not hasattr(self, "_bos_id"):
            bos = self.tokenizer.bos_token_id
            probe = self.tokenizer("a", add_special_tokens=True).input_ids
            self._bos_id = bos if bos is not None and probe[:1] == [bos] else None
        return self._bos_id

    def identity(self) -> dict:
        """The model's and the adapter's digests, the device and dtype resolved from ``auto``, and the engine
        versions: a CPU float32 run is not resumed on a GPU in bfloat16."""
        import importlib.metadata

        from mentalglm.core.files import content_sha256

        adapter = self.options.adapter
        versions = {}
        for package in ("torch", "transformers", "peft"):
            try:
                versions[package] = importlib.metadata.version(package)
            except importlib.metadata.PackageNotFoundError:
                versions[package] = None
        return {**super().identity(), "adapter_sha256": content_sha256(adapter) if adapter else None,
                "device": str(getattr(self, "device", None)), "dtype": str(getattr(self, "dtype", None)), **versions}

    def chat_template(self):
        """The tokenizer's chat template (``tokenizer_config.json`` / ``chat_template.jinja``); None without one."""
        return tokenizer_chat_template(self.tokenizer, str(self.model or "the model"))

    # -- contract -------------------------------------------------------------------------
    def token_count(self, text: str) -> int:
        """Tokens of prompt ``text`` (special tokens written in the text count as one each; BOS as the model asks)."""
        return len(self._encode(text, prompt=True))

    @property
    def context_length(self) -> int | None:
        """``max_position_embeddings`` (or ``seq_length``/``n_positions``), else a sane tokenizer limit."""
        for key in ("max_position_embeddings", "seq_length", "n_positions"):
            value = getattr(self._config, key, None)
            if isinstance(value, int) and value > 0:
                return value
        limit = getattr(self.tokenizer, "model_max_length", None)
        return limit if isinstance(limit, int) and 0 < limit < 10_000_000 else None

    def _single_token(self, text: str) -> int | None:
        ids = self._encode(text)
        return ids[0] if len(ids) == 1 else None

    def generate(self, requests: Sequence[GenerationRequest]) -> list[Completion]:
        """Complete prompts in left-padded batches; greedy unless ``temperature`` > 0.

        Requests are grouped by stop strings and token budget (one ``generate`` call each), so
        every prompt gets exactly the output it would get alone.

        Args:
            requests: prompts rendered in full by a prompt style.

        Returns:
            One Completion per request, in order: text without the prompt and without the stop
            string, usage ``{"prompt_tokens", "completion_tokens"}``, finish_reason ``stop`` or
            ``length``.

        Raises:
            MentalGLMError: a prompt that fills the model's context, or a closed backend.
        """
        import torch

        self._live()
        if self.options.temperature > 0:
            torch.manual_seed(self.options.seed)  # per call: the same call gives the same samples
        encoded = [self._encode(r.prompt, prompt=True) for r in requests]
        context = self.context_length
        groups: dict[tuple, list[int]] = {}
        results: list[Completion | None] = [None] * len(requests)
        for index, (request, ids) in enumerate(zip(requests, encoded)):
            budget = request.max_new_tokens if request.max_new_tokens is not None else self.options.max_new_tokens
            if context is not None:
                if len(ids) >= context:
                    raise MentalGLMError(f"post '{request.id}': the prompt has {len(ids)} tokens, the model's "
                                         f"context is {context}; shorten the post")
                budget = min(budget, context - len(ids))
            if budget <= 0 or not ids:
                results[index] = Completion(request.id, "", {"prompt_tokens": len(ids), "completion_tokens": 0},
                                            "length")
                continue
            groups.setdefault((tuple(request.stop), budget), []).append(index)
        for (stops, budget), members in groups.items():
            outputs = self._generate_group([requests[i] for i in members], [encoded[i] for i in members],
                                           stops, budget)
            for index, completion in zip(members, outputs):
                results[index] = completion
        log.debug("torch backend: %d completions", len(requests))
        return results  # type: ignore[return-value]

    def _generate_group(self, requests, encoded, stops: tuple[str, ...], budget: int) -> list[Completion]:
        import torch
        from transformers import GenerationConfig, LogitsProcessorList, StoppingCriteriaList

        network = self._live()
        stop_ids = {t for t in (self._single_token(s) for s in stops) if t is not None}
        eog = self.eos_ids | stop_ids
        text_stops = [s for s in stops if self._single_token(s) is None and s]
        width = max(len(ids) for ids in encoded)
        input_ids = torch.full((len(encoded), width), self.pad_id, dtype=torch.long)
        attention = torch.zeros((len(encoded), width), dtype=torch.long)
        for row, ids in enumerate(encoded):  # left padding: every prompt ends at the last column
            input_ids[row, width - len(ids):] = torch.tensor(ids, dtype=torch.long)
            attention[row, width - len(ids):] = 1
        greedy = self.options.temperature <= 0
        processors = LogitsProcessorList()
        formats = [r.response_format if self.options.constrained else None for r in requests]
        if any(formats):
            processors.append(ConstrainedLogitsProcessor(formats, width, self.token_table, eog, greedy,
                                                         self.token_index))
        criteria = StoppingCriteriaList()
        if text_stops:
            criteria.append(TextStopCriteria([text_stops] * len(requests), width, self.token_table))
        # Finished rows are filled with an end-of-generation id, so "cut at the first eog id" is exact.
        fill = min(eog) if eog else self.pad_id
        settings = dict(max_new_tokens=budget, num_beams=1, eos_token_id=sorted(eog) or None, pad_token_id=fill)
        if greedy:
            settings.update(do_sample=False)
        else:
            settings.update(do_sample=True, temperature=self.options.temperature, top_p=self.options.top_p,
                            top_k=0)
        with torch.inference_mode(), self._bare_generation_config(network):
            output = network.generate(input_ids=input_ids.to(self.device), attention_mask=attention.to(self.device),
                                      generation_config=GenerationConfig(**settings), logits_processor=processors,
                                      stopping_criteria=criteria)
        completions = []
        for request, ids, new in zip(requests, encoded, output[:, width:].tolist()):
            finish = "length"
            for position, token in enumerate(new):
                if token in eog:
                    new, finish = new[:position], "stop"
                    break
            text = self.tokenizer.decode(new, skip_special_tokens=False, clean_up_tokenization_spaces=False)
            cuts = [text.find(s) for s in request.stop if s and s in text]
            if cuts:
                text, finish = text[:min(cuts)], "stop"
            completions.append(Completion(request.id, text, {"prompt_tokens": len(ids),
                                                             "completion_tokens": len(new)}, finish))
        return completions

    def score_labels(self, prompt: str, candidates: Sequence[str]) -> list[float]:
        """Summed log-probability of each candidate's tokens after ``prompt``, in one padded forward pass.

        ``prompt`` and each candidate are tokenized separately (no special tokens added) and
        the ids concatenated, as the base class specifies.

        Args:
            prompt: the rendered prompt.
            candidates: continuations to score.

        Returns:
            One float per candidate (0.0 for a candidate with no tokens).

        Raises:
            MentalGLMError: an empty prompt, or prompt + candidate longer than the context.
        """
        import torch

        network = self._live()
        if not candidates:
            return []
        prompt_ids = self._encode(prompt, prompt=True)
        if not prompt_ids:
            raise MentalGLMError("score_labels needs a non-empty prompt (the first token has no context)")
        options = [self._encode(c) for c in candidates]
        width = len(prompt_ids) + max(len(c) for c in options)
        context = self.context_length
        if context is not None and width > context:
            raise MentalGLMError(f"score_labels: prompt and candidate take {width} tokens, the model's context "
                                 f"is {context}")
        # Right padding: every row shares the prompt, so the candidate positions line up.
        input_ids = torch.full((len(options), width), self.pad_id, dtype=torch.long)
        attention = torch.zeros((len(options), width), dtype=torch.long)
        for row, ids in enumerate(options):
            full = prompt_ids + ids
            input_ids[row, :len(full)] = torch.tensor(full, dtype=torch.long)
            attention[row, :len(full)] = 1
        keep = width - len(prompt_ids) + 1  # logits from the prompt's last token on
        kwargs = {"logits_to_keep": keep} if self._accepts_logits_to_keep() else {}
        with torch.inference_mode():
            logits = network(input_ids=input_ids.to(self.device), attention_mask=attention.to(self.device),
                             **kwargs).logits
        logits = logits[:, -keep:, :].float()
        logprobs = torch.log_softmax(logits, dim=-1).double().cpu()
        scores = []
        for row, ids in enumerate(options):
            targets = torch.tensor(ids, dtype=torch.long)
            picked = logprobs[row, torch.arange(len(ids)), targets] if ids else torch.zeros(0, dtype=torch.float64)
            scores.append(float(picked.sum()))
        return scores

    def _accepts_logits_to_keep(self) -> bool:
        return "logits_to_keep" in inspect.signature(_transformers_model(self._live()).forward).parameters

    def close(self) -> None:
        """Free the model (and CUDA cache); the backend is unusable afterwards.

        A model wrapped with :meth:`from_model` belongs to the caller: only this backend's
        references to it are dropped.
        """
        if self.hf_model is None:
            return
        self.hf_model = None
        self._table = self._index = None
        if not self._owns_model:
            return
        gc.collect()
        if self.device.type == "cuda":
            import torch

            torch.cuda.empty_cache()


def _import_torch():
    """torch, with transformers checked too, so a missing extra is one line rather than a traceback."""
    try:
        import torch
        import transformers  # noqa: F401
    except ImportError:
        raise MentalGLMError("the torch backend needs PyTorch and transformers: pip install 'mentalglm[torch]'") \
            from None
    return torch


def _transformers_model(network):
    """The transformers model inside a peft wrapper (or ``network`` itself): where config and
    generation config live."""
    return network.get_base_model() if hasattr(network, "get_base_model") else network
