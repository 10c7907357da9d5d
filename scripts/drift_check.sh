#!/usr/bin/env bash
# Drift check: install the newest releases that pyproject.toml's ranges allow into a separate
# environment (.venv-drift), list what differs from requirements.lock, and run the whole test suite
# there. It tells, before a new release reaches a user's `pip install`, whether the suite still passes.
#
#   bash scripts/drift_check.sh                 # check only; requirements.lock is left as it is
#   bash scripts/drift_check.sh --write-lock    # ... and, if the suite passes, make that set the lock
#   bash scripts/drift_check.sh -- -k rollout   # arguments after -- go to pytest
#
# The lock is written only after the suite passed with exactly the versions it records.
set -euo pipefail
cd "$(dirname "$0")/.."

write_lock=0
pytest_args=()
while [ $# -gt 0 ]; do
  case "$1" in
    --write-lock) write_lock=1 ;;
    --) shift; pytest_args=("$@"); break ;;
    *) echo "drift_check: unknown argument $1 (use --write-lock, or -- before pytest arguments)" >&2; exit 2 ;;
  esac
  shift
done

if [ "$write_lock" = 1 ] && [ ${#pytest_args[@]} -gt 0 ]; then
  echo "drift_check: --write-lock needs the whole suite; drop the pytest arguments" >&2
  exit 2
fi

export VENV=.venv-drift
rm -rf "$VENV"  # always a fresh environment: nothing left over from the lock or an earlier check
MMRL_NO_LOCK=1 bash scripts/setup.sh

freeze=$(mktemp)
trap 'rm -f "$freeze"' EXIT
"$VENV/bin/python" -m pip freeze --all --exclude-editable --disable-pip-version-check 2>/dev/null | sort -f >"$freeze"
echo "drift_check: newest allowed releases that differ from requirements.lock:"
changes=$(diff <(grep -v '^#' requirements.lock | sort -f) "$freeze" | grep '^[<>]' || true)
if [ -z "$changes" ]; then
  echo "  none"
else
  # "name: locked -> newest" per package
  echo "$changes" | sed -E 's/^([<>]) ([^=]+)==(.*)$/\2 \1 \3/' | sort -f | awk '
    { name = tolower($1); if ($2 == "<") old[name] = $3; else new[name] = $3; shown[name] = $1 }
    END { for (n in shown) printf "  %s: %s -> %s\n", shown[n], (n in old ? old[n] : "(new)"), (n in new ? new[n] : "(gone)") }' | sort -f
fi

"$VENV/bin/python" -m pytest -q -ra "${pytest_args[@]}"

if [ "$write_lock" = 1 ]; then
  {
    echo "# requirements.lock: every package of mmrl's test environment at the exact version the whole suite"
    echo "# passed with (written by: bash scripts/drift_check.sh --write-lock). scripts/setup.sh installs"
    echo "# mmrl with these as pip constraints (-c). Resolved for CPython 3.11 on Linux x86_64."
    cat "$freeze"
  } >requirements.lock
  echo "drift_check: requirements.lock updated"
fi
