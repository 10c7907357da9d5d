#!/usr/bin/env bash
# Set up mmrl on a fresh machine: the Debian packages it needs (when run as root), a virtual
# environment in .venv, torch from the pinned release, and mmrl itself (editable, with dev tools).
# Safe to run again: every step is skipped or quick when already done.
set -euo pipefail
cd "$(dirname "$0")/.."

# open3d needs libusb at import time; libgomp for its CPU kernels.
debs="libusb-1.0-0 libgomp1"
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  missing=""
  for d in $debs; do dpkg -s "$d" >/dev/null 2>&1 || missing="$missing $d"; done
  if [ -n "$missing" ]; then
    echo "setup: installing Debian packages:$missing"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing >/dev/null
  fi
elif ! ldconfig -p 2>/dev/null | grep -q libusb-1.0; then
  echo "setup: warning: libusb-1.0 not found; install it (Debian: apt-get install $debs) for open3d" >&2
fi

PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
pip() { .venv/bin/python -m pip "$@"; }
pip install -q --disable-pip-version-check --upgrade pip
# The torch release pinned here is the one this project is tested with (a CPU-capable build).
pip install -q --disable-pip-version-check "torch==2.14.1" "torchvision==0.29.1"
pip install -q --disable-pip-version-check -e ".[dev]"
echo "setup: ready (.venv/bin/mmrl)"
