"""Run records know the model: its content, what was resolved at load time, and the engine versions."""

from __future__ import annotations

import shutil

import pytest

from mentalglm import Analyzer, MentalGLMError, Post

POSTS = [Post(id="1", text="最近总是失眠，什么都不想做"), Post(id="2", text="今天和朋友去爬山")]


def test_a_reexported_gguf_at_the_same_path_is_not_resumed(exported, tmp_path):
    model = tmp_path / "model.gguf"
    shutil.copy(exported("glm", "f32"), model)
    options = {"parallel": 1, "n_ctx": 256, "max_new_tokens": 8}
    with Analyzer("depression", backend="llamacpp", model=str(model), options=options) as analyzer:
        analyzer.run(POSTS[:1], tmp_path / "out.jsonl", progress=False)
        recorded = analyzer.settings()["model_identity"]
    assert recorded["parallel"] == 1 and len(recorded["model_sha256"]) == 64 and recorded["llama_cpp_python"]
    shutil.copy(exported("glm", "f16"), model)  # another file, same path
    with Analyzer("depression", backend="llamacpp", model=str(model), options=options) as analyzer:
        with pytest.raises(MentalGLMError, match=r"other settings: model_identity\.model_sha256 \(was "):
            analyzer.run(POSTS, tmp_path / "out.jsonl", progress=False)


def test_the_effective_parallel_is_recorded_not_the_option(exported):
    with Analyzer("depression", backend="llamacpp", model=str(exported("glm", "f32")),
                  options={"n_ctx": 256}) as analyzer:
        settings = analyzer.settings()
    assert settings["options"]["parallel"] is None
    assert settings["model_identity"]["parallel"] == analyzer.backend.parallel


def test_torch_records_the_resolved_device_dtype_and_versions(tiny_models, one_torch_thread):
    import importlib.metadata

    with Analyzer("depression", backend="torch", model=str(tiny_models["glm"])) as analyzer:
        identity = analyzer.settings()["model_identity"]
    assert analyzer.settings()["options"]["device"] == "auto"
    assert identity["device"] == "cpu" and identity["dtype"] == "torch.float32"
    assert identity["torch"] == importlib.metadata.version("torch")
    assert identity["adapter_sha256"] is None and len(identity["model_sha256"]) == 64


def test_a_big_file_is_hashed_once_and_again_when_it_changes(tmp_path, monkeypatch):
    import mentalglm.core.files as files

    monkeypatch.setattr(files, "DIGEST_CACHE", tmp_path / "cache" / "digests.json")
    reads = []
    original = files.file_sha256
    monkeypatch.setattr(files, "file_sha256", lambda path: reads.append(path) or original(path))
    model = tmp_path / "m.gguf"
    model.write_bytes(b"weights-1")
    first = files.content_sha256(model)
    assert files.content_sha256(model) == first and len(reads) == 1  # the second time from the cache
    model.write_bytes(b"weights-2")
    assert files.content_sha256(model) != first and len(reads) == 2
    folder = tmp_path / "adapter"
    folder.mkdir()
    (folder / "a.safetensors").write_bytes(b"x")
    before = files.content_sha256(folder)
    (folder / "b.json").write_text("{}")
    assert files.content_sha256(folder) != before
