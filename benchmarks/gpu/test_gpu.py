"""GPU-marked tests: run by ``benchmarks/gpu/run.sh`` on a machine with a CUDA GPU; they skip elsewhere.

- llama.cpp offload: the layer count the backend reports is the one llama.cpp says it offloaded.
- ``gpu_memory`` budget: the VRAM the process really takes stays within the budget (whose layer
  count counts the KV cache of every parallel sequence), and a larger budget takes more layers.
- torch on CUDA picks bfloat16 and answers in the task's format; a LoRA step trains on CUDA.
"""

from __future__ import annotations

import logging
import os
import re
import subprocess

import pytest

pytestmark = pytest.mark.gpu
torch = pytest.importorskip("torch")
llama_cpp = pytest.importorskip("llama_cpp")
CUDA = torch.cuda.is_available()
OFFLOAD = bool(llama_cpp.llama_supports_gpu_offload())
needs_cuda = pytest.mark.skipif(not CUDA, reason="no CUDA GPU")
needs_offload = pytest.mark.skipif(not (CUDA and OFFLOAD), reason="no CUDA GPU or llama-cpp-python without CUDA")


def _vram_used_mib() -> int:
    """Device memory in use on GPU 0 (all processes), from nvidia-smi."""
    out = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits", "-i", "0"],
                         check=True, capture_output=True, text=True).stdout
    return int(out.split()[0])


@needs_offload
@pytest.mark.parametrize("requested", [1, -1])
def test_offload_reported_is_what_llama_cpp_offloaded(exported, caplog, requested):
    from mentalglm.backends.llamacpp_backend import LlamaCppBackend

    with caplog.at_level(logging.DEBUG, logger="mentalglm.llama_cpp"):
        with LlamaCppBackend(str(exported("glm", "q8_0")), {"n_gpu_layers": requested, "n_ctx": 512}) as backend:
            reported = backend.offloaded_layers
            total = backend.total_layers
    said = re.search(r"offloaded (\d+)/(\d+) layers to GPU", caplog.text)
    assert said, caplog.text[-2000:]
    assert int(said.group(1)) == reported == (1 if requested == 1 else total + 1)


@needs_offload
def test_gpu_memory_budget_holds_against_measured_vram():
    from mentalglm.backends.gpu_budget import parse_bytes
    from mentalglm.backends.llamacpp_backend import LlamaCppBackend

    path = os.environ.get("MENTALGLM_GPU_GGUF")
    if not path:
        pytest.skip("MENTALGLM_GPU_GGUF (the GLM-4-9B-shaped GGUF run.sh builds) is not set")
    taken = {}
    for budget in ("3GiB", "5GiB"):
        before = _vram_used_mib()
        with LlamaCppBackend(path, {"gpu_memory": budget, "n_ctx": 2048, "parallel": 8}) as backend:
            taken[budget] = (_vram_used_mib() - before, backend.offloaded_layers)
            assert 0 < backend.offloaded_layers < backend.total_layers
        assert taken[budget][0] * 2**20 <= parse_bytes(budget), taken
    assert taken["5GiB"][1] > taken["3GiB"][1] and taken["5GiB"][0] > taken["3GiB"][0], taken


@needs_cuda
def test_torch_runs_bfloat16_on_cuda_and_answers_in_format(tiny_models):
    from mentalglm import Analyzer
    from mentalglm.backends.torch_backend import TorchBackend
    from mentalglm.data.readers import read_posts

    with TorchBackend(str(tiny_models["glm"]), {"max_new_tokens": 24}) as backend:
        assert backend.device.type == "cuda" and backend.dtype == torch.bfloat16
        analyzer = Analyzer(task="depression", backend=backend)
        predictions = list(analyzer.analyze_many(read_posts("sample:depression")[:4]))
    assert all(p.valid for p in predictions)


@needs_cuda
def test_a_lora_step_trains_on_cuda(tiny_models, tmp_path):
    from mentalglm.training import train
    from mentalglm.training.config import build_config

    config = build_config({"model": str(tiny_models["glm"]), "output": str(tmp_path / "run"), "device": "cuda",
                           "precision": "bf16", "max_steps": 2, "batch_size": 2, "max_length": 512, "quiet": True,
                           "save_every": 0, "stages": [{"data": ["sample:depression"]}]})
    result = train(config)
    assert result.steps == 2 and result.final_loss is not None and result.final_loss == result.final_loss  # not NaN
    assert (result.adapter / "adapter_model.safetensors").exists()
