"""Any model, not only GLM: ``--prompt auto`` renders the model's own chat template as transformers does, and
BOS is added once where the model asks for it — the same token ids in torch and llama.cpp."""

from __future__ import annotations

import json
import shutil

import pytest

from mentalglm import Analyzer, MentalGLMError, Post
from mentalglm.core.prompt import GLM4_CHAT, ChatTemplate, ChatTemplateError, render_chat_template

pytest.importorskip("transformers")

#: SmolLM2-135M-Instruct's template as its GGUF carries it (ChatML with a default system turn).
CHATML = ("{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
          "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}"
          "{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
          "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
#: A Gemma-style template: the text starts with {{ bos_token }}, and a system turn is refused.
GEMMA_LIKE = ("{{ bos_token }}{% for message in messages %}{% if message['role'] == 'system' %}"
              "{{ raise_exception('System role not supported') }}{% endif %}"
              "{{ '<start_of_turn>' + message['role'] + '\n' + message['content'] | trim + '<end_of_turn>\n' }}"
              "{% endfor %}{% if add_generation_prompt %}{{'<start_of_turn>model\n'}}{% endif %}")
POST = Post(id="1", text="最近总是失眠，什么都不想做")


def _model_with_template(source, target, template, **config):
    """A copy of a tiny model folder whose tokenizer_config.json carries ``template`` (None: no template)."""
    shutil.copytree(source, target)
    path = target / "tokenizer_config.json"
    tok_config = json.loads(path.read_text(encoding="utf-8"))
    tok_config.pop("chat_template", None)
    (target / "chat_template.jinja").unlink(missing_ok=True)
    if template is not None:
        tok_config["chat_template"] = template
    tok_config.update(config)
    path.write_text(json.dumps(tok_config, ensure_ascii=False), encoding="utf-8")
    return target


def _transformers_render(model_dir, messages) -> str:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


@pytest.mark.parametrize("system", [None, "你是一名心理咨询师。"])
def test_auto_on_a_glm_model_is_glm4_chat_and_equals_transformers(tiny_models, system):
    with Analyzer(task="depression", backend="torch", model=str(tiny_models["glm"]), prompt="auto",
                  system=system) as analyzer:
        rendered = analyzer.render(POST)
        instruction = analyzer.task.instruction
    assert rendered == GLM4_CHAT.render(instruction, POST.text, system)
    messages = ([{"role": "system", "content": system}] if system else []) + [
        {"role": "user", "content": f"{instruction}\n{POST.text}"}]
    assert rendered == _transformers_render(tiny_models["glm"], messages)


@pytest.mark.parametrize("template", [CHATML, GEMMA_LIKE], ids=["chatml", "gemma-like"])
@pytest.mark.parametrize("system", [None, "你是一名心理咨询师。"], ids=["no-system", "system"])
def test_auto_renders_other_families_as_transformers_does(tiny_models, tmp_path, template, system):
    model = _model_with_template(tiny_models["glm"], tmp_path / "m", template, bos_token="<sop>")
    messages = ([{"role": "system", "content": system}] if system else []) + [
        {"role": "user", "content": f"判断帖子。\n{POST.text}"}]
    if template is GEMMA_LIKE and system:
        import jinja2

        with pytest.raises(jinja2.TemplateError, match="System role not supported"):
            _transformers_render(model, messages)
        with pytest.raises(MentalGLMError, match=r"does not render \(System role not supported\).*--prompt plain"):
            Analyzer(task="depression", backend="torch", model=str(model), prompt="auto", system=system)
        return
    with Analyzer(task="depression", backend="torch", model=str(model), prompt="auto", system=system) as analyzer:
        ours = analyzer.prompt.render("判断帖子。", POST.text, system)
    assert ours == _transformers_render(model, messages)
    if template is GEMMA_LIKE:
        assert ours.startswith("<sop><start_of_turn>user\n")


def test_a_model_without_a_template_is_refused_never_guessed(tiny_models, tmp_path):
    model = _model_with_template(tiny_models["glm"], tmp_path / "m", None)
    with pytest.raises(MentalGLMError, match=r"has no chat template.*use --prompt plain"):
        Analyzer(task="depression", backend="torch", model=str(model), prompt="auto")


def test_templates_render_in_a_sandbox():
    escape = ChatTemplate("{{ messages.__class__.__mro__ }}", "test")
    with pytest.raises(ChatTemplateError):
        render_chat_template(escape, [{"role": "user", "content": "x"}])


def test_auto_on_a_gguf_reads_its_template(exported):
    with Analyzer(task="suicide-risk", backend="llamacpp", model=str(exported("glm", "f32")), prompt="auto",
                  options={"parallel": 1, "n_ctx": 512}) as analyzer:
        assert analyzer.render(POST) == GLM4_CHAT.render(analyzer.task.instruction, POST.text)
        assert analyzer.settings()["prompt"] == "auto"


def test_a_run_record_knows_which_template_rendered_the_prompts(tiny_models, tmp_path):
    chatml = _model_with_template(tiny_models["glm"], tmp_path / "a", CHATML)
    with Analyzer(task="depression", backend="torch", model=str(tiny_models["glm"]), prompt="auto") as glm:
        with Analyzer(task="depression", backend="torch", model=str(chatml), prompt="auto") as other:
            assert glm.settings()["prompt_sha256"] != other.settings()["prompt_sha256"]


# -- BOS as the model asks, once ------------------------------------------------------------------
def _with_bos(tiny_models, exported, tmp_path):
    """The tiny GLM as a model whose tokenizer and GGUF both ask for a BOS token (``<sop>``)."""
    from gguf import GGUFReader

    model = _model_with_template(tiny_models["glm"], tmp_path / "bos", None, bos_token="<sop>")
    tokenizer_path = model / "tokenizer.json"
    data = json.loads(tokenizer_path.read_text(encoding="utf-8"))
    sop = next(t["id"] for t in data["added_tokens"] if t["content"] == "<sop>")
    bos, first, second = ({"SpecialToken": {"id": "<sop>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                          {"Sequence": {"id": "B", "type_id": 1}})
    data["post_processor"] = {"type": "TemplateProcessing", "single": [bos, first], "pair": [bos, first, second],
                              "special_tokens": {"<sop>": {"id": "<sop>", "ids": [sop], "tokens": ["<sop>"]}}}
    tokenizer_path.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    gguf_path = tmp_path / "bos.gguf"
    shutil.copy(exported("glm", "f32"), gguf_path)
    reader = GGUFReader(gguf_path, "r+")  # llama.cpp's own gguf_set_metadata way: values edited in place
    for key, value in (("tokenizer.ggml.add_bos_token", True), ("tokenizer.ggml.bos_token_id", sop)):
        field = reader.fields[key]
        field.parts[field.data[0]][0] = value
    reader.data.flush()
    return model, gguf_path, sop


@pytest.mark.parametrize("text", ["判断帖子。\n好累\n", "<sop>判断帖子。\n好累\n",
                                  "[gMASK]<sop><|user|>\n好累<|assistant|>\n"],
                         ids=["plain", "bos-in-text", "glm4-chat"])
def test_bos_once_and_the_same_ids_in_torch_and_llamacpp(tiny_models, exported, tmp_path, text):
    from mentalglm.backends.llamacpp_backend import LlamaCppBackend
    from mentalglm.backends.torch_backend import TorchBackend

    model, gguf_path, sop = _with_bos(tiny_models, exported, tmp_path)
    with TorchBackend(str(model)) as torch_backend, LlamaCppBackend(str(gguf_path), {"parallel": 1}) as llama:
        ours_torch = torch_backend._encode(text, prompt=True)
        ours_llama = llama._tokenize(text)
    assert ours_torch == ours_llama
    assert ours_torch[0] == sop and ours_torch[1] != sop


def test_no_bos_where_the_model_does_not_ask(tiny_models, exported):
    from mentalglm.backends.llamacpp_backend import LlamaCppBackend
    from mentalglm.backends.torch_backend import TorchBackend

    text = GLM4_CHAT.render("判断帖子。", "好累")
    with TorchBackend(str(tiny_models["glm"])) as torch_backend, \
            LlamaCppBackend(str(exported("glm", "f32")), {"parallel": 1}) as llama:
        assert torch_backend._encode(text, prompt=True) == llama._tokenize(text)
        assert torch_backend._encode("好累", prompt=True) == torch_backend._encode("好累")


# -- named styles, against llama.cpp's own renderings of the same families -----------------------
def _llama_cpp_render(name: str, messages: list[dict]) -> str:
    """``llama_chat_apply_template`` with a built-in template name: llama.cpp's C++ rendering."""
    import ctypes

    llama_cpp = pytest.importorskip("llama_cpp")
    encoded = [(m["role"].encode("utf-8"), m["content"].encode("utf-8")) for m in messages]
    chat = (llama_cpp.llama_chat_message * len(encoded))()
    for slot, (role, content) in zip(chat, encoded):
        slot.role, slot.content = role, content
    size = 4096
    buffer = ctypes.create_string_buffer(size)
    written = llama_cpp.llama_chat_apply_template(name.encode(), chat, len(encoded), True, buffer, size)
    assert 0 < written <= size, f"llama.cpp does not know the template {name!r}"
    return buffer.raw[:written].decode("utf-8")


@pytest.mark.parametrize("style, reference", [("chatml", "chatml"), ("llama-3", "llama3"), ("gemma", "gemma")])
@pytest.mark.parametrize("system", [None, "你是一名心理咨询师。"], ids=["no-system", "system"])
@pytest.mark.parametrize("post", [POST.text, "  前后有空白，还有换行\n\n"], ids=["post", "padded-post"])
def test_named_styles_render_as_llama_cpp_does(pm, style, reference, system, post):
    prompt = pm.prompt(style)
    messages = ([{"role": "system", "content": system}] if system else []) + [
        {"role": "user", "content": f"判断帖子。\n{post}"}]
    assert prompt.render("判断帖子。", post, system) == _llama_cpp_render(reference, messages)
    assert prompt.messages("判断帖子。", post, system)[-1]["content"].strip() == f"判断帖子。\n{post}".strip()


@pytest.mark.parametrize("system", [None, "你是一名心理咨询师。"], ids=["no-system", "system"])
def test_qwen_is_chatml_with_qwens_default_system_turn(pm, system):
    qwen, chatml = pm.prompt("qwen"), pm.prompt("chatml")
    default = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."
    assert qwen.render("判断帖子。", POST.text, system) == chatml.render("判断帖子。", POST.text, system or default)
    assert qwen.render("判断帖子。", POST.text, system).startswith(f"<|im_start|>system\n{system or default}<|im_end|>")


def test_named_styles_stop_at_their_end_of_turn(pm):
    assert {name: pm.prompt(name).stop for name in ("chatml", "qwen", "llama-3", "gemma")} == {
        "chatml": ("<|im_end|>",), "qwen": ("<|im_end|>",), "llama-3": ("<|eot_id|>",), "gemma": ("<end_of_turn>",)}


def test_a_named_style_gets_the_models_bos_once(tiny_models, exported, tmp_path):
    """A named style writes no BOS: each backend adds the model's own, once, and both read the same ids."""
    model, gguf_path, sop = _with_bos(tiny_models, exported, tmp_path)
    ids = []
    for backend, path, options in (("torch", model, {}), ("llamacpp", gguf_path, {"parallel": 1})):
        with Analyzer(task="depression", backend=backend, model=str(path), prompt="gemma", options=options) as a:
            prompt = a.render(POST)
            assert prompt.startswith("<start_of_turn>user\n")
            ids.append(a.backend._encode(prompt, prompt=True) if backend == "torch" else a.backend._tokenize(prompt))
    assert ids[0] == ids[1]
    assert ids[0][0] == sop and ids[0][1] != sop
