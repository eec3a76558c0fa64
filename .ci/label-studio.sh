#!/usr/bin/env bash
# Label Studio stage: the expert-review round trip (review export → a real Label Studio on loopback
# → JSON export → review import / stats) in tests/labelstudio, marker `labelstudio`.
# Label Studio pins its own Django and friends, so it gets a virtual environment of its own and
# the project's .venv (built by .ci/run, which this stage expects) is left as it is.
# The server is started by the test fixture with a fresh SQLite data folder; its PyPI version
# check, analytics and Sentry are switched off, so it talks to loopback only.
# Most of its time is the install of label-studio and, in the test, migrating the fresh database and starting
# the server; .ci/run measures the stage.
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
