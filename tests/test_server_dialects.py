"""Server dialects: telling servers apart from their signs, writing each one's constraint, judging answers.

The signs are the answers of the real servers (vLLM 0.32 and llama-cpp-python 0.3.36, queried on
loopback) and of llama.cpp's llama-server as its source writes them; tests/test_openai_backend.py
drives the same code over HTTP, against fakes and the real llama-cpp-python server.
"""

from __future__ import annotations

import pytest

from mentalglm.backends import server_dialects as dialects
from mentalglm.backends.server_dialects import ServerInfo, advice, constraint, identify, violation
from mentalglm.core.errors import MentalGLMError

BASE = "http://gpu-box:8000/v1"
VLLM = {
    f"{BASE}/models": {"object": "list", "data": [{"id": "glm", "object": "model", "owned_by": "vllm",
                                                   "root": "/m", "parent": None, "max_model_len": 4096}]},
    "http://gpu-box:8000/version": {"version": "0.32.0"},
}
LLAMA_SERVER = {
    f"{BASE}/models": {"object": "list", "data": [{"id": "m.gguf", "object": "model", "owned_by": "llamacpp"}]},
    "http://gpu-box:8000/props": {"build_info": "b6500-abc1234", "default_generation_settings": {}},
}
LLAMA_CPP_PYTHON = {
    f"{BASE}/models": {"object": "list", "data": [{"id": "m.gguf", "object": "model", "owned_by": "me",
                                                   "permissions": []}]},
    "http://gpu-box:8000/openapi.json": {"info": {"title": "🦙 llama.cpp Python API", "version": "0.3.36"}},
}


def getter(answers):
    asked = []

    def get(url):
        asked.append(url)
        return answers.get(url)

    get.asked = asked
    return get


@pytest.mark.parametrize("answers, expected", [
    (VLLM, ("vLLM", "0.32.0", ("glm",))),
    (LLAMA_SERVER, ("llama.cpp server", "b6500-abc1234", ("m.gguf",))),
    (LLAMA_CPP_PYTHON, ("llama-cpp-python", "0.3.36", ("m.gguf",))),
    ({}, (None, None, ())),
    # an older vLLM or a proxy that rewrites owned_by: /version and vLLM's max_model_len still tell
    ({**VLLM, f"{BASE}/models": {"data": [{"id": "glm", "owned_by": "acme", "max_model_len": 4096}]}},
     ("vLLM", "0.32.0", ("glm",))),
    # a /version alone is not enough (other servers have one too)
    ({"http://gpu-box:8000/version": {"version": "1.2"}}, (None, "1.2", ())),
])
def test_identify(answers, expected):
    engine, version, signs, models = identify(getter(answers), BASE)
    assert (engine, version, models) == expected
    assert signs


def test_identify_asks_only_what_it_needs():
    get = getter(VLLM)
    identify(get, BASE)
    assert get.asked == [f"{BASE}/models", "http://gpu-box:8000/version"]


@pytest.mark.parametrize("base, root", [("http://h:8000/v1", "http://h:8000"), ("https://h/api/v1", "https://h/api"),
                                        ("http://h:8080", "http://h:8080")])
def test_server_root(base, root):
    assert dialects.server_root(base) == root


@pytest.mark.parametrize("engine, dialect", [("vLLM", "vllm"), ("llama-cpp-python", "llama.cpp"),
                                             ("llama.cpp server", "llama.cpp"), (None, "openai")])
def test_dialect_of(engine, dialect):
    assert dialects.dialect_of(engine) == dialect


# -- constraints ----------------------------------------------------------------------------------
def test_constraint_fields(tasks):
    fmt = tasks["cognitive-distortion"].response_format()
    vllm = constraint("vllm", fmt)
    assert vllm.sent_as == "structured_outputs.grammar"
    assert vllm.fields == {"structured_outputs": {"grammar": fmt.gbnf()}}
    llama = constraint("llama.cpp", fmt)
    assert (llama.sent_as, llama.fields) == ("grammar", {"grammar": fmt.gbnf()})
    custom = constraint("vllm", fmt, grammar_field="my_grammar")
    assert (custom.sent_as, custom.fields) == ("my_grammar", {"my_grammar": fmt.gbnf()})
    with pytest.raises(dialects.ConstraintUnsupported):
        constraint("openai", fmt)


def test_label_only_constraint(tasks):
    fmt = tasks["suicide-risk"].response_format()
    choices = ["标签：高自杀风险", "标签：低自杀风险"]
    vllm = constraint("vllm", fmt, label_only=True)
    assert vllm.fields == {"structured_outputs": {"choice": choices}} and vllm.choices == tuple(choices)
    assert constraint("llama.cpp", fmt, label_only=True).fields == {"grammar": dialects.choice_gbnf(choices)}
    with pytest.raises(MentalGLMError, match="needs a single-label task; this one is hierarchical"):
        constraint("vllm", tasks["cognitive-pathway"].response_format(), label_only=True)


def test_choice_gbnf_escapes_like_the_task_grammar():
    """Quotes, backslashes and newlines are escaped as ResponseFormat.gbnf() escapes them (llama.cpp's rules);
    the real llama-cpp-python server runs these grammars in tests/test_openai_backend.py."""
    assert dialects.choice_gbnf(['他说"是\\否"', "第二行\n"]) == 'root ::= "他说\\"是\\\\否\\"" | "第二行\\n"\n'


# -- judging answers ------------------------------------------------------------------------------
@pytest.mark.parametrize("text, finish_reason, problem", [
    ("标签：抑郁\n解释：长期失眠。", "stop", None),
    ("标签：抑郁\n解释：", "stop", None),
    ("标签：抑", "length", None),
    ("标签：抑郁\n解释：失眠\ufffd", "length", None),
    ("标签：抑\ufffd", "length", None),  # a character split by the budget, shown as U+FFFD
    ("标签：抑郁", "stop", "stopped before the explanation"),
    ("", "stop", "stopped before the explanation"),
    ("12345", "stop", "is outside the answer grammar"),
    ("12345", "length", "is outside the answer grammar"),
    ("标签：开心\n解释：", "stop", "is outside the answer grammar"),
    ("标签：抑\ufffd", "stop", "is outside the answer grammar"),
])
def test_violation_of_a_full_answer(tasks, text, finish_reason, problem):
    assert violation(text, finish_reason, tasks["depression"].response_format()) == problem


@pytest.mark.parametrize("text, finish_reason, problem", [
    ("标签：抑郁", "stop", None), ("标签：非", "length", None),
    ("标签：抑郁\n解释：", "stop", "is not one of the allowed label lines"),
    ("标签：非", "stop", "is not one of the allowed label lines"),
])
def test_violation_of_a_label_only_answer(tasks, text, finish_reason, problem):
    assert constraint("vllm", tasks["depression"].response_format(), label_only=True).violation(
        text, finish_reason) == problem


def test_the_canary_prompt_is_far_from_the_canary_grammar():
    assert not dialects.CANARY_FORMAT.allows(b"12345")
    assert not dialects.CANARY_FORMAT.allows(dialects.CANARY_PROMPT.encode())
    assert violation("甲部：子一、子三｜摘要\n乙部：无\n解释：", "stop", dialects.CANARY_FORMAT) is None


# -- advice -----------------------------------------------------------------------------------------
def test_advice_names_the_dialect_the_signs_point_to():
    vllm_as_llama = ServerInfo("llama.cpp", "vLLM", "0.32.0", "server option", forced=True)
    assert advice(vllm_as_llama, "grammar") == ("this server looks like vLLM 0.32.0, which takes constraints in "
                                                "structured_outputs: set server=vllm or server=auto")
    assert "drop grammar_field" in advice(ServerInfo("vllm", "vLLM", "0.32.0"), "grammar")
    assert "constrained=false" in advice(ServerInfo("vllm", "vLLM", "0.32.0"), "structured_outputs.grammar")
    assert "set server=vllm or server=llama.cpp" in advice(ServerInfo("llama.cpp"), "grammar")
    assert ServerInfo("openai").describe() == "an OpenAI-compatible server of unknown make"
