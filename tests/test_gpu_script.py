"""benchmarks/gpu/run.sh on CPU: its dry run end to end, and the Python parts it relies on."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
GPU = ROOT / "benchmarks" / "gpu"
sys.path.insert(0, str(GPU))

import gpu_bench  # noqa: E402

pytest.importorskip("llama_cpp", reason="the GPU script drives llama.cpp")
pytest.importorskip("torch", reason="the GPU script measures torch too")


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu-dry-run")
    done = subprocess.run(["bash", str(GPU / "run.sh"), "--dry-run", "--out", str(out)], capture_output=True, text=True,
                          timeout=600, cwd=ROOT)
    return done, out


def test_the_dry_run_goes_through_every_step_and_writes_json_and_markdown(dry_run):
    done, out = dry_run
    assert done.returncode == 0, done.stderr[-3000:] + done.stdout[-3000:]
    document = json.loads((out / "gpu.json").read_text(encoding="utf-8"))
    assert document["dry_run"] is True
    assert {name: step["status"] for name, step in document["steps"].items()} == dict.fromkeys(
        ["bandwidth", "model", "tests", "llamacpp", "torch"], "ok")
    assert [row["parallel"] for row in document["llamacpp"]] == [1, 2, 4]
    assert all(row["tokens_per_s"] > 0 and row["weight_bytes_per_s"] > 0 for row in document["llamacpp"])
    assert [row["batch"] for row in document["torch"]["rows"]] == [1, 2]
    outcomes = {case["name"]: case["outcome"] for case in document["tests"]["cases"]}
    assert len(outcomes) == 5 and set(outcomes.values()) <= {"passed", "skipped"}, outcomes
    report = (out / "gpu.md").read_text(encoding="utf-8")
    assert "| parallel | tokens/s |" in report and "| batch | generate tokens/s |" in report
    assert "would build" in done.stderr and "CMAKE_CUDA_ARCHITECTURES" in done.stderr


def test_random_gguf_has_the_quantizer_s_types_and_sane_weights(tmp_path):
    import gguf

    config = gpu_bench.shrunken_config(tmp_path / "config")
    model = gpu_bench.random_gguf(config, "q4_k_m", tmp_path / "random.gguf")
    reader = gguf.GGUFReader(model["path"])
    kinds = {t.tensor_type.name for t in reader.tensors}
    assert {"Q4_K", "Q6_K"} <= kinds  # q4_k_m's mix, as llama.cpp's quantizer picks it
    assert model["tensor_bytes"] == sum(int(t.n_bytes) for t in reader.tensors)
    for tensor in reader.tensors:
        values = gguf.quants.dequantize(tensor.data, tensor.tensor_type)
        assert np.isfinite(values).all(), tensor.name
        # Random quants with scales set for weights of about ±0.02; norms are exactly 1.
        assert np.abs(values).max() <= (1.0 if tensor.name.endswith("norm.weight") else 0.2), tensor.name


def _fake_tar(path: Path, names: list[str]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name in names:
            data = b"x"
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def test_the_sdist_keeps_what_a_cuda_build_reads(tmp_path):
    top = "llama_cpp_python-0.3.36/"
    keep = ["CMakeLists.txt", "pyproject.toml", "llama_cpp/llama.py", "vendor/llama.cpp/CMakeLists.txt",
            "vendor/llama.cpp/ggml/src/ggml-cuda/ggml-cuda.cu", "vendor/llama.cpp/ggml/src/ggml-cpu/ggml-cpu.c",
            "vendor/llama.cpp/src/llama.cpp", "vendor/llama.cpp/common/common.cpp",
            "vendor/llama.cpp/tools/mtmd/CMakeLists.txt", "vendor/llama.cpp/vendor/nlohmann/json.hpp",
            "vendor/llama.cpp/vendor/miniaudio/miniaudio.h",  # vendor/CMakeLists.txt adds it unconditionally
            "vendor/llama.cpp/src/models/glm4.cpp"]
    drop = [".git/HEAD", "vendor/llama.cpp/models/ggml-vocab-gpt-2.gguf", "vendor/llama.cpp/docs/ops/CUDA.csv",
            "vendor/llama.cpp/ggml/src/ggml-vulkan/ggml-vulkan.cpp", "vendor/llama.cpp/tools/server/server.cpp",
            "examples/server/server.py"]
    source = _fake_tar(tmp_path / "in.tar.gz", [top + n for n in keep + drop])
    trimmed = gpu_bench.trim_sdist(source, tmp_path / "out.tar.gz")
    with tarfile.open(trimmed) as tar:
        assert sorted(tar.getnames()) == sorted(top + n for n in keep)


def test_prepare_fills_the_bundle_in_priority_order_up_to_the_cap(tmp_path):
    def fetch_sdist(folder):
        return _fake_tar(folder / "llama_cpp_python-0.3.36.tar.gz", ["llama_cpp_python-0.3.36/CMakeLists.txt"])

    def download(requirement, folder, version):
        name = requirement.split("==")[0]
        path = folder / f"{name}-1-py3-none-any.whl"
        path.write_bytes(b"w" * (5000 if name in ("cmake", "numpy") else 100))
        return [path]

    manifest = gpu_bench.prepare(tmp_path / "wheels", ["3.11"], cap=9000, fetch_sdist=fetch_sdist, download=download,
                                 closure=lambda name, versions, seen: [name])
    assert manifest["bytes"] <= 9000 and (tmp_path / "wheels" / "bundle.json").exists()
    assert manifest["included"][0] == "llama_cpp_python-0.3.36.tar.gz"
    assert [item["name"] for item in manifest["left_out"]] == ["numpy"]  # cmake came first and took the room
    assert sum(f.stat().st_size for f in (tmp_path / "wheels").iterdir() if f.suffix != ".json") == manifest["bytes"]


def test_a_bundled_package_comes_with_its_dependencies_for_each_python():
    group = gpu_bench.dependency_closure("pydantic", ["3.11"], set())
    assert group[0] == "pydantic" and {"pydantic-core", "annotated-types", "typing-inspection"} <= set(group)
    assert "pydantic-core" not in gpu_bench.dependency_closure("pydantic", ["3.11"], {"pydantic-core"})
    pytest_on_3_10 = gpu_bench.dependency_closure("pytest", ["3.10"], set())
    assert "tomli" in pytest_on_3_10 and "tomli" not in gpu_bench.dependency_closure("pytest", ["3.12"], set())
    assert "torch" not in gpu_bench.dependency_closure("peft", ["3.11"], set())  # the machine's own


def test_the_gitignore_keeps_the_bundle_out_of_git():
    assert "benchmarks/gpu/wheels/" in (ROOT / ".gitignore").read_text(encoding="utf-8").splitlines()
