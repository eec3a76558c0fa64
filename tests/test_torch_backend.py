"""The torch backend on tiny GLM models: greedy = transformers, batching, constraints, scoring, LoRA."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap

import pytest

from mentalglm.core.backend import GenerationRequest
from mentalglm.core.errors import MentalGLMError, OptionsError
from mentalglm.core.plugin_manager import PluginManager
from mentalglm.data.readers import read_records

torch = pytest.importorskip("torch", reason="the torch backend tests need the torch extra")
pytest.importorskip("transformers")

from mentalglm.backends.grammar_utf8 import utf8_step  # noqa: E402
from mentalglm.backends.torch_backend import ConstrainedLogitsProcessor, TorchBackend, token_bytes_table  # noqa: E402

TASKS = ("depression", "suicide-risk", "cognitive-distortion", "cognitive-pathway")
CPU = {"device": "cpu", "dtype": "float32"}


@pytest.fixture(autouse=True)
def _one_thread(one_torch_thread):
    """Every torch-backend test runs torch on one thread."""


@pytest.fixture(scope="module")
def plugins():
    return PluginManager()


@pytest.fixture(scope="module")
def chat(plugins):
    return plugins.prompt("glm4-chat")


@pytest.fixture(scope="module")
def glm(tiny_models):
    backend = TorchBackend(str(tiny_models["glm"]), {**CPU, "max_new_tokens": 24})
    yield backend
    backend.close()


def requests_for(plugins, chat, task_name, n, *, constrained=True, offset=0):
    """``n`` requests for sample posts of a task (their lengths differ), constrained or not."""
    task = plugins.task(task_name)
    records = read_records(f"sample:{task_name}")[offset:offset + n]
    fmt = task.response_format() if constrained else None
    return [GenerationRequest(id=f"{task_name}-{i}", prompt=chat.render(task.instruction, r.input), stop=chat.stop,
                              response_format=fmt) for i, r in enumerate(records)]


def test_greedy_equals_transformers_generate(glm, tiny_models, plugins, chat):
    from transformers import AutoModelForCausalLM

    requests = requests_for(plugins, chat, "depression", 2, constrained=False)
    completions = glm.generate(requests)
    model = AutoModelForCausalLM.from_pretrained(tiny_models["glm"], dtype=torch.float32)
    eos = model.generation_config.eos_token_id
    for request, completion in zip(requests, completions):
        ids = glm.tokenizer(request.prompt, add_special_tokens=False).input_ids
        assert ids[:2] == glm.tokenizer.convert_tokens_to_ids(["[gMASK]", "<sop>"])  # nothing added in front
        with torch.no_grad():
            out = model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                                 max_new_tokens=24, do_sample=False, eos_token_id=eos, pad_token_id=eos[0])
        new = out[0, len(ids):].tolist()
        stopped = next((i for i, t in enumerate(new) if t in eos), None)
        expected = glm.tokenizer.decode(new[:stopped], skip_special_tokens=False)
        assert completion.text == expected
        assert completion.usage == {"prompt_tokens": len(ids), "completion_tokens": len(new[:stopped])}
        assert completion.finish_reason == ("length" if stopped is None else "stop")


def test_checkpoint_generation_settings_do_not_leak(glm, tiny_models, tmp_path, plugins, chat):
    # A chat checkpoint's generation_config.json often asks for sampling or penalties; the
    # backend's own options decide (greedy here), or torch and llama.cpp would drift apart.
    shutil.copytree(tiny_models["glm"], tmp_path / "chatty")
    path = tmp_path / "chatty" / "generation_config.json"
    settings = json.loads(path.read_text())
    settings.update(do_sample=True, temperature=0.8, top_p=0.8, repetition_penalty=1.5, no_repeat_ngram_size=2)
    path.write_text(json.dumps(settings))
    requests = requests_for(plugins, chat, "depression", 1) + requests_for(plugins, chat, "depression", 1,
                                                                          constrained=False, offset=1)
    with TorchBackend(str(tmp_path / "chatty"), {**CPU, "max_new_tokens": 24}) as chatty:
        assert chatty.generate(requests) == glm.generate(requests)
        assert chatty.eos_ids == glm.eos_ids == set(settings["eos_token_id"])


def test_batched_equals_one_by_one(glm, plugins, chat):
    # Four prompts of different lengths, two formats and one unconstrained request in one batch.
    requests = (requests_for(plugins, chat, "depression", 2) + requests_for(plugins, chat, "suicide-risk", 1)
                + requests_for(plugins, chat, "cognitive-pathway", 1, constrained=False))
    assert len({glm.token_count(r.prompt) for r in requests}) == 4
    batched = glm.generate(requests)
    assert batched == [glm.generate([r])[0] for r in requests]


def test_constrained_answers_follow_the_format(tiny_models, plugins, chat):
    free_runs = 0
    for model in ("glm", "glm4"):
        with TorchBackend(str(tiny_models[model]), {**CPU, "max_new_tokens": 72}) as backend:
            for name in TASKS:
                task, fmt = plugins.task(name), plugins.task(name).response_format()
                requests = requests_for(plugins, chat, name, 2)
                constrained = backend.generate(requests)
                for completion in constrained:
                    assert fmt.allows(completion.text.encode()), completion.text
                    assert task.parse(completion.text).valid, completion.text
                    free_runs += fmt.in_free_text(completion.text.encode())
                if name == "depression":  # random tiny models babble: without the constraint they miss the format
                    free = backend.generate([GenerationRequest(r.id, r.prompt, r.stop) for r in requests])
                    assert [c.text for c in free] != [c.text for c in constrained]
                    assert not all(fmt.allows(c.text.encode()) for c in free)
    assert free_runs >= 8  # most answers reach the free explanation within the budget


def test_constrained_option_off_ignores_the_format(tiny_models, plugins, chat):
    requests = requests_for(plugins, chat, "suicide-risk", 2)
    with TorchBackend(str(tiny_models["glm"]), {**CPU, "max_new_tokens": 16, "constrained": False}) as backend:
        off = backend.generate(requests)
        assert off == backend.generate([GenerationRequest(r.id, r.prompt, r.stop) for r in requests])


def test_per_request_budget_and_text_stops(glm, plugins, chat):
    request = requests_for(plugins, chat, "depression", 1, constrained=False)[0]
    full = glm.generate([request])[0]
    short = glm.generate([GenerationRequest(request.id, request.prompt, request.stop, max_new_tokens=5)])[0]
    assert short.usage["completion_tokens"] == 5 and short.finish_reason == "length"
    assert full.text.startswith(short.text)
    # A stop string of several tokens inside the output (not one token, so a text check finds it).
    stop = next(full.text[i:i + 2] for i in range(4, len(full.text) - 1)
                if "\ufffd" not in full.text[i:i + 2] and glm.token_count(full.text[i:i + 2]) > 1)
    cut = glm.generate([GenerationRequest(request.id, request.prompt, request.stop + (stop,))])[0]
    assert cut.text == full.text[:full.text.index(stop)] and cut.finish_reason == "stop"
    assert cut.usage["completion_tokens"] < full.usage["completion_tokens"]  # generation stopped there


def test_score_labels_equals_manual_log_softmax(glm, tiny_models, plugins, chat):
    from transformers import AutoModelForCausalLM

    task = plugins.task("depression")
    prompt = chat.render(task.instruction, "最近总是失眠，什么都不想做")
    candidates = [f"标签：{label}" for label in task.label_names] + ["标签：抑郁\n解释：失眠。"]
    scores = glm.score_labels(prompt, candidates)
    model = AutoModelForCausalLM.from_pretrained(tiny_models["glm"], dtype=torch.float32)
    tokenize = glm.tokenizer
    prompt_ids = tokenize(prompt, add_special_tokens=False).input_ids
    for candidate, score in zip(candidates, scores):
        ids = tokenize(candidate, add_special_tokens=False).input_ids
        with torch.no_grad():
            logits = model(torch.tensor([prompt_ids + ids])).logits[0].double()
        logprobs = torch.log_softmax(logits, dim=-1)
        expected = sum(float(logprobs[len(prompt_ids) - 1 + i, t]) for i, t in enumerate(ids))
        assert score == pytest.approx(expected, abs=1e-4)
    assert glm.score_labels(prompt, []) == []


@pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing")  # raised inside peft.get_peft_model
def test_adapter_unmerged_equals_merged(tiny_models, tmp_path, plugins, chat):
    peft = pytest.importorskip("peft")
    from transformers import AutoModelForCausalLM

    base_dir = tiny_models["glm"]
    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    config = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"],
                             init_lora_weights=False)
    torch.manual_seed(3)
    peft.get_peft_model(base, config).save_pretrained(tmp_path / "adapter")
    assert (tmp_path / "adapter" / "adapter_model.safetensors").is_file()
    fresh = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    merged = peft.PeftModel.from_pretrained(fresh, tmp_path / "adapter").merge_and_unload()
    merged.save_pretrained(tmp_path / "merged")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copyfile(base_dir / name, tmp_path / "merged" / name)

    requests = requests_for(plugins, chat, "depression", 2) + requests_for(plugins, chat, "suicide-risk", 1,
                                                                          constrained=False)
    with TorchBackend(str(base_dir), {**CPU, "max_new_tokens": 20, "adapter": str(tmp_path / "adapter")}) as lora:
        assert type(lora.hf_model).__name__.startswith("PeftModel")  # applied, not merged
        with_adapter = lora.generate(requests)
        labels = ["标签：抑郁", "标签：非抑郁"]
        lora_scores = lora.score_labels(requests[0].prompt, labels)
    with TorchBackend(str(tmp_path / "merged"), {**CPU, "max_new_tokens": 20}) as backend:
        assert with_adapter == backend.generate(requests)
        assert lora_scores == pytest.approx(backend.score_labels(requests[0].prompt, labels), abs=1e-4)
    with TorchBackend(str(base_dir), {**CPU, "max_new_tokens": 20}) as plain:
        assert plain.generate(requests) != with_adapter  # the adapter changes the model


def test_from_model_wraps_a_loaded_model_and_leaves_it_to_the_caller(glm, tiny_models, plugins, chat):
    """What training validation uses: the same generation and scoring as a backend that loaded the model itself,
    without moving, re-configuring or freeing the caller's model."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_models["glm"], dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_models["glm"])
    before = model.generation_config.to_dict()
    requests = requests_for(plugins, chat, "depression", 2) + requests_for(plugins, chat, "depression", 1,
                                                                          constrained=False, offset=2)
    with TorchBackend.from_model(model, tokenizer, {"max_new_tokens": 24}) as wrapped:
        assert wrapped.device == torch.device("cpu") and wrapped.eos_ids == glm.eos_ids
        assert wrapped.generate(requests) == glm.generate(requests)
        prompt = requests[0].prompt + "标签："
        assert wrapped.score_labels(prompt, ["抑郁", "非抑郁"]) == glm.score_labels(prompt, ["抑郁", "非抑郁"])
        assert model.generation_config.to_dict() == before  # put back after every generate call
    assert wrapped.hf_model is None
    with pytest.raises(MentalGLMError, match="closed"):
        wrapped.generate(requests)
    assert not model.training and next(model.parameters()).device.type == "cpu"
    with torch.no_grad():
        assert model(torch.tensor([[1, 2, 3]])).logits.shape[-1] > 0  # still the caller's, still usable
    with pytest.raises(OptionsError, match="option 'adapter': not for a model already loaded"):
        TorchBackend.from_model(model, tokenizer, {"adapter": "lora"})


def test_seeded_sampling_is_reproducible(tiny_models, plugins, chat):
    requests = requests_for(plugins, chat, "depression", 2) + requests_for(plugins, chat, "suicide-risk", 1,
                                                                          constrained=False)
    options = {**CPU, "max_new_tokens": 20, "temperature": 0.8, "top_p": 0.95, "seed": 7}
    with TorchBackend(str(tiny_models["glm"]), options) as backend:
        first = backend.generate(requests)
        assert backend.generate(requests) == first
        fmt = requests[0].response_format
        assert all(fmt.allows(c.text.encode()) for c in first[:2])
    with TorchBackend(str(tiny_models["glm"]), {**options, "seed": 8}) as other:
        assert other.generate(requests) != first


def test_misspelt_and_bad_options():
    with pytest.raises(OptionsError, match="Did you mean 'dtype'"):
        TorchBackend.parse_options({"dtyp": "float32"})
    for bad in ({"device": "gpu"}, {"dtype": "float8"}, {"temperature": -1}, {"top_p": 0}):
        with pytest.raises(OptionsError):
            TorchBackend.parse_options(bad)
    options = TorchBackend.parse_options({"device": "cuda:1", "constrained": "false", "max_new_tokens": "8"})
    assert (options.device, options.constrained, options.max_new_tokens) == ("cuda:1", False, 8)


def test_unloadable_models_give_one_line_errors(tiny_models, tmp_path):
    chatglm = tiny_models["chatglm"]
    with pytest.raises(MentalGLMError) as info:
        TorchBackend(str(chatglm), CPU)
    message = str(info.value)
    assert message == (f"{chatglm} is in the original ChatGLM layout; run `mentalglm convert --model {chatglm} "
                       f"-o {chatglm}-hf` first (no remote code is run)")
    for model, expected in ((tmp_path / "nowhere", "no such model directory"), (tmp_path, "no config.json")):
        with pytest.raises(MentalGLMError, match=expected) as info:
            TorchBackend(str(model), CPU)
        assert "\n" not in str(info.value)
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    shutil.copyfile(tiny_models["glm"] / "config.json", pickled / "config.json")
    (pickled / "pytorch_model.bin").write_bytes(b"not loaded")
    with pytest.raises(MentalGLMError, match="no .safetensors weights"):
        TorchBackend(str(pickled), CPU)
    with pytest.raises(MentalGLMError, match="not a peft adapter directory"):
        TorchBackend(str(tiny_models["glm"]), {**CPU, "adapter": str(tmp_path)})
    with pytest.raises(OptionsError, match="needs a model"):
        TorchBackend(None, CPU)


def test_counts_close_and_context_manager(tiny_models):
    backend = TorchBackend(str(tiny_models["glm"]), CPU)
    assert backend.token_count("[gMASK]<sop>") == 2
    assert backend.context_length == 2048
    assert backend.capabilities == {"generate", "score_labels", "train"}
    backend.close()
    backend.close()  # twice is fine
    assert backend.hf_model is None
    with pytest.raises(MentalGLMError, match="closed"):
        backend.generate([GenerationRequest("1", "[gMASK]<sop>你好")])
    with TorchBackend(str(tiny_models["glm4"]), CPU) as inner:
        assert inner.generate([]) == []
    assert inner.hf_model is None


def test_token_bytes_follow_llama_cpp_pieces(glm):
    from mentalglm.modelfiles.tokens import str_to_token

    table = glm.token_table
    assert len(table) == glm.hf_model.get_output_embeddings().out_features > len(glm.tokenizer)
    assert table[len(glm.tokenizer):] == [None] * (len(table) - len(glm.tokenizer))  # padded rows: no piece
    user = glm.tokenizer.convert_tokens_to_ids("<|user|>")
    assert table[user] == b"<|user|>"  # control tokens: their text, as llama.cpp renders them for grammars
    ids = glm.tokenizer("标签：非抑郁\n解释：最近总是失眠😭", add_special_tokens=False).input_ids
    assert b"".join(table[i] for i in ids) == "标签：非抑郁\n解释：最近总是失眠😭".encode()
    for token, index in list(glm.tokenizer.get_vocab().items())[:300]:
        if index not in glm.tokenizer.added_tokens_decoder:
            assert table[index] == str_to_token(token)
    assert token_bytes_table(glm.tokenizer, 10) == table[:10]


@pytest.mark.parametrize("state, data, expected", [
    ((0, 0), "好".encode(), (0x597D, 0, 1)),
    ((0, 0), b"\xe5\xa5", (0x5 << 6 | 0x25, 1, 0)),      # an unfinished character
    ((0x165, 1), b"\xbd", (0x597D, 0, 1)),              # ... finished by the next token
    ((0x165, 1), b"a", None),                            # a new character where a continuation is due
    ((0, 0), b"\xbd", None),                             # a continuation byte with nothing to continue
    ((0, 0), b"\xc0", None),                             # a 7-bit character split over two bytes (overlong)
    ((0, 0), b"\xe0", (0, 2, 0)),                        # llama.cpp accepts this lead byte alone ...
    ((0, 2), b"\x80", None),                             # ... but not an overlong continuation of it
    ((0, 2), b"\x82", (2, 1, 0)),                        # ... while this one passes, as in llama.cpp
    ((0, 0), b"\x00", None),                             # NUL pieces are masked
    ((0, 0), b"ab\x00\xff", (ord("b"), 0, 2)),           # llama.cpp reads pieces as C strings
    ((0, 0), b"", None),                                 # ids without a piece
])
def test_utf8_step_mirrors_llama_cpp(state, data, expected):
    assert utf8_step(state, data) == expected


def test_no_end_of_answer_after_a_token_that_completes_no_character(glm, plugins):
    # llama.cpp's grammar cannot end right after a token that completes no character (a lone
    # lead byte); torch masks the end tokens there too, so greedy decoding stays identical.
    fmt = plugins.task("depression").response_format()
    table = glm.token_table
    lead, middle, last = (table.index(bytes([b])) for b in "好".encode())
    answer = glm.tokenizer("标签：抑郁\n解释：", add_special_tokens=False).input_ids
    end = min(glm.eos_ids)
    scores = torch.zeros(1, len(table))
    scores[0, end] = 10.0
    for generated, may_end in ((answer, True), (answer + [lead], False), (answer + [lead, middle], False),
                               (answer + [lead, middle, last], True)):
        processor = ConstrainedLogitsProcessor([fmt], 0, table, glm.eos_ids, greedy=True)
        masked = processor(torch.tensor([generated]), scores)
        assert (int(masked.argmax()) == end) is may_end
    processor = ConstrainedLogitsProcessor([fmt], 0, table, glm.eos_ids, greedy=True)
    assert int(processor(torch.tensor([answer[:3]]), scores).argmax()) != end  # not before the explanation


def test_module_imports_without_torch():
    code = textwrap.dedent("""
        import json, sys
        for name in ("torch", "transformers", "peft"):
            sys.modules[name] = None  # any import of them now fails
        from mentalglm.backends.torch_backend import TorchBackend
        info = TorchBackend.describe()
        print(json.dumps([info["name"], [o["name"] for o in info["options"]]]))
    """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    name, options = json.loads(result.stdout)
    assert name == "torch"
    assert {"device", "dtype", "adapter", "constrained", "temperature", "top_p", "trust_remote_code",
            "max_new_tokens", "seed"} == set(options)


def test_registered_as_a_builtin_backend(plugins):
    assert plugins.backend_class("torch") is TorchBackend
