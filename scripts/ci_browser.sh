#!/usr/bin/env bash
# Make sure headless Chromium and its WebDriver are installed, for the browser test
# (tests/test_browser.py drives the demo page with selenium). Idempotent: a no-op, in milliseconds,
# where both are already there; otherwise installs Debian's `chromium` and `chromium-driver`
# (binaries /usr/bin/chromium and /usr/bin/chromedriver).
set -euo pipefail

if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then
    exit 0
fi

if ! command -v apt-get >/dev/null; then
    echo "ci_browser: no chromium/chromedriver and no apt-get: install Chromium and its chromedriver" >&2
    exit 1
fi
sudo=""
if [ "$(id -u)" -ne 0 ]; then
    sudo="sudo"
fi

echo "ci_browser: installing chromium and chromium-driver with apt-get"
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq chromium chromium-driver >/dev/null

if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then
    echo "ci_browser: $(chromium --version 2>/dev/null | head -n 1), $(chromedriver --version | head -n 1)"
else
    echo "ci_browser: installed the packages but chromium or chromedriver is not on PATH" >&2
    exit 1
fi
