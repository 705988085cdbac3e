#!/usr/bin/env bash
# Run tools/install.sh only when something it installs may be missing (make test, demo and lint
# call this first). The stamp holds a key made of the install inputs (setup.py, tools/install.sh)
# and of what the active interpreter sees: its prefix and version, and where torch, torchvision,
# detectron2 and cellseg_d2 are found (looked up, not imported: tens of milliseconds instead of
# the ~15 s that install.sh's import checks cost). A change to either reruns the install;
# `make install` always runs it.
set -euo pipefail
PYTHON=${PYTHON:-python3}
cd "$(dirname "$0")/.."
STAMP=.install-stamp

probe() {
  # From / so that this checkout's folder on sys.path cannot stand in for an installed package.
  (cd / && "$PYTHON" - <<'PY'
import importlib.util
import sys

print(sys.prefix, sys.version.split()[0])
for name in ("torch", "torchvision", "detectron2", "cellseg_d2"):
    spec = importlib.util.find_spec(name)
    print(name, spec.origin if spec else "missing")
PY
  )
}

# Prints the key when the environment is complete and uses this checkout, else nothing.
current_key() {
  local seen
  seen=$(probe)
  [[ $seen != *missing* && $seen == *"$PWD/cellseg_d2/"* ]] || return 0
  { printf '%s\n' "$seen"; cat setup.py tools/install.sh; } | sha256sum | cut -d' ' -f1
}

key=$(current_key)
if [ -n "$key" ] && [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$key" ]; then
  exit 0
fi
PYTHON=$PYTHON bash tools/install.sh
key=$(current_key)
if [ -z "$key" ]; then
  echo "[install] ERROR: after tools/install.sh, $PYTHON still does not see torch, torchvision," \
    "detectron2 and this checkout's cellseg_d2 (see the log above)" >&2
  exit 1
fi
printf '%s\n' "$key" >"$STAMP"
