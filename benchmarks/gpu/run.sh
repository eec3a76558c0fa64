#!/usr/bin/env bash
# The GPU check of mentalglm, in one run on a machine with one GPU and no network (see README.md):
#   1. a venv over the machine's Python (its torch is used), missing packages from the bundle;
#   2. llama-cpp-python built with CUDA for this GPU's architecture only (ninja, all cores);
#   3. gpu_bench.py measure: the GPU tests, a GLM-4-9B-shaped q4_k_m with random weights,
#      llama.cpp decode against the memory-bandwidth limit (parallel 1/8/32/64), torch bf16;
#      OUT/gpu.json and OUT/gpu.md.
#
#   benchmarks/gpu/run.sh prepare          here, with network: fill benchmarks/gpu/wheels (≤ 64 MiB)
#   benchmarks/gpu/run.sh [--out DIR]      on the GPU machine
#   benchmarks/gpu/run.sh --dry-run        the same logic on CPU with a tiny shape (no venv, no build)
set -uo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
WHEELS=${MENTALGLM_GPU_WHEELS:-$HERE/wheels}
OUT=${OUT:-$ROOT/runs/gpu}
DRY_RUN=0
COMMAND=run

usage() { sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'; }
log() { printf '[gpu-check %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }

while [ $# -gt 0 ]; do
  case "$1" in
    prepare) COMMAND=prepare ;;
    --dry-run) DRY_RUN=1 ;;
    --out) OUT=$2; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "unknown argument: $1" >&2; usage >&2; exit 2 ;;
  esac
  shift
done

# The Python that runs the helper before any venv exists: the project's own where there is one.
BASE_PY=${PYTHON:-$( [ -x "$ROOT/.venv/bin/python" ] && echo "$ROOT/.venv/bin/python" || command -v python3 )}

if [ "$COMMAND" = prepare ]; then
  exec "$BASE_PY" "$HERE/gpu_bench.py" prepare --wheels "$WHEELS" ${MENTALGLM_GPU_SKIP:+--skip "$MENTALGLM_GPU_SKIP"}
fi

mkdir -p "$OUT"
START=$(date +%s)
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export MENTALGLM_LOAD_PLUGINS=""

if [ "$DRY_RUN" = 1 ]; then
  # What a real run would do, printed; then the measurement itself on CPU.
  log "dry run: would create a venv (--system-site-packages) and install from $WHEELS"
  log "dry run: would build: CMAKE_ARGS=\"-DGGML_CUDA=on -DCMAKE_CUDA_ARCHITECTURES=<arch> -DLLAVA_BUILD=OFF\"" \
      "CMAKE_GENERATOR=Ninja CMAKE_BUILD_PARALLEL_LEVEL=$(nproc) pip install llama_cpp_python-*.tar.gz"
  printf '{"status": "dry run", "arch": null, "seconds": 0}\n' > "$OUT/build.json"
  "$BASE_PY" "$HERE/gpu_bench.py" measure --out "$OUT" --dry-run --build-json "$OUT/build.json" --threads 1
  STATUS=$?
  log "done in $(( $(date +%s) - START )) s: $OUT/gpu.json, $OUT/gpu.md"
  exit $STATUS
fi

command -v nvidia-smi >/dev/null || { echo "no nvidia-smi: this is not a GPU machine (use --dry-run)" >&2; exit 1; }
ARCH=$("$BASE_PY" "$HERE/gpu_bench.py" arch) || { echo "could not read the GPU's compute capability" >&2; exit 1; }
log "GPU: $(nvidia-smi --query-gpu=name,memory.total --format=csv,noheader), CUDA arch $ARCH"

# 1. venv over the machine's packages (torch with CUDA is too big to bring); only what is missing
#    comes from the bundle, and nothing from the network.
#    A python3 that is itself a venv (images that ship torch in one) is used as it is: a venv made
#    over it with --system-site-packages would see the base interpreter's packages, not its torch.
if "$(command -v python3)" -c "import sys; sys.exit(0 if sys.prefix != sys.base_prefix else 1)"; then
  PY=$(command -v python3)
else
  VENV=${MENTALGLM_GPU_VENV:-$OUT/venv}
  [ -x "$VENV/bin/python" ] || "$(command -v python3)" -m venv --system-site-packages "$VENV"
  PY=$VENV/bin/python
fi
PIP=("$PY" -m pip install --no-index --find-links "$WHEELS" --disable-pip-version-check -q)
for requirement in scikit-build-core ninja numpy pydantic pluggy PyYAML gguf safetensors tokenizers \
                   transformers peft pytest diskcache jinja2 typing_extensions; do
  "${PIP[@]}" "$requirement" 2>>"$OUT/pip.log" || log "not installable offline: $requirement (see pip.log)"
done
"$PY" -c "import cmake" 2>/dev/null || command -v cmake >/dev/null || "${PIP[@]}" cmake 2>>"$OUT/pip.log"

# 2. llama-cpp-python with CUDA, for this architecture only (a fat build of every arch takes far longer).
BUILD_START=$(date +%s)
if "$PY" -c "import llama_cpp, sys; sys.exit(0 if llama_cpp.llama_supports_gpu_offload() else 1)" 2>/dev/null; then
  BUILD_STATUS="already built"
else
  SDIST=$(ls "$WHEELS"/llama_cpp_python-*.tar.gz 2>/dev/null | head -n 1)
  if [ -z "$SDIST" ]; then
    BUILD_STATUS="failed: no llama_cpp_python sdist in $WHEELS (run prepare)"
  else
    export PATH="/usr/local/cuda/bin:$PATH"
    log "building $(basename "$SDIST") for sm_$ARCH with $(nproc) jobs"
    if CMAKE_ARGS="-DGGML_CUDA=on -DCMAKE_CUDA_ARCHITECTURES=$ARCH -DLLAVA_BUILD=OFF -DGGML_NATIVE=ON" \
       CMAKE_GENERATOR=Ninja CMAKE_BUILD_PARALLEL_LEVEL=$(nproc) \
       "${PIP[@]}" --no-build-isolation --force-reinstall --no-deps "$SDIST" >"$OUT/build.log" 2>&1; then
      BUILD_STATUS=ok
    else
      BUILD_STATUS="failed (tail of build.log: $(tail -n 3 "$OUT/build.log" | tr '\n"' '  '))"
    fi
  fi
fi
printf '{"status": "%s", "arch": "%s", "seconds": %d}\n' "$BUILD_STATUS" "$ARCH" $(( $(date +%s) - BUILD_START )) \
  > "$OUT/build.json"
log "build: $BUILD_STATUS in $(( $(date +%s) - BUILD_START )) s"

# 3. measurements (each step reports ok/failed on its own; a failed build leaves llama.cpp on CPU).
"$PY" "$HERE/gpu_bench.py" measure --out "$OUT" --build-json "$OUT/build.json"
STATUS=$?
log "done in $(( $(date +%s) - START )) s: $OUT/gpu.json, $OUT/gpu.md"
exit $STATUS
