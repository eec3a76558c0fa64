#!/usr/bin/env bash
# Label Studio stage: the expert-review round trip (review export → a real Label Studio on loopback
# → JSON export → review import / stats) in tests/labelstudio, marker `labelstudio`.
# Label Studio pins its own Django and friends, so it gets a virtual environment of its own and
# the project's .venv (built by .ci/run, which this stage expects) is left as it is.
# The server is started by the test fixture with a fresh SQLite data folder; its PyPI version
# check, analytics and Sentry are switched off, so it talks to loopback only.
# Measured on 2 shared cores: 1.5-3.5 min to install label-studio 1.23.2 (95 s on a quiet machine,
# 195 s beside other jobs), 2-2.5 min for the tests (110-130 s, 60-70 s of which migrate the fresh
# database and start the server); the whole stage took 5.5 min beside other jobs.
set -euo pipefail
cd "$(dirname "$0")/.."

. .ci/quiet.sh
rm -rf .venv-labelstudio
python3 -m venv .venv-labelstudio
printf '*\n' > .venv-labelstudio/.gitignore  # never committed, whoever runs this
quiet .venv-labelstudio/bin/pip install --quiet --upgrade pip
quiet .venv-labelstudio/bin/pip install --quiet "label-studio==1.23.2"
.venv-labelstudio/bin/python -c "import importlib.metadata as m; m.version('label-studio')"  # the install worked
MENTALGLM_LABEL_STUDIO="$PWD/.venv-labelstudio/bin/label-studio" .venv/bin/python -m pytest -q -p no:cacheprovider \
    -m labelstudio tests/labelstudio
