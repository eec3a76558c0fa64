#!/usr/bin/env bash
# Browser stage: the review page of `mentalglm serve` in a real headless Chromium (tests/browser, marker
# `browser`). Debian's chromium, chromium-driver and a CJK font (apt, ~270 MB), Selenium from PyPI into
# .venv. The screenshot is kept in .ci-artifacts/. A skipped browser test fails this stage (tests/conftest.py).
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null || ! fc-list | grep -qi wenquanyi; then
    SUDO=$([ "$(id -u)" = 0 ] && echo "" || echo sudo)
    $SUDO apt-get update -q >/dev/null
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q chromium chromium-driver fonts-wqy-zenhei >/dev/null
fi
. .ci/quiet.sh
quiet .venv/bin/pip install --quiet "selenium>=4.20"
.venv/bin/python -c "import selenium, fastapi, uvicorn"  # installed
mkdir -p .ci-artifacts
MENTALGLM_BROWSER=1 MENTALGLM_ARTIFACTS="$PWD/.ci-artifacts" \
    .venv/bin/python -m pytest -q -p no:cacheprovider -m browser tests/browser
test -s .ci-artifacts/review-page.png  # the screenshot was taken
