"""The ``openai`` backend: completions from any OpenAI-compatible server, standard library only.

Works with vLLM, llama.cpp's ``llama-server`` and llama-cpp-python's ``python -m
llama_cpp.server``: ``POST {base_url}/completions`` with the fully rendered prompt, written in
the server's dialect (:mod:`mentalglm.backends.server_dialects`): the answer constraint goes where
that server reads it, a canary proves before the first post that it is enforced, and every answer
is checked against it, so a server that ignores the constraint stops the run instead of passing
unconstrained answers off as constrained. HTTP goes through :mod:`mentalglm.backends.openai_http`
(:mod:`urllib.request`) and a :class:`~concurrent.futures.ThreadPoolExecutor`, so the backend adds
no dependency.
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
import urllib.parse
from collections import OrderedDict
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from typing import Any, Iterable, Literal, Sequence

from pydantic import Field, field_validator

from mentalglm.backends import server_dialects as dialects
from mentalglm.backends.openai_http import Cancelled, HTTPStatusError, JsonClient, NotJSON, public_url
from mentalglm.backends.replicas import ReplicaPool
from mentalglm.backends.server_dialects import Constraint, ServerInfo
from mentalglm.core.backend import Backend, BackendOptions, Completion, GenerationRequest
from mentalglm.core.errors import MentalGLMError, OptionsError
from mentalglm.core.response_format import ResponseFormat

log = logging.getLogger(__name__)

#: Constraints kept (least recently used dropped): tasks with evidence make one per post.
CONSTRAINTS_KEPT = 64
#: Request fields the backend sets itself (``extra_body`` may not replace them): the constraint
#: fields among them, because a constraint the backend did not send is one it cannot vouch for.
OWN_FIELDS = frozenset({"model", "prompt", "messages", "max_tokens", "temperature", "top_p", "seed", "stop", "stream",
                        "grammar", "structured_outputs", "response_format", "stop_token_ids", "add_special_tokens"})
#: ``server=`` spellings people use for the llama.cpp dialect.
_SERVER_ALIASES = {"llamacpp": "llama.cpp", "llama-cpp": "llama.cpp", "llama_cpp": "llama.cpp",
                   "llama-server": "llama.cpp", "llama-cpp-python": "llama.cpp"}


class OpenAIOptions(BackendOptions):
    """Options of the openai backend."""

    base_url: str | list[str] = Field(
        "http://127.0.0.1:8000/v1",
        description="the server's OpenAI API root (http or https); requests go to {base_url}/completions. Several "
                    "replicas of one server: a comma-separated list (or a JSON list); each request goes to the least "
                    "busy, a failing replica is retried elsewhere and taken out for replica_cooldown seconds")
    api_key_env: str = Field("OPENAI_API_KEY",
                             description="name of the environment variable holding the API key, sent as a Bearer "
                                         "token (unset or empty: no Authorization header)")
    server: Literal["auto", "vllm", "llama.cpp", "openai"] = Field(
        "auto", description="the server's dialect: auto (read from GET /version, /v1/models and the like), vllm "
                            "(constraint in structured_outputs, stop_token_ids, LoRA adapters by name), llama.cpp "
                            "(llama-server or llama-cpp-python: constraint in grammar) or openai (no constraint "
                            "possible: needs constrained=false)")
    constrained: bool = Field(True, description="decode only answers in the task's format; a canary before the "
                                                "first post proves the server enforces it and every answer is "
                                                "checked (false: send no constraint, check nothing)")
    answer: Literal["full", "label"] = Field("full", description="full: label line and explanation (a GBNF "
                                                                  "grammar); label: only the label line, "
                                                                  "single-label tasks (vLLM: structured_outputs "
                                                                  "choice)")
    adapter: str | None = Field(None, description="a LoRA adapter the server serves by name (vllm serve … "
                                                  "--enable-lora --lora-modules NAME=PATH): sent as the request's "
                                                  "model; vLLM only")
    stop_token_ids: list[int] | Literal["auto"] | None = Field(
        "auto", description="token ids that end generation, sent to vLLM (it drops special tokens from the text, so "
                            "the stop strings <|user|>… never match there): auto reads the ids of <|endoftext|>, "
                            "<|user|>, <|observation|> from the server's /tokenize; a comma-separated list; none")
    concurrency: int = Field(4, ge=1, description="requests in flight at once")
    max_retries: int = Field(5, ge=0, description="further tries after a 429/500/502/503/504, a connection error "
                                                  "or a timeout")
    backoff: float = Field(0.5, ge=0, description="seconds before the first retry, doubling each time, with jitter "
                                                  "(a Retry-After header from the server takes precedence)")
    timeout: float = Field(60.0, gt=0, description="seconds to wait for the connection and for the server's answer")
    replica_cooldown: float = Field(30.0, ge=0, description="seconds a replica that failed (no connection, 5xx, 429, "
                                                            "timeout) stays out before one request probes it again")
    temperature: float = Field(0.0, ge=0, description="sampling temperature (0: greedy)")
    top_p: float = Field(1.0, gt=0, le=1, description="nucleus sampling mass")
    grammar_field: str | None = Field(None, description="deprecated for vLLM and llama.cpp (use server=): sends the "
                                                        "task's GBNF under this field name instead of the dialect's "
                                                        "own, checked like any constraint")
    repeat_penalty: float | None = Field(1.0, ge=0, description="sent as 'repeat_penalty' (llama.cpp servers; "
                                                                "llama-cpp-python's server applies 1.1 when it is "
                                                                "missing, so temperature 0 would not be greedy) or "
                                                                "as vLLM's 'repetition_penalty'; none: leave it out")
    extra_body: dict[str, Any] = Field(default_factory=dict,
                                       description="JSON object of further request fields (e.g. {\"top_k\": 1})")
    trust_env_proxy: bool = Field(False, description="use HTTP(S)_PROXY from the environment (off: connect to "
                                                     "base_url directly, so post text goes nowhere else)")

    @field_validator("grammar_field", "repeat_penalty", "adapter", mode="before")
    @classmethod
    def _none_words(cls, value):
        """The command line spells None as ``none`` (``-O repeat_penalty=none``)."""
        if isinstance(value, str) and value.strip().lower() in ("", "none", "null"):
            return None
        return value

    @field_validator("base_url", mode="before")
    @classmethod
    def _replicas(cls, value):
        """One URL as given; several (``http://a/v1,http://b/v1`` or a JSON list): a sorted list, a set of replicas."""
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                try:
                    value = json.loads(text)
                except json.JSONDecodeError:
                    raise ValueError("not a JSON list of URLs") from None
            elif "," in text:
                value = text.split(",")
        if isinstance(value, (list, tuple)):
            urls = [str(url).strip().rstrip("/") for url in value if str(url).strip()]
            if not urls:
                raise ValueError("no URL given")
            twice = sorted({public_url(url) for url in urls if urls.count(url) > 1})
            if twice:
                raise ValueError(f"names a replica more than once: {', '.join(twice)}")
            # A set: the order given changes no prediction, so a rerun listing them otherwise resumes.
            return urls[0] if len(urls) == 1 else sorted(urls)
        return value

    @field_validator("server", mode="before")
    @classmethod
    def _server_alias(cls, value):
        if isinstance(value, str):
            value = value.strip().lower()
            return _SERVER_ALIASES.get(value, value)
        return value

    @field_validator("stop_token_ids", mode="before")
    @classmethod
    def _id_list(cls, value):
        """``auto``, ``none``, ``151329,151336,151338`` or a JSON list."""
        if not isinstance(value, str):
            return value
        text = value.strip()
        if text.lower() in ("", "none", "null"):
            return None
        if text.lower() == "auto":
            return "auto"
        try:
            return json.loads(text) if text.startswith("[") else [int(part) for part in text.split(",")]
        except ValueError:
            raise ValueError("expected auto, none or comma-separated token ids") from None

    @field_validator("extra_body", mode="before")
    @classmethod
    def _json_object(cls, value):
        if isinstance(value, str):
            try:
                value = json.loads(value) if value.strip() else {}
            except json.JSONDecodeError as exc:
                raise ValueError(f"not a JSON object ({exc.msg})") from None
        if isinstance(value, dict):
            clash = sorted(OWN_FIELDS & set(value))
            if clash:
                raise ValueError(f"may not set {', '.join(clash)} (the backend sets them)")
            guided = sorted(key for key in value if str(key).startswith("guided_"))
            if guided:
                raise ValueError(f"{', '.join(guided)}: vLLM removed the guided_* fields in v0.12 and ignores "
                                 "them; the backend sends structured_outputs itself (server=vllm)")
        return value


class OpenAIBackend(Backend):
    """Completions from an OpenAI-compatible server (vLLM, llama.cpp server, llama-cpp-python server).

    ``model`` is the server-side model name (vLLM's ``--served-model-name``; llama.cpp servers
    serve one model and accept any name). Each request is ``POST {base_url}/completions`` with
    ``model`` (or ``adapter``), ``prompt`` (the fully rendered prompt, e.g. starting with
    ``[gMASK]<sop>``), ``max_tokens``, ``temperature``, ``top_p``, ``seed``, ``stop``, the
    repetition penalty (unless none), ``extra_body``, and what the server's dialect needs.

    **Dialects** (``server``; ``auto`` reads the server's signs once, before the first request:
    see :mod:`~mentalglm.backends.server_dialects`): ``vllm`` — the task's GBNF as
    ``structured_outputs.grammar`` (``answer=label``: ``structured_outputs.choice``), the GLM-4
    ``stop_token_ids``, ``repetition_penalty``, LoRA adapters by name; ``llama.cpp`` — the GBNF as
    ``grammar``, ``repeat_penalty``; ``openai`` — nothing can constrain a plain ``/completions``
    answer, so a constrained run is refused there (``constrained=false`` runs it). What was found
    is :attr:`server_info`.

    **Fail closed.** With ``constrained`` on (the default), :meth:`preflight` sends a canary
    whose unconstrained answer would leave the grammar; an answer outside it stops the run with
    one line naming the server and what to change. Every answer of the run is checked the same
    way (outside the grammar, or stopped before the explanation: an error, never a prediction).

    **Replicas.** ``base_url`` may list several servers of one model (:mod:`~mentalglm.backends.replicas`):
    each request goes to the least busy, a failed try moves to another replica at once and takes the failed
    one out for ``replica_cooldown`` seconds; every replica is identified and passes the canary before the
    first post, and :meth:`run_stats` counts requests, failures and times taken out per replica.

    **Privacy.** Post text goes only to the configured ``base_url``: no proxy from the
    environment (unless ``trust_env_proxy``), no redirects followed, no credentials in the URL.
    Because that server may be another machine, the Analyzer **redacts posts by default** for this backend
    (``redacts_by_default``: URLs, e-mail addresses, ID-card and phone numbers, @mentions; see
    :mod:`mentalglm.analysis.redaction`); turn it off with ``--no-redact`` / ``redact=False``. The
    API key is read from the environment variable named by ``api_key_env``; it is never an
    option, never logged and never part of an error message. Errors never quote the prompt or
    an answer.

    **Tokenization.** The server tokenizes the prompt string. llama.cpp servers parse special
    tokens in it and add a BOS token only when the GGUF says ``add_bos_token = true`` (GGUFs
    from ``mentalglm export`` say false, so the prompt's own ``[gMASK]<sop>`` is not doubled);
    with llama-cpp-python's server and ``repeat_penalty=1`` (the default here), temperature 0
    gives exactly the tokens of in-process greedy decoding on the same ids. For vLLM, serve
    the model with its HF tokenizer, which also parses the special tokens in the text.

    **Label scoring** (``score_labels``, ``--mode score``) is not supported: it would need the
    log-probabilities of the prompt's own tokens (``echo`` with ``logprobs``). llama.cpp's
    ``llama-server`` does not return those, llama-cpp-python's server does only when started
    with ``logits_all`` and reports them from one tokenization of prompt + candidate (not the
    separate tokenizations every other backend scores) with character offsets that ignore
    special tokens, and vLLM's differ again — not reliable enough to compare backends.

    Raises:
        OptionsError: no model name, a bad option, or a ``base_url`` that is not http(s).
        MentalGLMError: from :meth:`preflight` and :meth:`generate`: a server that does not
            enforce the constraint, a constrained run in the ``openai`` dialect, an adapter the
            server does not serve, a non-retryable HTTP error (the status and the server's
            message), or still failing after ``max_retries`` retries.
    """

    name = "openai"
    description = "Any OpenAI-compatible completions server (vLLM, llama.cpp server): scales past one machine"
    Options = OpenAIOptions
    capabilities = frozenset({"generate"})
    requires_model = True
    redacts_by_default = True

    def __init__(self, model: str | None = None, options=None):
        super().__init__(model, options)
        opts = self.options
        urls = [opts.base_url] if isinstance(opts.base_url, str) else list(opts.base_url)
        for url in urls:
            _check_url(url, opts.api_key_env)
        if not opts.constrained and opts.grammar_field:
            raise OptionsError("backend 'openai': grammar_field sends a constraint but constrained=false; "
                               "drop one of them")
        if not opts.constrained and opts.answer == "label":
            raise OptionsError("backend 'openai': answer=label needs constrained=true (the constraint makes the "
                               "label line)")
        #: The replicas' API roots; :attr:`base_url` is the first (one server: the only one).
        self.base_urls = [url.strip().rstrip("/") for url in urls]
        self.base_url = self.base_urls[0]
        self.url = f"{self.base_url}/completions"
        self._pool = ReplicaPool(self.base_urls, cooldown=opts.replica_cooldown)
        self._http = JsonClient(api_key=os.environ.get(opts.api_key_env, ""), timeout=opts.timeout,
                                max_retries=opts.max_retries, backoff=opts.backoff,
                                trust_env_proxy=opts.trust_env_proxy)
        self._server: ServerInfo | None = None
        self._stop_ids: list[int] | None = None
        self._constraints: OrderedDict[ResponseFormat, Constraint] = OrderedDict()
        self._constraints_lock = threading.Lock()  # the worker threads share the cache
        self._lock = threading.Lock()
        self._chat = False  # --prompt server: every request (the canary too) goes to /chat/completions

    def __repr__(self) -> str:
        shown = self.base_url if len(self.base_urls) == 1 else self.base_urls
        return f"OpenAIBackend(model={self.model!r}, base_url={shown!r})"

    def run_stats(self) -> dict:
        """Per-replica counts (requests, failures, times taken out) when ``base_url`` lists several replicas."""
        return {"replicas": self._pool.counts()} if len(self.base_urls) > 1 else {}

    # -- the server ---------------------------------------------------------------------------
    @property
    def server_info(self) -> dict:
        """What the run record keeps about the server (it changes predictions), JSON-ready.

        ``dialect``, ``engine`` and ``version`` (None where the server does not tell),
        ``constraint`` (the request field that carries it; None when unconstrained or
        impossible) and ``stop_token_ids`` (those sent). Reading it identifies the server
        first if that has not happened yet.
        """
        info = self._connect()
        return {"dialect": info.dialect, "engine": info.engine, "version": info.version,
                "constraint": self._constraint_name(info), "stop_token_ids": self._stop_ids}

    def _connect(self) -> ServerInfo:
        """Identify the server once (thread-safe): dialect, version, stop token ids, the adapter served.

        With replicas, every one is identified and must be the same (engine, version, dialect, stop
        token ids): the run record holds one server, and a request may go to any of them.

        Raises:
            MentalGLMError: a replica differs from the first, naming both.
        """
        with self._lock:
            if self._server is None:
                found = []
                for url in self.base_urls:
                    info = self._identify(url)
                    self._check_adapter(info, url)
                    found.append((url, info, self._resolve_stop_ids(info, url)))
                first_url, info, stop_ids = found[0]
                for url, other, other_ids in found[1:]:
                    seen = (other.dialect, other.engine, other.version, other_ids)
                    if seen != (info.dialect, info.engine, info.version, stop_ids):
                        raise MentalGLMError(
                            f"openai backend: replica {url} is {other.describe()} ({other.dialect} dialect, stop "
                            f"token ids {other_ids}) but {first_url} is {info.describe()} ({info.dialect} dialect, "
                            f"stop token ids {stop_ids}); the replicas of a run must be the same server and model")
                if self.options.grammar_field and info.dialect != "openai":
                    # Still the way to reach other engines' grammar fields; for these two, server= knows better.
                    log.warning("openai backend: option grammar_field is deprecated for %s: server=llama.cpp sends "
                                "the grammar as 'grammar', server=vllm as structured_outputs (server=auto picks "
                                "one)", info.describe())
                if info.engine == "llama-cpp-python":
                    log.warning("openai backend: %s is %s: %s", self.base_url, info.describe(), dialects.LONG_PIECES)
                self._stop_ids = stop_ids
                self._server = info
            return self._server

    def render_on_server(self) -> None:
        """``--prompt server``: requests go to ``/chat/completions`` as messages, rendered by the server's template.

        The constraint is sent with them as with completions, and the canary takes the same route,
        so a server whose chat route ignores the grammar is caught before the first post.
        """
        self._chat = True

    def chat_template(self):
        """The served model's own chat template where the server tells it (llama-server's ``GET /props``).

        ``--prompt auto`` then renders each post here with the template of the GGUF the server loaded,
        and the request stays a constrained completion, canaried and checked as any other. vLLM and
        plain OpenAI-compatible servers expose no template: None, and ``auto`` is refused for them.
        """
        from mentalglm.core.prompt import ChatTemplate

        info = self._connect()
        if info.engine != "llama.cpp server":
            return None
        props = self._probe(f"{dialects.server_root(self.base_urls[0])}/props")
        text = props.get("chat_template") if isinstance(props, dict) else None
        if not text:
            return None
        return ChatTemplate(text=text, source=f"the model {self.base_urls[0]} serves",
                            bos_token=str(props.get("bos_token") or ""), eos_token=str(props.get("eos_token") or ""))

    def offline(self) -> ServerInfo:
        """Write requests for no server in particular (batch files): the dialect is the ``server`` option.

        Nothing is probed. vLLM's ``stop_token_ids`` come from the option; with ``auto`` they are
        read from the model folder's ``tokenizer.json`` when ``model`` is one (``vllm run-batch
        --model DIR`` serves it under that name), else left out with a warning.

        Raises:
            OptionsError: ``server=auto`` (there is no server to ask).
        """
        opts = self.options
        if opts.server == "auto":
            raise OptionsError("backend 'openai': a batch file is written for no server in particular; choose the "
                               "dialect with --server vllm, llama.cpp or openai")
        with self._lock:
            if self._server is None:
                info = ServerInfo(opts.server, signs="server option", forced=True)
                wanted = opts.stop_token_ids
                if info.dialect != "vllm":
                    ids = None
                elif wanted != "auto":
                    ids = list(wanted) if wanted else None
                else:
                    ids = _folder_stop_ids(self.model)
                    if ids is None:
                        log.warning("openai backend: stop_token_ids=auto: '%s' is no model folder with a "
                                    "tokenizer.json, so no stop_token_ids are written; generation ends only where "
                                    "the served model's generation_config says (set -O stop_token_ids=ID,...)",
                                    self.model)
                self._server, self._stop_ids = info, ids
            return self._server

    def _identify(self, base_url: str) -> ServerInfo:
        opts = self.options
        forced = opts.server != "auto"
        try:
            engine, version, signs, models = dialects.identify(self._probe, base_url)
        except MentalGLMError:
            if not forced:
                raise
            # The dialect is given: the signs only add the version to the record and hints to messages.
            engine, version, signs, models = None, None, "", ()
        info = ServerInfo(opts.server if forced else dialects.dialect_of(engine), engine, version,
                          "server option" if forced else signs, models, forced)
        log.info("openai backend: %s is %s (%s); requests in the %s dialect", base_url, info.describe(),
                 info.signs, info.dialect)
        return info

    def _check_adapter(self, info: ServerInfo, base_url: str) -> None:
        adapter = self.options.adapter
        if not adapter:
            return
        if info.dialect != "vllm":
            raise MentalGLMError(f"openai backend: adapter={adapter} needs a vLLM server (LoRA adapters by served "
                                 f"name); {base_url} is {info.describe()} in the {info.dialect} dialect "
                                 "(llama.cpp servers load LoRA at start with --lora)")
        if info.models and adapter not in info.models:
            raise MentalGLMError(f"openai backend: {base_url} does not serve adapter '{adapter}' (it serves: "
                                 f"{', '.join(info.models)}); start it with vllm serve … --enable-lora "
                                 f"--lora-modules {adapter}=PATH")

    def _resolve_stop_ids(self, info: ServerInfo, base_url: str) -> list[int] | None:
        wanted = self.options.stop_token_ids
        if info.dialect != "vllm":
            # llama.cpp servers end at the GGUF's end-of-generation tokens and match the stop strings.
            if wanted not in ("auto", None):
                log.warning("openai backend: stop_token_ids goes to vLLM only; %s in the %s dialect does not get it",
                            info.describe(), info.dialect)
            return None
        if wanted != "auto":
            return list(wanted) if wanted else None
        ids = []
        for text in dialects.stop_token_texts():
            answer = self._probe(f"{dialects.server_root(base_url)}/tokenize",
                                 {"model": self.model, "prompt": text, "add_special_tokens": False})
            tokens = answer.get("tokens") if isinstance(answer, dict) else None
            # More than one piece: the served tokenizer does not know the token (not a GLM-4 model).
            if isinstance(tokens, list) and len(tokens) == 1 and isinstance(tokens[0], int):
                ids.append(tokens[0])
        if not ids:
            log.warning("openai backend: %s/tokenize gave no ids for the GLM-4 stop tokens; generation ends only "
                        "where the served model's generation_config says (set -O stop_token_ids=ID,...)",
                        dialects.server_root(base_url))
        return ids or None

    def _probe(self, url: str, payload: dict | None = None) -> Any:
        """``GET url`` (or POST ``payload``): the JSON answer, or None where the endpoint is absent or not JSON.

        Raises:
            MentalGLMError: the server cannot be reached, or refuses the API key (401/403).
        """
        try:
            return self._http.request(url, payload)
        except HTTPStatusError as exc:
            if exc.status in (401, 403):
                raise MentalGLMError(f"{exc}; is the key in ${self.options.api_key_env} right?") from None
            return None
        except NotJSON:
            return None

    # -- constraints --------------------------------------------------------------------------
    def _constraint(self, fmt: ResponseFormat | None) -> Constraint | None:
        """How a request with answer format ``fmt`` is constrained (None: it is not).

        Raises:
            MentalGLMError: the dialect cannot constrain (``openai``), or ``answer=label`` for a
                task that is not single-label.
        """
        opts = self.options
        if fmt is None or not opts.constrained:
            return None
        with self._constraints_lock:
            made = self._constraints.get(fmt)
            if made is not None:
                self._constraints.move_to_end(fmt)
        if made is None:
            info = self._connect()
            try:
                made = dialects.constraint(info.dialect, fmt, label_only=opts.answer == "label",
                                           grammar_field=opts.grammar_field)
            except dialects.ConstraintUnsupported:
                raise MentalGLMError(
                    f"openai backend: {self.base_url} is {info.describe()}, spoken to as plain OpenAI "
                    f"({'server option' if info.forced else info.signs}), whose /completions takes no grammar, so "
                    "answers cannot be constrained; set server=vllm or server=llama.cpp if it is one of those, or "
                    "constrained=false to run unconstrained") from None
            with self._constraints_lock:
                self._constraints[fmt] = made
                if len(self._constraints) > CONSTRAINTS_KEPT:  # evidence formats are per post: keep the recent
                    self._constraints.popitem(last=False)
        return made

    def _constraint_name(self, info: ServerInfo) -> str | None:
        if not self.options.constrained:
            return None
        label_only = self.options.answer == "label"
        try:
            return dialects.constraint(info.dialect, dialects.CANARY_LABELS if label_only else dialects.CANARY_FORMAT,
                                       label_only=label_only, grammar_field=self.options.grammar_field).sent_as
        except dialects.ConstraintUnsupported:
            return None

    def preflight(self, post_ids: Iterable[str], response_format: ResponseFormat | None = None) -> None:
        """Before the first post: identify the server and prove with a canary that it enforces the constraint.

        The canary asks for something far from the task format (``12345``) under the
        constraint, with ``response_format`` when the caller gives the task's, else with a
        grammar that uses every construct the task grammars do. A server that ignores the
        constraint answers outside it.

        Raises:
            MentalGLMError: one line naming the server (base URL, what it is, the dialect) and
                what to change — the canary answer is outside the grammar, the dialect cannot
                constrain, or the adapter is not served. Nothing is checked when there are no
                posts; only the identification when ``constrained`` is off. With replicas the
                canary goes to every one, and the first that fails it is named.
        """
        if next(iter(post_ids), None) is None:
            return
        info = self._connect()
        if not self.options.constrained:
            log.info("openai backend: constrained=false: answers from %s are not constrained", self.base_url)
            return
        label_only = self.options.answer == "label"
        fmt = response_format or (dialects.CANARY_LABELS if label_only else dialects.CANARY_FORMAT)
        canary = GenerationRequest(id="canary", prompt=dialects.CANARY_PROMPT, stop=dialects.stop_token_texts(),
                                   max_new_tokens=min(dialects.CANARY_TOKENS, self.options.max_new_tokens),
                                   response_format=fmt,
                                   messages=({"role": "user", "content": dialects.CANARY_QUESTION},) if self._chat
                                   else None)
        for url in self.base_urls:  # any replica may get any post: each must prove it constrains
            self._complete(canary, threading.Event(), subject="the canary answer", replica=url)
            log.info("openai backend: canary passed: %s (%s) enforces %s", url, info.describe(),
                     self._constraint(fmt).sent_as)

    # -- requests ---------------------------------------------------------------------------
    def body(self, request: GenerationRequest, *, chat: bool = False) -> dict:
        """The JSON body sent for ``request`` (identifies the server first if need be; :meth:`offline` skips that).

        Args:
            chat: a ``/chat/completions`` body: the request's ``messages`` (``--prompt server``) or the
                rendered prompt's turns (:func:`chat_messages`; vLLM's batch runner takes only chat
                requests) in place of ``prompt``; everything else, the constraint included, is the same.

        Raises:
            MentalGLMError: ``chat`` and a prompt that is neither messages nor a GLM-4 chat prompt.
        """
        opts = self.options
        info = self._connect()
        body: dict[str, Any] = dict(opts.extra_body)
        if chat:
            messages = list(request.messages) if request.messages else chat_messages(request.prompt)
            if messages is None:
                raise MentalGLMError(f"openai backend: the prompt of post {request.id} is not a GLM-4 chat prompt "
                                     "([gMASK]<sop><|user|>\\n…<|assistant|>\\n), so it cannot be sent as chat "
                                     "messages; use the /completions endpoint")
            text: dict[str, Any] = {"messages": messages}
        else:
            text = {"prompt": request.prompt}
        body.update({
            "model": opts.adapter or self.model,
            **text,
            "max_tokens": request.max_new_tokens if request.max_new_tokens is not None else opts.max_new_tokens,
            "temperature": opts.temperature,
            "top_p": opts.top_p,
            "seed": opts.seed,
            "stop": list(request.stop),
        })
        if opts.repeat_penalty is not None:
            body[dialects.penalty_field(info.dialect)] = opts.repeat_penalty
        if info.dialect == "vllm" and self._stop_ids:
            body["stop_token_ids"] = list(self._stop_ids)
        if info.dialect == "vllm" and not chat:
            # The prompt is rendered whole ([gMASK]<sop> included); vLLM's completions route would let the HF
            # tokenizer prepend GLM-4's prefix a second time (seen: 2 more prompt tokens than the chat route).
            body["add_special_tokens"] = False
        constraint = self._constraint(request.response_format)
        if constraint is not None:
            body.update(constraint.fields)
        return body

    def generate(self, requests: Sequence[GenerationRequest]) -> list[Completion]:
        """One completion per request, in request order (up to ``concurrency`` in flight).

        Raises:
            MentalGLMError: the first request that failed for good, or whose answer broke the
                constraint; the others are abandoned.
        """
        requests = list(requests)
        if not requests:
            return []
        self._connect()  # once, before the workers need it
        cancel = threading.Event()
        workers = min(self.options.concurrency, len(requests))
        if workers == 1:
            return [self._complete(r, cancel) for r in requests]
        pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="mentalglm-openai")
        try:
            futures = [pool.submit(self._complete, r, cancel) for r in requests]
            wait(futures, return_when=FIRST_EXCEPTION)
            failed = [f.exception() for f in futures if f.done() and not f.cancelled() and f.exception()]
            if failed:
                cancel.set()  # the others stop before their next try
                raise next((e for e in failed if not isinstance(e, Cancelled)), failed[0])
            return [f.result() for f in futures]
        finally:
            cancel.set()
            pool.shutdown(wait=True, cancel_futures=True)

    def _complete(self, request: GenerationRequest, cancel: threading.Event, subject: str | None = None,
                  replica: str | None = None) -> Completion:
        """Send ``request`` to ``replica``, or to the least busy replica with fail-over; check the answer."""
        if cancel.is_set():
            raise Cancelled("openai backend: cancelled")
        chat = self._chat or request.messages is not None
        body = self.body(request, chat=chat)
        route = "/chat/completions" if chat else "/completions"
        url = replica or self.base_url
        try:
            if replica is not None:
                payload = self._http.request(f"{replica}{route}", body, prompt=request.prompt, cancel=cancel)
            else:
                url, payload = self._pool.send(self._http, route, body, tries=self.options.max_retries + 1,
                                               prompt=request.prompt, cancel=cancel)
        except NotJSON as exc:
            raise MentalGLMError(f"{exc} (is base_url the API root, e.g. http://host:8000/v1?)") from None
        completion = self._completion(request, payload, url, route)
        constraint = self._constraint(request.response_format)
        problem = constraint.violation(completion.text, completion.finish_reason) if constraint else None
        if problem:
            info = self._connect()
            raise MentalGLMError(
                f"openai backend: {url} ({info.describe()}, {info.dialect} dialect) did not enforce the "
                f"answer constraint sent as {constraint.sent_as}: {subject or f'the answer for post {request.id}'} "
                f"{problem}; {dialects.advice(info, constraint.sent_as)}")
        return completion

    def _completion(self, request: GenerationRequest, payload: Any, base_url: str, route: str) -> Completion:
        text, choice = completion_text(payload)
        if text is None:
            field = "choices[0].message.content" if route == "/chat/completions" else "choices[0].text"
            raise MentalGLMError(f"openai backend: {base_url}{route}: the answer has no {field} "
                                 f"(is this an OpenAI-compatible {route.strip('/')} endpoint?)")
        usage = payload.get("usage") if isinstance(payload, dict) else None
        usage = {k: v for k, v in (usage or {}).items()
                 if k in ("prompt_tokens", "completion_tokens") and isinstance(v, int)}
        return Completion(request.id, text, usage=usage, finish_reason=choice.get("finish_reason") or "stop")


def completion_text(payload: Any) -> tuple[str | None, dict]:
    """The answer's text and its first choice: ``choices[0].text`` (completions) or ``.message.content`` (chat).

    ``(None, {})`` when the payload holds neither.
    """
    try:
        choice = payload["choices"][0]
        text = choice["text"] if "text" in choice else choice["message"]["content"]
    except (KeyError, IndexError, TypeError):
        return None, {}
    return (text, choice) if isinstance(text, str) else (None, {})


#: A GLM-4 turn marker as the glm4-chat prompt style (and GLM-4's chat template) writes it.
_TURN = re.compile(r"<\|(system|user|assistant|observation)\|>\n")
_CHAT_HEAD, _CHAT_TAIL = "[gMASK]<sop>", "<|assistant|>\n"


def chat_messages(prompt: str) -> list[dict] | None:
    """The chat turns of a rendered GLM-4 chat prompt, or None when ``prompt`` is not one.

    ``[gMASK]<sop><|system|>\\nS<|user|>\\nU<|assistant|>\\n`` → ``[{"role": "system", "content": "S"},
    {"role": "user", "content": "U"}]``: the messages GLM-4's chat template renders back to exactly
    ``prompt``, so a chat endpoint reads the same text the completions endpoint would.
    """
    if not (prompt.startswith(_CHAT_HEAD) and prompt.endswith(_CHAT_TAIL)):
        return None
    inner = prompt[len(_CHAT_HEAD):-len(_CHAT_TAIL)]
    pieces = _TURN.split(inner)
    if len(pieces) < 3 or pieces[0]:
        return None
    messages = [{"role": role, "content": content} for role, content in zip(pieces[1::2], pieces[2::2])]
    if "".join(f"<|{m['role']}|>\n{m['content']}" for m in messages) != inner:
        return None
    return messages


def _check_url(url: str, api_key_env: str) -> None:
    """Refuse a base URL that is not http(s) with a host, or that holds credentials (never echoed)."""
    try:
        parts = urllib.parse.urlsplit(url.strip())
        scheme, host, user = parts.scheme.lower(), parts.hostname, parts.username
        parts.port  # noqa: B018 -- raises ValueError on a bad port
    except ValueError:
        scheme, host, user = "", None, None
    if scheme not in ("http", "https") or not host:
        raise OptionsError(f"backend 'openai' option 'base_url' must be an http:// or https:// URL with a host, "
                           f"got '{public_url(url)}'")
    if user is not None:
        raise OptionsError("backend 'openai' option 'base_url' must not hold a user name or password; "
                           f"put the API key in the environment variable {api_key_env}")


def _folder_stop_ids(model: str | None) -> list[int] | None:
    """The GLM-4 stop tokens' ids in ``model``'s ``tokenizer.json`` when ``model`` is a local folder, else None."""
    from pathlib import Path

    if not model:
        return None
    try:
        added = json.loads((Path(model) / "tokenizer.json").read_text(encoding="utf-8")).get("added_tokens") or []
    except (OSError, ValueError, AttributeError):
        return None
    ids = {t.get("content"): t.get("id") for t in added if isinstance(t, dict)}
    found = [ids[text] for text in dialects.stop_token_texts() if isinstance(ids.get(text), int)]
    return found or None
