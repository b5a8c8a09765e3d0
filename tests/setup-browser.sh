#!/usr/bin/env bash
# Headless Chromium for the browser tests (textgen viz's page, textgen serve's playground):
# Debian's `chromium` package, which the tests drive through Playwright's Python API. (Playwright's
# own browser download needs its CDN; Debian's package comes from the distribution's mirrors.)
# And a CJK font (Debian's `fonts-noto-cjk`), which the tests that render Chinese need; that step
# comes first, as Chromium may already be there.
set -euo pipefail
sudo=""
if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
updated=""
if ! fc-list :lang=zh 2>/dev/null | grep -q .; then
  if ! command -v apt-get >/dev/null 2>&1; then
    echo "the browser tests need a CJK font: install Noto Sans CJK (or another) and run them again" >&2
    exit 1
  fi
  $sudo apt-get update -qq
  updated="yes"
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq fonts-noto-cjk >/dev/null
fi
if command -v chromium >/dev/null 2>&1; then
  exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "the browser tests need Chromium: install it (as 'chromium' on PATH) and run them again" >&2
  exit 1
fi
if [ -z "$updated" ]; then $sudo apt-get update -qq; fi
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq chromium >/dev/null
command -v chromium >/dev/null
