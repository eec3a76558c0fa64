"""LoRA merge equals peft: merged directory and GGUF export with --adapter, and clear mismatch errors."""

from __future__ import annotations

import json

import numpy as np
import pytest

from models import hf_logits, llama_logits, load_llama

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_up_proj", "down_proj"]


def _ids(model_dir):
    from transformers import AutoTokenizer

    text = "[gMASK]<sop><|user|>\n评估自杀风险。\n都安排好了，明天去江边。<|assistant|>\n标签："
    return AutoTokenizer.from_pretrained(model_dir).encode(text, add_special_tokens=False)


@pytest.fixture(scope="module")
def adapter(tiny_models, tmp_path_factory):
    """A peft LoRA adapter on the tiny glm with random A and B (peft's default B = 0 would merge to nothing),
    rsLoRA and per-module rank/alpha patterns, and its unmerged logits."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(tiny_models["glm"], dtype=torch.float32)
    config = LoraConfig(r=4, lora_alpha=8, target_modules=TARGETS, init_lora_weights=False, use_rslora=True,
                        rank_pattern={"q_proj": 2}, alpha_pattern={"down_proj": 16})
    model = get_peft_model(base, config)
    folder = tmp_path_factory.mktemp("adapter")
    model.save_pretrained(folder)
    ids = _ids(tiny_models["glm"])
    with torch.no_grad():
        unmerged = model(torch.tensor([ids])).logits[0].numpy()
        merged_state = {k: v.clone() for k, v in model.merge_and_unload().state_dict().items()}
    return {"dir": folder, "ids": ids, "logits": unmerged, "peft_merged": merged_state}


def test_merged_directory_equals_peft(adapter, tiny_models, tmp_path):
    from safetensors.torch import load_file

    from mentalglm.converters.lora import merge_lora

    out = merge_lora(tiny_models["glm"], adapter["dir"], tmp_path / "merged")
    ours = load_file(out / "model.safetensors")
    for name, tensor in adapter["peft_merged"].items():
        assert np.allclose(ours[name].numpy(), tensor.numpy(), atol=1e-6), name
    logits = hf_logits(out, adapter["ids"])
    assert np.abs(logits - adapter["logits"]).max() <= 1e-4
    assert ((out / "tokenizer.json").exists()
            and json.loads((out / "config.json").read_text())["architectures"] == ["GlmForCausalLM"])


def test_export_with_adapter_equals_peft_in_llama_cpp(adapter, tiny_models, tmp_path):
    from mentalglm.converters.gguf_export import export_gguf
    from mentalglm.converters.gguf_inspect import inspect_gguf

    result = export_gguf(tiny_models["glm"], tmp_path / "tuned.gguf", outtype="f32", adapter_dir=adapter["dir"])
    assert inspect_gguf(result.path)["provenance"]["mentalglm.adapter"] == adapter["dir"].name
    llm = load_llama(result.path)
    assert np.abs(llama_logits(llm, adapter["ids"]) - adapter["logits"]).max() <= 1e-3
    llm.close()


def test_adapter_for_another_base_is_a_clear_error(adapter, tmp_path):
    from mentalglm.converters.lora import merge_lora
    from mentalglm.core.errors import MentalGLMError
    from mentalglm.demo.tiny import build_tiny_glm

    other = build_tiny_glm(tmp_path / "other", arch="glm", hidden_size=64, num_layers=2, intermediate_size=128, seed=5)
    with pytest.raises(MentalGLMError, match="do not fit base weight.*wrong base model"):
        merge_lora(other, adapter["dir"], tmp_path / "out")
    deeper = build_tiny_glm(tmp_path / "one-layer", arch="glm", hidden_size=128, num_layers=1, intermediate_size=256,
                            seed=6)
    with pytest.raises(MentalGLMError, match="which the base model .* lacks"):
        merge_lora(deeper, adapter["dir"], tmp_path / "out2")


def test_not_an_adapter_and_unsupported_features(tmp_path):
    from mentalglm.converters.lora import LoraAdapter
    from mentalglm.core.errors import MentalGLMError

    with pytest.raises(MentalGLMError, match="adapter_config.json: missing"):
        LoraAdapter(tmp_path)
    (tmp_path / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "use_dora": True}))
    with pytest.raises(MentalGLMError, match="use_dora"):
        LoraAdapter(tmp_path)
    (tmp_path / "adapter_config.json").write_text(json.dumps({"peft_type": "PREFIX_TUNING"}))
    with pytest.raises(MentalGLMError, match="only LORA"):
        LoraAdapter(tmp_path)
