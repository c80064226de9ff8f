#!/usr/bin/env bash
# Create/refresh the project environment in .venv/ (idempotent).
#
# - torch/torchvision and the OpenMMLab stack pinned in requirements.txt;
# - on a machine with an NVIDIA GPU, a check that this torch can use it (tools/gpu_preflight.py);
# - mmcv 2.1.0 built from its sdist with CPU ops (tools/build_mmcv.sh; the slow step, README
#   "Quick start" has its measured time), the wheel cached under
#   ~/.cache/mobileone_dense/wheels/<torch>-<python>/ so that later setups skip it;
# - the `mobile` extra (requirements-mobile.txt: ExecuTorch, for the .pte export and its tests);
# - this package installed editable;
# - setuptools pinned last (some installs upgrade it behind our back).
# A stamp file records the hash of the inputs: a second run with nothing changed returns at once.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
PY_BOOT="${PYTHON:-python3.11}"
command -v "$PY_BOOT" >/dev/null 2>&1 || PY_BOOT=python3
MMCV_VERSION=2.1.0
CACHE_ROOT="${MOBILEONE_DENSE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/mobileone_dense}"

log() { printf '[setup %s] %s\n' "$(date +%H:%M:%S)" "$*"; }

stamp_inputs() {
  cat "$ROOT/requirements.txt" "$ROOT/requirements-mobile.txt" "$ROOT/requirements-build.txt" \
      "$ROOT/tools/setup_env.sh" \
      "$ROOT/tools/build_mmcv.sh" "$ROOT/setup.py" | sha256sum | cut -d' ' -f1
}
STAMP="$VENV/.mobileone_dense_env"
if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$(stamp_inputs)" ]] \
   && "$VENV/bin/python" -c "import mmcv.ops, mmdet, mmseg, mmpretrain, mobileone_dense" 2>/dev/null; then
  log "environment up to date ($VENV)"
  exit 0
fi

if [[ ! -x "$VENV/bin/python" ]]; then
  log "creating $VENV with $($PY_BOOT --version)"
  "$PY_BOOT" -m venv "$VENV"
fi
PY="$VENV/bin/python"
PIP=("$PY" -m pip --disable-pip-version-check)
# pip, minus this machine's noise about absent local index folders.
pipq() { "${PIP[@]}" "$@" 2> >(grep -v 'is ignored: it is neither a file nor a directory' >&2); }

log "installing build tools, torch and torchvision (torch comes from local disk)"
pipq install -q wheel -r "$ROOT/requirements-build.txt"
pipq install -q "torch==2.14.1" "torchvision==0.29.1" numpy -r "$ROOT/requirements-build.txt"

# A GPU machine whose driver cannot run this torch build would otherwise train on the CPU.
"$PY" "$ROOT/tools/gpu_preflight.py"

TORCH_VER="$("$PY" -c 'import torch; print(torch.__version__.split("+")[0])')"
PY_TAG="$("$PY" -c 'import sys; print(f"cp{sys.version_info[0]}{sys.version_info[1]}")')"
WHEEL_DIR="$CACHE_ROOT/wheels/torch${TORCH_VER}-${PY_TAG}"

if ! "$PY" -c "import mmcv, mmcv.ops; assert mmcv.__version__ == '$MMCV_VERSION'" 2>/dev/null; then
  pipq install -q "mmengine==0.10.7" ninja
  WHEEL="$(bash "$ROOT/tools/build_mmcv.sh" "$PY" "$WHEEL_DIR" | tail -n1)"
  pipq install -q --no-deps "$WHEEL"
  pipq install -q "mmengine==0.10.7" addict packaging Pillow pyyaml yapf opencv-python
fi

log "installing the OpenMMLab stack, test tools and the mobile extra (ExecuTorch)"
# one resolution with requirements.txt: executorch's dependencies cannot move the pinned torch
pipq install -q -r "$ROOT/requirements.txt" -r "$ROOT/requirements-mobile.txt" \
  "mmcv==$MMCV_VERSION" -r "$ROOT/requirements-build.txt"
log "installing mobileone_dense (editable)"
pipq install -q --no-deps --no-build-isolation -e "$ROOT"
# mmengine finds ``mobileone_dense::`` configs under <distribution location>/mobileone_dense/.mim;
# a PEP 660 editable install has no package directory there (imports go through a finder), so
# link the package into site-packages: imports then resolve to the live checkout through it.
SITE="$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
if [[ ! -e "$SITE/mobileone_dense" || -L "$SITE/mobileone_dense" ]]; then
  ln -sfn "$ROOT/mobileone_dense" "$SITE/mobileone_dense"
fi
# Pin last: nothing after this may upgrade setuptools past 80.
pipq install -q -r "$ROOT/requirements-build.txt"

"$PY" - <<'EOF'
import pkg_resources  # noqa: F401  (mmengine's pkg:: config inheritance needs it)
import torch, mmcv, mmengine, mmdet, mmseg, mmpretrain
from mmcv.ops import batched_nms  # noqa: F401  (proves the CPU ops were compiled)
import mobileone_dense
print(f"torch {torch.__version__}, mmcv {mmcv.__version__}, mmengine {mmengine.__version__}, "
      f"mmdet {mmdet.__version__}, mmseg {mmseg.__version__}, mmpretrain {mmpretrain.__version__}")
EOF
stamp_inputs >"$STAMP"
log "environment ready: $VENV"
