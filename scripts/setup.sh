#!/usr/bin/env bash
# Set up mmrl on a fresh machine: the Debian packages it needs (when run as root), a virtual
# environment in .venv, and every Python package at the exact version in requirements.lock (the set
# the test suite passed with), mmrl itself editable with the dev tools.
# Safe to run again: every step is skipped or quick when already done.
#
# pip's own output goes to .venv/setup.log; it is printed only when a step fails.
# MMRL_NO_LOCK=1 installs from pyproject.toml's ranges instead (what scripts/drift_check.sh does).
set -euo pipefail
cd "$(dirname "$0")/.."

# open3d needs libusb at import time; libgomp for its CPU kernels; chromium is the browser the web
# explorer drives through Playwright (Debian's build, so `playwright install` is never needed).
debs="libusb-1.0-0 libgomp1 chromium"
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  missing=""
  for d in $debs; do dpkg -s "$d" >/dev/null 2>&1 || missing="$missing $d"; done
  if [ -n "$missing" ]; then
    echo "setup: installing Debian packages:$missing"
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing >/dev/null 2>&1
  fi
else
  if ! ldconfig -p 2>/dev/null | grep -q libusb-1.0; then
    echo "setup: warning: libusb-1.0 not found; install it (Debian: apt-get install libusb-1.0-0) for open3d" >&2
  fi
  if ! command -v chromium >/dev/null 2>&1; then
    echo "setup: warning: chromium not found; install it (Debian: apt-get install chromium) for the web explorer" >&2
  fi
fi

VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
log="$VENV/setup.log"
: >"$log"

# Run pip with its output in the log; on failure show the end of the log and stop.
pip_quiet() {
  if ! "$VENV/bin/python" -m pip --disable-pip-version-check "$@" >>"$log" 2>&1; then
    echo "setup: pip $* failed; the last lines of $log:" >&2
    grep -v "^WARNING: Location '.*' is ignored" "$log" | tail -n 30 >&2
    exit 1
  fi
}

# The lock is resolved for CPython 3.11 on Linux x86_64 (this project's CI machine); elsewhere the
# ranges in pyproject.toml apply, with the same torch pins.
platform=$("$VENV/bin/python" -c 'import platform, sys; print(f"{sys.platform}-{platform.machine()}-{sys.version_info[0]}.{sys.version_info[1]}")')
lock=requirements.lock
if [ "${MMRL_NO_LOCK:-0}" = 1 ]; then
  echo "setup: installing the newest releases pyproject.toml allows into $VENV (no lock)"
  pip_quiet install --upgrade pip
  pip_quiet install "torch==2.14.1" "torchvision==0.29.1"
  pip_quiet install --upgrade --upgrade-strategy eager -e ".[dev]"
elif [ "$platform" = "linux-x86_64-3.11" ]; then
  echo "setup: installing the locked versions ($lock) into $VENV"
  pip_quiet install -c "$lock" pip
  pip_quiet install -c "$lock" -e ".[dev]"
else
  echo "setup: $lock is resolved for linux-x86_64-3.11, this is $platform: installing from pyproject.toml's ranges" >&2
  pip_quiet install "torch==2.14.1" "torchvision==0.29.1"
  pip_quiet install -e ".[dev]"
fi
"$VENV/bin/python" -c "import mmrl, torch, transformers; print(f'setup: ready ($VENV/bin/mmrl; torch {torch.__version__}, transformers {transformers.__version__})')"
