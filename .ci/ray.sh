#!/usr/bin/env bash
# CI stage: `analyze --executor ray` (Ray Data) on a real local Ray cluster — tests/ray_cluster, marker `ray`.
# Run after .ci/run has built .venv: it adds the [ray] extra (ray[data]==2.60.0) to that environment and runs
# the Ray tests, which the main suite skips (they need ray installed and MENTALGLM_RAY=1).
# The tests: a local 2-CPU cluster, 2,000 posts through a tiny llama.cpp model three times — in process, on Ray
# with a worker SIGKILLed, on Ray with the driver SIGKILLed — plus the reruns. Its time: .ci/run measures it.
set -euo pipefail
cd "$(dirname "$0")/.."

. .ci/quiet.sh
quiet .venv/bin/pip install --quiet -e ".[ray]"
.venv/bin/python -c "import ray.data, pyarrow, mentalglm.executors.ray_data"  # the install worked

MENTALGLM_RAY=1 .venv/bin/python -m pytest -q -p no:cacheprovider -m ray tests/ray_cluster
# The Ray benchmark once at smoke scale (the main smoke pass ran before [ray] was installed and skipped it).
MENTALGLM_BENCH_SCALE=smoke .venv/bin/python -m pytest -q -p no:cacheprovider benchmarks/test_ray.py --benchmark-disable
