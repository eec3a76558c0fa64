"""The Python half of ``benchmarks/gpu/run.sh``: offline bundle, random GLM-4-9B GGUF, measurements, report.

Subcommands:

- ``prepare --wheels DIR``: here, with network: the llama-cpp-python sdist (trimmed to what a
  CUDA build needs) and the wheels a bare GPU machine may lack, at most 64 MiB in all.
- ``arch``: the GPU's CUDA architecture for ``CMAKE_CUDA_ARCHITECTURES`` (``9.0`` → ``90``).
- ``measure --out DIR``: on the GPU machine: a GLM-4-9B-shaped GGUF with random weights (from
  ``examples/glm-4-9b-chat/config.json``), the GPU-marked tests, llama.cpp decode tokens/s at
  parallel 1 against the memory-bandwidth limit and at parallel 8/32/64, torch bf16 generate and
  score on the same shapes; ``gpu.json`` and ``gpu.md`` in ``DIR``. ``--dry-run`` runs the same
  logic on CPU with a shrunken shape and tiny step counts (what the tests check).

Every measurement step records ``ok``/``failed``/``skipped`` with its reason, so one failing part
never hides the others' figures.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
NINE_B_CONFIG = ROOT / "examples" / "glm-4-9b-chat" / "config.json"
MIB = 2**20
#: The carry limit of the device machine for the bundle (sdist + wheels).
BUNDLE_CAP = 64 * MIB
#: Wheels in the order they are worth their bytes: build tools and small dependencies first;
#: what a GPU image usually has (numpy, cmake) last, left out when the cap is reached.
BUNDLE_WHEELS = ["scikit-build-core", "pathspec", "packaging", "ninja", "typing_extensions", "diskcache", "Jinja2",
                 "MarkupSafe", "gguf", "pluggy", "pydantic", "pydantic_core", "annotated-types", "typing-inspection",
                 "PyYAML", "safetensors", "tokenizers", "huggingface_hub", "hf-xet", "filelock", "fsspec", "tqdm",
                 "regex", "psutil", "accelerate", "peft", "pytest", "iniconfig", "transformers", "cmake", "numpy"]
#: Parts of the llama-cpp-python sdist a CUDA build of the Python package never reads.
SDIST_DROP = re.compile(r"^[^/]+/(\.git/|\.github/|docs/|examples/|tests/|vendor/llama\.cpp/(\.git|\.github/|\.devops/"
                        r"|docs/|benches/|media/|models/|examples/|tests/|gguf-py/|pocs/|requirements/|grammars/"
                        r"|prompts/|tools/(?!mtmd/)|ggml/src/ggml-(vulkan|sycl|opencl|hexagon|cann"
                        r"|metal|webgpu|zdnn|openvino|et|virtgpu|kompute|musa|hip)/))")


# -- the offline bundle (run here) --------------------------------------------------------------
def trim_sdist(source: Path, target: Path) -> Path:
    """Repack an sdist without the parts :data:`SDIST_DROP` names (git history, docs, vocab files, other backends)."""
    with tarfile.open(source) as src, tarfile.open(target, "w:gz", compresslevel=9) as dst:
        for member in src:
            if SDIST_DROP.match(member.name + ("/" if member.isdir() else "")):
                continue
            dst.addfile(member, src.extractfile(member) if member.isfile() else None)
    return target


def _pinned(name: str) -> str:
    """``name==version`` as installed here (the versions the project was tested with), else ``name``."""
    from importlib import metadata

    try:
        return f"{name}=={metadata.version(name)}"
    except metadata.PackageNotFoundError:
        return name


def _download(requirement: str, folder: Path, python_version: str | None) -> list[Path]:
    """Wheels of ``requirement`` for ``python_version`` (no dependencies); the pin is dropped if it has none there."""
    for wanted in dict.fromkeys([requirement, requirement.split("==")[0]]):
        before = set(folder.iterdir())
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-d", str(folder),
                   "--disable-pip-version-check", "-q", wanted]
        if python_version:
            command += ["--python-version", python_version, "--implementation", "cp"]
            for tag in ("manylinux2014_x86_64", "manylinux_2_17_x86_64", "manylinux_2_27_x86_64",
                        "manylinux_2_28_x86_64"):
                command += ["--platform", tag]
        if subprocess.run(command, capture_output=True).returncode == 0:
            return sorted(set(folder.iterdir()) - before)
    return []


def _fetch_sdist(folder: Path) -> Path:
    """The sdist of the llama-cpp-python installed here, downloaded into ``folder``."""
    import llama_cpp

    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "-q",
                    "-d", str(folder), f"llama-cpp-python=={llama_cpp.__version__}"], check=True)
    return next(folder.glob("llama_cpp_python-*.tar.gz"))


#: Never pulled in as a dependency: what a CUDA machine has (torch and its stack) or cannot use
#: from here; numpy and cmake come only as their own, last entries of :data:`BUNDLE_WHEELS`.
NOT_AS_DEPENDENCY = re.compile(r"^(torch|triton|nvidia-.*|numpy|cmake|setuptools|pip|wheel)$")


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def dependency_closure(name: str, python_versions: list[str], seen: set[str]) -> list[str]:
    """``name`` and the packages it needs on any of ``python_versions`` that ``seen`` lacks, from the metadata here.

    Markers are evaluated for each target Python (pytest needs ``tomli`` on 3.10, not on 3.11);
    a package not installed here is taken as it is, without its own dependencies.
    """
    from importlib import metadata

    from packaging.requirements import Requirement

    found: list[str] = []

    def visit(current: str) -> None:
        key = _canonical(current)
        if key in seen or (found and NOT_AS_DEPENDENCY.match(key)):
            return
        seen.add(key)
        found.append(current)
        try:
            requirements = metadata.requires(current) or []
        except metadata.PackageNotFoundError:
            return
        for text in requirements:
            requirement = Requirement(text)
            marker = requirement.marker
            targets = [{"extra": "", "python_version": v, "python_full_version": f"{v}.0"} for v in python_versions]
            if marker is None or any(marker.evaluate(target) for target in targets):
                visit(requirement.name)

    visit(name)
    return found


def prepare(wheels: Path, python_versions: list[str], cap: int = BUNDLE_CAP, *, skip: tuple[str, ...] = (),
            fetch_sdist=_fetch_sdist, download=_download, closure=dependency_closure) -> dict:
    """Fill ``wheels`` with the trimmed sdist and, in :data:`BUNDLE_WHEELS` order, the wheels that fit ``cap``.

    Each entry comes with the dependencies not bundled yet (all or nothing, so what is in can be
    installed); compiled wheels are fetched for each of ``python_versions``. A manifest
    (``bundle.json``) says what is in and what was left out for lack of room. ``skip`` names
    packages the GPU machine is known to have (room for the next ones). ``fetch_sdist``,
    ``download`` and ``closure`` are the network and metadata steps (replaced in tests).
    """
    wheels.mkdir(parents=True, exist_ok=True)
    for old in wheels.iterdir():
        old.unlink()
    with tempfile.TemporaryDirectory() as scratch:
        sdist = fetch_sdist(Path(scratch))
        trimmed = trim_sdist(sdist, wheels / sdist.name)
    used = trimmed.stat().st_size
    included, left_out = [trimmed.name], []
    seen = {_canonical(n) for n in skip}
    for name in BUNDLE_WHEELS:
        if _canonical(name) in seen:
            continue
        group = closure(name, python_versions, set(seen))
        with tempfile.TemporaryDirectory() as scratch:
            files: list[Path] = []
            for package in group:
                for version in python_versions:
                    files += [f for f in download(_pinned(package), Path(scratch), version) if f not in files]
            size = sum(f.stat().st_size for f in files)
            if used + size > cap:
                left_out.append({"name": name, "with": group[1:], "bytes": size})
                continue
            for f in files:
                shutil.move(str(f), wheels / f.name)
                included.append(f.name)
            used += size
            seen.update(_canonical(p) for p in group)
    manifest = {"bytes": used, "cap": cap, "python_versions": python_versions, "included": included,
                "left_out": left_out}
    (wheels / "bundle.json").write_text(json.dumps(manifest, indent=1), encoding="utf-8")
    return manifest


# -- the machine ------------------------------------------------------------------------------
def cuda_arch() -> str:
    """``CMAKE_CUDA_ARCHITECTURES`` for the first GPU, from ``nvidia-smi`` (``9.0`` → ``90``)."""
    out = subprocess.run(["nvidia-smi", "--query-gpu=compute_cap", "--format=csv,noheader"], check=True,
                         capture_output=True, text=True).stdout.split()[0]
    return out.replace(".", "")


def gpu_info() -> dict:
    """Name, memory and driver of the first GPU (``nvidia-smi``), or ``{}`` without one."""
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version,compute_cap",
                              "--format=csv,noheader,nounits"], check=True, capture_output=True, text=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return {}
    name, memory, driver, cap = [part.strip() for part in out.splitlines()[0].split(",")]
    return {"name": name, "memory_mib": int(float(memory)), "driver": driver, "compute_cap": cap}


#: HBM/GDDR peak bandwidth (bytes/s) of common cards, when the driver does not say.
KNOWN_BANDWIDTH = {"H200": 4.8e12, "H100 SXM": 3.35e12, "H100 PCIe": 2.0e12, "H100": 3.35e12, "A100-SXM4-80GB": 2.04e12,
                   "A100": 1.56e12, "L40S": 8.64e11, "L4": 3.0e11, "A10": 6.0e11, "RTX 4090": 1.01e12, "T4": 3.2e11}


def peak_bandwidth(device_name: str) -> tuple[float | None, str]:
    """The card's peak memory bandwidth and where the figure comes from."""
    try:
        import torch

        if torch.cuda.is_available():
            props = torch.cuda.get_device_properties(0)
            clock, width = getattr(props, "memory_clock_rate", 0), getattr(props, "memory_bus_width", 0)
            if clock and width:  # kHz, bits; double data rate
                return 2 * clock * 1e3 * width / 8, "torch device properties (2 × memory clock × bus width)"
    except ImportError:
        pass
    for key, value in KNOWN_BANDWIDTH.items():
        if key in device_name:
            return value, f"datasheet figure for {key}"
    return None, "unknown"


def measured_bandwidth(dry_run: bool) -> float:
    """Bytes/s of a large device-to-device copy (read + write), the practical limit decode can reach."""
    if dry_run:
        import numpy as np

        a = np.ones(64 * MIB // 4, np.float32)
        start = time.perf_counter()
        for _ in range(4):
            b = a.copy()
        return 4 * 2 * a.nbytes / (time.perf_counter() - start) + 0 * float(b[0])
    import torch

    a = torch.empty(2 * 2**30, dtype=torch.uint8, device="cuda")
    b = torch.empty_like(a)
    b.copy_(a)
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(10):
        b.copy_(a)
    torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    del a, b
    torch.cuda.empty_cache()
    return 10 * 2 * 2 * 2**30 / seconds


# -- a GLM-4-9B-shaped GGUF with random weights ----------------------------------------------
#: Where each block type keeps its f16 scales, and the scale that makes weights ≈ ±0.02.
_SCALES = {"Q4_0": ([0], 0.02 / 8), "Q4_1": ([0, 2], 0.02 / 16), "Q5_0": ([0], 0.02 / 16), "Q5_1": ([0, 2], 0.02 / 32),
           "Q8_0": ([0], 0.02 / 127), "Q2_K": ([80, 82], 0.02 / 45), "Q3_K": ([108], 0.02 / 128),
           "Q4_K": ([0, 2], 0.02 / 945), "Q5_K": ([0, 2], 0.02 / 1953), "Q6_K": ([208], 0.02 / 4064)}


def shrunken_config(target: Path) -> Path:
    """GLM-4-9B-chat's config with a tiny shape (2 layers, hidden 256): the dry run's stand-in."""
    config = json.loads(NINE_B_CONFIG.read_text(encoding="utf-8"))
    config.update({"num_layers": 2, "hidden_size": 256, "ffn_hidden_size": 512, "num_attention_heads": 2,
                   "multi_query_group_num": 1, "kv_channels": 128, "padded_vocab_size": 2048, "seq_length": 4096})
    target.mkdir(parents=True, exist_ok=True)
    (target / "config.json").write_text(json.dumps(config), encoding="utf-8")
    return target


def _random_tensor(kind, shape, rng, norm: bool = False):
    """Random data of GGML type ``kind`` for ``shape``: sane block scales, random quants; norm weights are 1."""
    import gguf
    import numpy as np

    if kind in (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16):
        dtype = np.float32 if kind == gguf.GGMLQuantizationType.F32 else np.float16
        return (np.ones(shape) if norm else rng.normal(0, 0.02, shape)).astype(dtype)
    block, size = gguf.GGML_QUANT_SIZES[kind]
    byte_shape = gguf.quant_shape_to_byte_shape(shape, kind)
    data = np.frombuffer(rng.bytes(int(np.prod(byte_shape))), np.uint8).copy()
    blocks = data.reshape(-1, size)
    offsets, scale = _SCALES.get(kind.name, ([], 0.0))
    for offset in offsets:
        blocks[:, offset:offset + 2] = np.frombuffer(np.float16(scale).tobytes(), np.uint8)
    return data.reshape(byte_shape)


def random_gguf(config_dir: Path, outtype: str, out_path: Path, seed: int = 0) -> dict:
    """Write a GGUF of ``config_dir``'s shape with random weights of the tensor types ``outtype`` gives.

    The types are those llama.cpp's quantizer picks for the real model (as ``mentalglm sizes``
    computes them), so the file reads exactly as many bytes per token as the real export. One
    random buffer per tensor shape and type is reused across layers: speed does not depend on
    the values, and the file is written in the time the disk needs.
    """
    import gguf
    import numpy as np

    from mentalglm.converters import gguf_export, sizing
    from mentalglm.converters.glm_spec import read_spec
    from mentalglm.demo.tiny import build_tokenizer

    started = time.perf_counter()
    spec = read_spec(config_dir)
    shapes = spec.gguf_shapes()
    if outtype in gguf_export.DIRECT_TYPES:
        types = {name: gguf_export._ggml_type(outtype, shape) for name, shape in shapes.items()}
    else:  # private helpers: the one place that knows llama.cpp's per-tensor choice
        types = sizing._k_quant_types(spec, outtype)
    rng = np.random.default_rng(seed)
    with tempfile.TemporaryDirectory() as tokenizer_dir:
        build_tokenizer(tokenizer_dir)
        writer = gguf.GGUFWriter(out_path, spec.arch)
        try:
            gguf_export._write_metadata(writer, spec, Path(tokenizer_dir), outtype, "random-glm-4-9b", None, outtype)
            for name, shape in shapes.items():
                kind = types[name]
                if kind in (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16):
                    dtype, byte_shape = (np.float32 if kind == gguf.GGMLQuantizationType.F32 else np.float16), shape
                else:
                    dtype, byte_shape = np.uint8, gguf.quant_shape_to_byte_shape(shape, kind)
                nbytes = int(np.prod(byte_shape, dtype=np.int64)) * np.dtype(dtype).itemsize
                writer.add_tensor_info(name, byte_shape, np.dtype(dtype), nbytes, raw_dtype=kind)
            writer.write_header_to_file(out_path)
            writer.write_kv_data_to_file()
            writer.write_ti_data_to_file()
            cache: dict = {}
            for name, shape in shapes.items():
                key = (types[name], shape, name.endswith("norm.weight"))
                if key not in cache:
                    cache[key] = _random_tensor(types[name], shape, rng, norm=key[2])
                writer.write_tensor_data(cache[key])
        finally:
            writer.close()
    tensor_bytes = sum(sizing._tensor_bytes(shape, types[name]) for name, shape in shapes.items())
    return {"path": str(out_path), "outtype": outtype, "file_bytes": out_path.stat().st_size,
            "tensor_bytes": tensor_bytes, "n_layers": spec.n_layers, "hidden_size": spec.hidden_size,
            "vocab_size": spec.vocab_size, "seconds": time.perf_counter() - started,
            "bytes_per_token": bytes_read_per_token(spec, types)}


def bytes_read_per_token(spec, types) -> int:
    """Weight bytes one decode step reads: every tensor but the embedding, of which one row is read."""
    from mentalglm.converters import sizing

    shapes = spec.gguf_shapes()
    total = sum(sizing._tensor_bytes(shape, types[name]) for name, shape in shapes.items()
                if name != "token_embd.weight")
    return total + sizing._tensor_bytes(shapes["token_embd.weight"], types["token_embd.weight"]) // spec.vocab_size


# -- llama.cpp decode -------------------------------------------------------------------------
def _forced_jobs(backend, n: int, prompt: list[int], steps: int) -> list:
    """``n`` jobs of ``steps`` greedy tokens each, end tokens ignored: decode speed, whatever the weights say."""
    from mentalglm.backends.llamacpp_batch import Continuation, Job
    from mentalglm.backends.llamacpp_native import SequenceSampler

    def sampler():
        return SequenceSampler(backend.llm, temperature=0.0, top_p=1.0, seed=0)

    # Each post differs after the shared prefix, as real posts do.
    return [Job(prompt + [10 + i], Continuation(steps, (), lambda token: False, backend._detokenize), sampler)
            for i in range(n)]


def _time_steps(decoder) -> dict:
    """Time the decoder's batched decode steps only (prompts excluded): ``seconds`` and ``tokens`` so far."""
    spent = {"seconds": 0.0, "tokens": 0}
    step = decoder._step

    def timed(running):
        start = time.perf_counter()
        step(running)
        spent["seconds"] += time.perf_counter() - start
        spent["tokens"] += len(running)

    decoder._step = timed
    return spent


def llama_decode(path: Path, parallels: list[int], *, steps: int, dry_run: bool, threads: int | None) -> list[dict]:
    """Decode tokens/s per parallelism, prompts excluded.

    ``parallel=1`` is the sequential path (one ``eval`` per token, teacher-forced); ``parallel=N``
    times the batched decoder's steps (N tokens each, greedy).
    """
    from mentalglm.backends.llamacpp_backend import LlamaCppBackend

    rows = []
    prompt = [3 + (i % 200) for i in range(64)]
    common = {"n_ctx": 512, "n_gpu_layers": 0 if dry_run else -1, "n_batch": 512, **({"n_threads": threads}
                                                                                     if threads else {})}
    for n in parallels:
        with LlamaCppBackend(str(path), {**common, "parallel": n}) as backend:
            if n == 1:
                llm = backend.llm
                llm.reset()
                llm.eval(prompt)
                start = time.perf_counter()
                for _ in range(steps):
                    llm.eval([7])
                seconds, tokens = time.perf_counter() - start, steps
            else:
                decoder = backend._decoder
                decoder.generate(_forced_jobs(backend, n, prompt, 2))  # warm-up: the prompts land in the slots
                spent = _time_steps(decoder)
                outcomes = decoder.generate(_forced_jobs(backend, n, prompt, steps + 1))
                assert all(len(o.generated) == steps + 1 for o in outcomes)
                seconds, tokens = spent["seconds"], spent["tokens"]
            rows.append({"parallel": n, "tokens": tokens, "seconds": seconds, "tokens_per_s": tokens / seconds,
                         "steps_per_s": tokens / n / seconds,
                         "offloaded_layers": backend.offloaded_layers, "total_layers": backend.total_layers})
    base = rows[0]["tokens_per_s"]
    for row in rows:
        row["vs_parallel_1"] = row["tokens_per_s"] / base
    return rows


# -- torch bf16 ---------------------------------------------------------------------------------
def torch_bench(config_dir: Path, batches: list[int], *, new_tokens: int, prompt_tokens: int, dry_run: bool) -> dict:
    """generate tokens/s and score posts/s of a random GlmForCausalLM of the same shape (bf16 on CUDA)."""
    import torch
    from transformers import GlmConfig, GlmForCausalLM

    from mentalglm.converters.glm_spec import read_spec

    spec = read_spec(config_dir)
    device, dtype = ("cpu", torch.float32) if dry_run else ("cuda", torch.bfloat16)
    config = GlmConfig(vocab_size=spec.vocab_size, hidden_size=spec.hidden_size, intermediate_size=spec.ffn_size,
                       num_hidden_layers=spec.n_layers, num_attention_heads=spec.n_heads,
                       num_key_value_heads=spec.n_kv_heads, head_dim=spec.head_dim, rms_norm_eps=spec.rms_eps,
                       max_position_embeddings=4096, attention_bias=True, pad_token_id=0, eos_token_id=None,
                       rope_parameters={"rope_type": "default", "rope_theta": float(spec.rope_base),
                                        "partial_rotary_factor": spec.rope_dim / spec.head_dim})
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = GlmForCausalLM(config).eval()
    finally:
        torch.set_default_dtype(previous)

    def sync():
        if device == "cuda":
            torch.cuda.synchronize()

    rows = []
    generator = torch.Generator().manual_seed(0)
    with torch.inference_mode():
        for batch in batches:
            ids = torch.randint(3, 1000, (batch, prompt_tokens), generator=generator).to(device)
            mask = torch.ones_like(ids)
            model.generate(ids[:, :8], attention_mask=mask[:, :8], max_new_tokens=2, do_sample=False)  # warm-up
            sync()
            start = time.perf_counter()
            model.generate(ids, attention_mask=mask, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                           do_sample=False)
            sync()
            generate_s = time.perf_counter() - start
            start = time.perf_counter()
            model(ids, logits_to_keep=1).logits[:, -1].float().log_softmax(-1)  # the label's first token
            sync()
            score_s = time.perf_counter() - start
            rows.append({"batch": batch, "generate_tokens_per_s": batch * new_tokens / generate_s,
                         "generate_seconds": generate_s, "score_posts_per_s": batch / score_s,
                         "score_seconds": score_s})
    peak = torch.cuda.max_memory_allocated() if device == "cuda" else None
    del model
    if device == "cuda":
        torch.cuda.empty_cache()
    return {"dtype": str(dtype).replace("torch.", ""), "device": device, "new_tokens": new_tokens,
            "prompt_tokens": prompt_tokens, "peak_memory_bytes": peak, "rows": rows}


# -- GPU tests --------------------------------------------------------------------------------
def run_tests(gguf: Path | None, out: Path) -> dict:
    """The GPU-marked tests (``test_gpu.py``) in a subprocess; counts from its JUnit XML."""
    import xml.etree.ElementTree as ElementTree

    report = out / "gpu-tests.xml"
    env = {**os.environ, "MENTALGLM_GPU_GGUF": str(gguf or ""), "MENTALGLM_LOAD_PLUGINS": ""}
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(HERE / "test_gpu.py"),
                           f"--junitxml={report}", "-o", "addopts="], cwd=ROOT, env=env, capture_output=True, text=True)
    cases = []
    if report.exists():
        for case in ElementTree.parse(report).iter("testcase"):
            outcome = next((child.tag for child in case if child.tag in ("failure", "error", "skipped")), "passed")
            message = next((child.get("message", "") for child in case if child.tag != "system-out"), "")
            cases.append({"name": case.get("name"), "outcome": outcome, "message": (message or "")[:300]})
    return {"returncode": done.returncode, "seconds": time.perf_counter() - started, "cases": cases,
            "tail": (done.stdout + done.stderr)[-2000:]}


# -- the whole measurement ----------------------------------------------------------------------
def _step(results: dict, name: str, function, *args, **kwargs):
    started = time.perf_counter()
    try:
        value = function(*args, **kwargs)
        results["steps"][name] = {"status": "ok", "seconds": time.perf_counter() - started}
        return value
    except Exception as exc:  # one failing part must not hide the others' figures
        results["steps"][name] = {"status": "failed", "seconds": time.perf_counter() - started,
                                  "error": f"{type(exc).__name__}: {exc}", "trace": traceback.format_exc()[-1500:]}
        return None


def measure(out: Path, *, dry_run: bool, build: dict | None = None, threads: int | None = None) -> dict:
    """Everything after the build; writes ``gpu.json`` and ``gpu.md`` into ``out`` and returns the document."""
    # torch first: on the H200 image (CUDA 13 toolkit, torch with its own CUDA 13 wheels) importing
    # llama_cpp first and torch second aborted with "free(): invalid pointer" right after
    # ggml_cuda_init (2026-12-04). Loading torch's CUDA libraries first lets llama.cpp's libraries
    # bind to the same sonames. A hypothesis not yet re-run on a GPU; see README.md.
    try:
        import torch  # noqa: F401
    except ImportError:
        pass
    import llama_cpp

    out.mkdir(parents=True, exist_ok=True)
    gpu = gpu_info()
    results: dict = {"dry_run": dry_run, "machine": {"host": platform.node(), "cpu_count": os.cpu_count(),
                                                      "python": platform.python_version(), "gpu": gpu,
                                                      "llama_cpp_python": llama_cpp.__version__,
                                                      "gpu_offload": bool(llama_cpp.llama_supports_gpu_offload())},
                     "build": build or {}, "steps": {}}

    def save():  # after every part: a run cut short by its time limit still reports what it measured
        (out / "gpu.json").write_text(json.dumps(results, indent=1, default=str), encoding="utf-8")
        (out / "gpu.md").write_text(markdown(results), encoding="utf-8")

    with tempfile.TemporaryDirectory(prefix="mentalglm-gpu-") as scratch:
        config_dir = shrunken_config(Path(scratch) / "config") if dry_run else NINE_B_CONFIG.parent
        peak, source = peak_bandwidth(gpu.get("name", "")) if not dry_run else (None, "CPU dry run")
        copy = _step(results, "bandwidth", measured_bandwidth, dry_run)
        results["bandwidth"] = {"peak_bytes_per_s": peak, "peak_source": source, "copy_bytes_per_s": copy}
        save()
        model = _step(results, "model", random_gguf, config_dir, "q4_k_m", Path(scratch) / "random-q4_k_m.gguf")
        results["model"] = model
        save()
        path = Path(model["path"]) if model else None
        results["tests"] = _step(results, "tests", run_tests, path, out)
        save()
        if path and not (dry_run or results["machine"]["gpu_offload"]):
            results["steps"]["llamacpp"] = {"status": "skipped", "error": "llama-cpp-python has no GPU support here "
                                                                          "(the build failed?): 9B on CPU is no check"}
        elif path:
            parallels = [1, 2, 4] if dry_run else [1, 8, 32, 64]
            rows = _step(results, "llamacpp", llama_decode, path, parallels, steps=8 if dry_run else 128,
                         dry_run=dry_run, threads=threads)
            results["llamacpp"] = _with_bandwidth(rows, model, results["bandwidth"]) if rows else None
        else:
            results["steps"]["llamacpp"] = {"status": "skipped", "error": "no model"}
        save()
        results["torch"] = _step(results, "torch", torch_bench, config_dir, [1, 2] if dry_run else [1, 8, 32, 64],
                                 new_tokens=4 if dry_run else 64, prompt_tokens=16 if dry_run else 128,
                                 dry_run=dry_run)
    save()
    return results


def _with_bandwidth(rows: list[dict], model: dict, bandwidth: dict) -> list[dict]:
    """Each row's weight bytes read per second and the tokens/s the bandwidth allows at that parallelism."""
    per_token = model["bytes_per_token"]
    for row in rows:
        # One step reads the weights once for all its sequences.
        row["weight_bytes_per_s"] = per_token * row["steps_per_s"]
        for key in ("peak", "copy"):
            limit = bandwidth.get(f"{key}_bytes_per_s")
            row[f"{key}_limit_tokens_per_s"] = limit / per_token * row["parallel"] if limit else None
            row[f"of_{key}_limit"] = row["tokens_per_s"] / row[f"{key}_limit_tokens_per_s"] if limit else None
    return rows


def _fmt(value, digits=1, suffix="") -> str:
    if value is None:
        return "–"
    return f"{value:,.{digits}f}{suffix}"


def markdown(results: dict) -> str:
    """The report: machine, build, tests, llama.cpp decode against the bandwidth limit, torch bf16."""
    gpu = results["machine"].get("gpu") or {}
    lines = [f"# GPU check{' (dry run on CPU)' if results['dry_run'] else ''}", "",
             f"- machine: {gpu.get('name', 'no GPU')} ({_fmt(gpu.get('memory_mib'), 0)} MiB, driver "
             f"{gpu.get('driver', '–')}), {results['machine']['cpu_count']} CPU cores, Python "
             f"{results['machine']['python']}, llama-cpp-python {results['machine']['llama_cpp_python']} "
             f"(GPU offload: {results['machine']['gpu_offload']})"]
    build = results.get("build") or {}
    if build:
        lines.append(f"- build: {build.get('status', '–')}, CUDA arch {build.get('arch', '–')}, "
                     f"{_fmt(build.get('seconds'), 0, ' s')}")
    bandwidth = results.get("bandwidth") or {}
    lines.append(f"- memory bandwidth: peak {_fmt((bandwidth.get('peak_bytes_per_s') or 0) / 1e9 or None, 0)} GB/s "
                 f"({bandwidth.get('peak_source')}), measured copy "
                 f"{_fmt((bandwidth.get('copy_bytes_per_s') or 0) / 1e9 or None, 0)} GB/s")
    model = results.get("model") or {}
    if model:
        lines.append(f"- model: GLM-4-9B shape, random weights, {model['outtype']}, {model['n_layers']} layers, "
                     f"{_size(model['file_bytes'])}, {_size(model['bytes_per_token'])} read per decode step")
    lines += ["", "| step | status | seconds | note |", "| --- | --- | --- | --- |"]
    for name, step in results["steps"].items():
        lines.append(f"| {name} | {step['status']} | {_fmt(step.get('seconds'))} | {step.get('error', '')[:120]} |")
    tests = results.get("tests") or {}
    if tests.get("cases"):
        lines += ["", "| GPU test | outcome |", "| --- | --- |"]
        lines += [f"| {case['name']} | {case['outcome']} |" for case in tests["cases"]]
    if results.get("llamacpp"):
        lines += ["", "llama.cpp decode (greedy, 64-token prompts, all layers offloaded):", "",
                  "| parallel | tokens/s | × parallel 1 | weights read | of peak limit | of copy limit |",
                  "| --- | --- | --- | --- | --- | --- |"]
        for row in results["llamacpp"]:
            lines.append(f"| {row['parallel']} | {_fmt(row['tokens_per_s'])} | {_fmt(row['vs_parallel_1'], 2, '×')} | "
                         f"{_fmt(row['weight_bytes_per_s'] / 1e9, 0, ' GB/s')} | "
                         f"{_fmt(_pct(row.get('of_peak_limit')), 0, ' %')} | "
                         f"{_fmt(_pct(row.get('of_copy_limit')), 0, ' %')} |")
    if results.get("torch"):
        torch_result = results["torch"]
        lines += ["", f"torch {torch_result['dtype']} on {torch_result['device']} (same shape, random weights, "
                      f"{torch_result['prompt_tokens']}-token prompts, {torch_result['new_tokens']} new tokens):", "",
                  "| batch | generate tokens/s | score posts/s |", "| --- | --- | --- |"]
        lines += [f"| {row['batch']} | {_fmt(row['generate_tokens_per_s'])} | {_fmt(row['score_posts_per_s'])} |"
                  for row in torch_result["rows"]]
    return "\n".join(lines) + "\n"


def _size(n: int) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


def _pct(value):
    return None if value is None else 100 * value


def main(argv: list[str] | None = None) -> int:
    """Command line of the helper (see the module docstring)."""
    parser = argparse.ArgumentParser(prog="gpu_bench.py", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("prepare", help="download the trimmed sdist and wheels (needs network)")
    p.add_argument("--wheels", type=Path, default=HERE / "wheels")
    p.add_argument("--python-versions", default="3.10,3.11,3.12",
                   help="Python versions of the GPU machine for compiled wheels")
    p.add_argument("--skip", default="", help="comma list of packages the GPU machine has (e.g. transformers,peft): "
                                              "room for those after them (cmake, numpy)")
    sub.add_parser("arch", help="print the GPU's CUDA architecture")
    p = sub.add_parser("measure", help="model, tests, llama.cpp and torch figures → gpu.json, gpu.md")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--dry-run", action="store_true", help="CPU, shrunken shape, tiny step counts")
    p.add_argument("--build-json", type=Path, help="the build step's record (from run.sh)")
    p.add_argument("--threads", type=int, help="llama.cpp CPU threads")
    args = parser.parse_args(argv)
    if args.command == "prepare":
        manifest = prepare(args.wheels, args.python_versions.split(","), skip=tuple(filter(None, args.skip.split(","))))
        print(json.dumps(manifest, indent=1))
    elif args.command == "arch":
        print(cuda_arch())
    else:
        build = json.loads(args.build_json.read_text()) if args.build_json and args.build_json.exists() else None
        results = measure(args.out, dry_run=args.dry_run, build=build, threads=args.threads)
        print((args.out / "gpu.md").read_text(encoding="utf-8"))
        return 0 if all(step["status"] != "failed" for step in results["steps"].values()) else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
