"""Export refuses bad input in one line and never leaves a half-written file under the output name."""

from __future__ import annotations

import json
import shutil

import pytest

from mentalglm.core.errors import MentalGLMError


def _copy(src, dst):
    shutil.copytree(src, dst)
    return dst


def test_unsupported_architecture_is_named_with_the_supported_ones(tiny_models, tmp_path):
    from mentalglm.converters.gguf_export import export_gguf

    model = _copy(tiny_models["glm"], tmp_path / "llama")
    config = json.loads((model / "config.json").read_text())
    config["architectures"] = ["LlamaForCausalLM"]
    (model / "config.json").write_text(json.dumps(config))
    with pytest.raises(MentalGLMError, match=r"unsupported architecture LlamaForCausalLM; supported: GlmForCausalLM"):
        export_gguf(model, tmp_path / "x.gguf")
    assert not (tmp_path / "x.gguf").exists()


def test_missing_pieces(tiny_models, tmp_path):
    from safetensors.numpy import load_file, save_file

    from mentalglm.converters.gguf_export import export_gguf

    with pytest.raises(MentalGLMError, match="not a model directory"):
        export_gguf(tmp_path / "nowhere", tmp_path / "x.gguf")
    model = _copy(tiny_models["glm"], tmp_path / "holes")
    tensors = load_file(model / "model.safetensors")
    tensors.pop("model.layers.1.mlp.down_proj.weight")
    save_file(tensors, model / "model.safetensors")
    with pytest.raises(MentalGLMError, match=r"tensor 'model.layers.1.mlp.down_proj.weight' missing"):
        export_gguf(model, tmp_path / "x.gguf")
    (model / "tokenizer.json").unlink()
    with pytest.raises(MentalGLMError):
        export_gguf(model, tmp_path / "x.gguf")
    pickled = _copy(tiny_models["glm"], tmp_path / "pickled")
    (pickled / "model.safetensors").rename(pickled / "pytorch_model.bin")
    with pytest.raises(MentalGLMError, match="pickle checkpoints are not loaded"):
        export_gguf(pickled, tmp_path / "x.gguf")


def test_failure_midway_leaves_no_partial_file_and_keeps_the_old_one(tiny_models, tmp_path, monkeypatch):
    from mentalglm.converters import gguf_export

    target = tmp_path / "model.gguf"
    target.write_bytes(b"previous good file")
    calls = {"n": 0}
    real = gguf_export._encode

    def failing(block, kind):
        calls["n"] += 1
        if calls["n"] == 5:
            raise OSError("disk full")
        return real(block, kind)

    monkeypatch.setattr(gguf_export, "_encode", failing)
    for outtype in ("q8_0", "q4_k_m"):
        calls["n"] = 0
        with pytest.raises(OSError, match="disk full"):
            gguf_export.export_gguf(tiny_models["glm"], target, outtype=outtype)
        assert target.read_bytes() == b"previous good file"
        assert sorted(p.name for p in tmp_path.iterdir()) == ["model.gguf"]


def test_cli_export_and_inspect(tiny_models, tmp_path):
    from conftest import run_cli

    out = tmp_path / "m.gguf"
    result = run_cli("export", "--model", str(tiny_models["glm4"]), "--outtype", "q8_0", "-o", str(out), "--json")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["file_bytes"] == out.stat().st_size and summary["architecture"] == "glm4"
    assert summary["memory_bytes"] == summary["file_bytes"] + summary["kv_cache_bytes"]
    assert result.stderr == ""  # llama.cpp and gguf chatter stays off stderr by default
    info = json.loads(run_cli("inspect", str(out), "--json").stdout)
    assert info["architecture"] == "glm4" and info["tensor_types"]["Q8_0"] > 0
    human = run_cli("inspect", str(out)).stdout
    assert "glm4" in human and "chatglm-bpe" in human and "provenance:" in human
    bad = run_cli("export", "--model", str(tiny_models["glm4"]), "-o", str(tmp_path / "missing" / "m.gguf"))
    assert bad.returncode == 1 and bad.stderr.strip().endswith("does not exist") and "Traceback" not in bad.stderr
    not_gguf = run_cli("inspect", str(tiny_models["glm4"] / "config.json"))
    assert not_gguf.returncode == 1 and "not a readable GGUF file" in not_gguf.stderr
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(out.read_bytes()[: out.stat().st_size // 2])
    truncated = run_cli("inspect", str(cut))
    assert truncated.returncode == 1 and len(truncated.stderr.strip().splitlines()) == 1
    assert (f"truncated: expected {out.stat().st_size:,} bytes, found {cut.stat().st_size:,}"
            in truncated.stderr), truncated.stderr


def test_cli_convert_and_merge_errors(tiny_models, tmp_path):
    from conftest import run_cli

    out = tmp_path / "imported"
    result = run_cli("convert", "--model", str(tiny_models["chatglm"]), "-o", str(out), "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads((out / "config.json").read_text())["architectures"] == ["GlmForCausalLM"]
    not_chatglm = run_cli("convert", "--model", str(tiny_models["glm"]), "-o", str(tmp_path / "x"))
    assert not_chatglm.returncode == 1 and "not a ChatGLM config" in not_chatglm.stderr
    no_adapter = run_cli("merge", "--model", str(tiny_models["glm"]), "--adapter", str(tmp_path),
                         "-o", str(tmp_path / "m"))
    assert no_adapter.returncode == 1 and "adapter_config.json: missing" in no_adapter.stderr
