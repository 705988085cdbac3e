#!/usr/bin/env bash
# Install cellseg-d2 and everything it needs into the *active* Python environment.
#
# Order matters: torch/torchvision first (as a matching pair), then detectron2 compiled against
# that torch without build isolation, then this project (editable, with the dev extra) under a
# constraint that pins the installed torch so pip can never swap it out from under detectron2's
# compiled ops. Every step checks first and skips when already satisfied, so a second run takes
# seconds.
#
# Environment:
#   PYTHON              interpreter to install into (default: python3)
#   TORCH_VERSION       torch to install when no working torch/torchvision pair is present (2.14.1)
#   TORCHVISION_VERSION matching torchvision (0.29.1)
#   DETECTRON2_SOURCE   local detectron2 source directory or wheel (offline clusters); default is
#                       the upstream repository at the pinned commit below.
set -euo pipefail

PYTHON=${PYTHON:-python3}
TORCH_VERSION=${TORCH_VERSION:-2.14.1}
TORCHVISION_VERSION=${TORCHVISION_VERSION:-0.29.1}
DETECTRON2_REPO=https://github.com/facebookresearch/detectron2
DETECTRON2_COMMIT=02b5c4e295e990042a714712c21dc79b731e8833
PIP=("$PYTHON" -m pip install --disable-pip-version-check)
cd "$(dirname "$0")/.."
REPO_DIR=$PWD

say() { printf '[install] %s\n' "$*"; }

# 1. torch + torchvision, as a pair that actually runs an op from torchvision's compiled library.
if "$PYTHON" -c "import torch, torchvision; torchvision.ops.nms(torch.zeros(1, 4), torch.zeros(1), 0.5)" \
    >/dev/null 2>&1; then
  say "torch $("$PYTHON" -c 'import torch; print(torch.__version__)') with a working torchvision: kept"
else
  say "installing torch==$TORCH_VERSION torchvision==$TORCHVISION_VERSION"
  "${PIP[@]}" "torch==$TORCH_VERSION" "torchvision==$TORCHVISION_VERSION"
fi

# Pin whatever torch is now installed for every later pip call.
constraints=$(mktemp)
trap 'rm -f "$constraints"' EXIT
"$PYTHON" - >"$constraints" <<'PY'
import torch, torchvision
print(f"torch=={torch.__version__.split('+')[0]}")
print(f"torchvision=={torchvision.__version__.split('+')[0]}")
PY

# 2. Build tools; setuptools<81 keeps pkg_resources, which detectron2.model_zoo imports.
if ! "$PYTHON" -c "import pkg_resources, wheel" >/dev/null 2>&1; then
  say "installing setuptools<81 and wheel (detectron2.model_zoo needs pkg_resources)"
  "${PIP[@]}" -c "$constraints" "setuptools<81" wheel
fi

# 3. detectron2, compiled against the installed torch.
if "$PYTHON" -c "import detectron2._C" >/dev/null 2>&1; then
  say "detectron2 already installed: kept"
else
  if [ -n "${DETECTRON2_SOURCE:-}" ]; then
    if [ ! -e "$DETECTRON2_SOURCE" ]; then
      say "DETECTRON2_SOURCE=$DETECTRON2_SOURCE does not exist." >&2
      exit 1
    fi
    source_spec=$DETECTRON2_SOURCE
  else
    if ! GIT_TERMINAL_PROMPT=0 timeout 30 git ls-remote "$DETECTRON2_REPO" >/dev/null 2>&1; then
      cat >&2 <<MSG
[install] ERROR: detectron2 is not installed and $DETECTRON2_REPO cannot be reached.
[install] detectron2 has no PyPI release; install it one of two ways, then run 'make install' again:
[install]   1. With network access to GitHub: just re-run 'make install' (it builds
[install]      $DETECTRON2_REPO at commit $DETECTRON2_COMMIT).
[install]   2. Offline: copy a detectron2 checkout (that commit) or a wheel built for this torch to
[install]      this machine and run:  DETECTRON2_SOURCE=/path/to/detectron2 make install
MSG
      exit 1
    fi
    source_spec="git+$DETECTRON2_REPO.git@$DETECTRON2_COMMIT"
  fi
  say "building detectron2 from $source_spec against the installed torch (takes minutes)"
  MAX_JOBS=${MAX_JOBS:-$(nproc)} "${PIP[@]}" --no-build-isolation -c "$constraints" "$source_spec"
fi

# 4. The project itself, editable, with the dev extra; the constraints keep torch in place.
# Skipped only when this very checkout is the installed one and every requirement its setup.py
# declares (dev extra included) is satisfied; run from / so the checkout itself is not on
# sys.path. The requirements are read from setup.py, not from the installed metadata: an
# editable install keeps the metadata of the day it was made, so a requirement added since
# (openslide-python, openslide-bin) would pass unseen.
if (cd / && "$PYTHON" - "$REPO_DIR" <<'PY'
import ast, os, sys
from importlib.metadata import distribution, version, PackageNotFoundError
from packaging.requirements import Requirement
import cellseg_d2
assert os.path.dirname(os.path.abspath(cellseg_d2.__file__)) == os.path.join(sys.argv[1], "cellseg_d2")
distribution("cellseg-d2")
with open(os.path.join(sys.argv[1], "setup.py"), encoding="utf-8") as handle:
    tree = ast.parse(handle.read())
call = next(n for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "id", "") == "setup")
declared = {k.arg: ast.literal_eval(k.value) for k in call.keywords if k.arg in ("install_requires", "extras_require")}
for line in declared["install_requires"] + declared.get("extras_require", {}).get("dev", []):
    req = Requirement(line)
    if req.marker is not None and not req.marker.evaluate({"extra": "dev"}):
        continue
    try:
        assert req.specifier.contains(version(req.name), prereleases=True), line
    except PackageNotFoundError:
        sys.exit(1)
PY
) >/dev/null 2>&1; then
  say "cellseg-d2 (this checkout) and its dependencies already installed: kept"
else
  say "installing cellseg-d2 (editable, with the dev extra)"
  "${PIP[@]}" -q --no-build-isolation -c "$constraints" -e ".[dev]"
fi
"$PYTHON" -c "import detectron2, torch; print('[install] ok: detectron2', detectron2.__version__, \
'| torch', torch.__version__)"
