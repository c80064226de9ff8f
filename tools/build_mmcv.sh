#!/usr/bin/env bash
# Build mmcv 2.1.0 from its sdist with CPU ops only (C++ kernels, no CUDA), once per torch/Python.
#
#   tools/build_mmcv.sh PYTHON WHEEL_DIR [SDIST]
#
# PYTHON: the interpreter (with torch, setuptools<81, wheel, ninja) the wheel is built for.
# WHEEL_DIR: cache folder; a wheel already there is reused. SDIST: mmcv-2.1.0.tar.gz (offline
# machines); without it pip downloads the sdist. Progress goes to stderr; the last line on
# stdout is the wheel's path.
#
# Why CPU ops only, also on GPU machines: mmcv 2.1.0 has no wheel for our torch, a CUDA build
# takes far longer, and nothing mobileone_dense runs needs mmcv's kernels (detection NMS goes
# through torchvision). mmcv's setup.py builds CUDA ops whenever torch sees a GPU, so the GPU is
# hidden from the build (CUDA_VISIBLE_DEVICES=). mmcv 2.1.0 hard-codes -std=c++17; torch >= 2.13
# headers need C++20 (MMCV_CXX_STD overrides).
set -euo pipefail

PY="$1"
WHEEL_DIR="$2"
SDIST="${3:-}"
MMCV_VERSION=2.1.0
CXX_STD="${MMCV_CXX_STD:-c++20}"
log() { printf '[build_mmcv %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

mkdir -p "$WHEEL_DIR"
WHEEL="$(ls "$WHEEL_DIR"/mmcv-"$MMCV_VERSION"-*.whl 2>/dev/null | head -n1 || true)"
if [[ -n "$WHEEL" ]]; then
  log "using cached mmcv wheel $WHEEL"
  echo "$WHEEL"
  exit 0
fi

BUILD="$(mktemp -d)"
trap 'rm -rf "$BUILD"' EXIT
if [[ -z "$SDIST" ]]; then
  "$PY" -m pip --disable-pip-version-check download -q --no-deps --no-binary :all: \
    --no-build-isolation "mmcv==$MMCV_VERSION" -d "$BUILD" \
    2> >(grep -v 'is ignored: it is neither a file nor a directory' >&2)
  SDIST="$BUILD/mmcv-$MMCV_VERSION.tar.gz"
fi
[[ -f "$SDIST" ]] || { echo "mmcv sdist $SDIST not found" >&2; exit 1; }
tar -xzf "$SDIST" -C "$BUILD"
SRC="$BUILD/mmcv-$MMCV_VERSION"
sed -i "s/-std=c++17/-std=$CXX_STD/g" "$SRC/setup.py"
grep -q -- "-std=$CXX_STD" "$SRC/setup.py" || { echo "could not set mmcv's C++ standard" >&2; exit 1; }
TOTAL="$(find "$SRC/mmcv/ops/csrc/pytorch" -name '*.cpp' -not -path '*/cuda/*' -not -path '*/mlu/*' \
         -not -path '*/npu/*' -not -path '*/mps/*' | wc -l)"
JOBS="${MAX_JOBS:-$(nproc)}"
log "building mmcv $MMCV_VERSION with CPU ops for $("$PY" -c 'import sys, torch; print(f"Python {sys.version.split()[0]}, torch {torch.__version__}")') on $JOBS cores"
(
  cd "$SRC"
  CUDA_VISIBLE_DEVICES='' MMCV_WITH_OPS=1 FORCE_CUDA=0 MAX_JOBS="$JOBS" \
    "$PY" -m pip --disable-pip-version-check wheel --no-deps --no-build-isolation \
    -w "$BUILD/dist" . >"$BUILD/build.log" 2>&1
) &
BUILD_PID=$!
START=$SECONDS
while kill -0 "$BUILD_PID" 2>/dev/null; do
  sleep 30
  DONE="$(find "$SRC" -maxdepth 9 -name '*.o' -newer "$SRC/setup.py" 2>/dev/null | wc -l)"
  log "$(( (SECONDS - START) / 60 )) min elapsed, ~${DONE}/${TOTAL} C++ sources compiled"
done
if ! wait "$BUILD_PID"; then
  tail -n 60 "$BUILD/build.log" >&2
  cp "$BUILD/build.log" "$WHEEL_DIR/build-failed.log"
  echo "mmcv build failed (log above; full log: $WHEEL_DIR/build-failed.log)" >&2
  exit 1
fi
BUILT="$(ls "$BUILD"/dist/mmcv-*.whl | head -n1)"
# copy then rename: a concurrent or interrupted build never leaves a half-written wheel
cp "$BUILT" "$WHEEL_DIR/.partial.whl"
mv "$WHEEL_DIR/.partial.whl" "$WHEEL_DIR/$(basename "$BUILT")"
log "mmcv built in $(( (SECONDS - START) / 60 )) min, cached at $WHEEL_DIR/$(basename "$BUILT")"
echo "$WHEEL_DIR/$(basename "$BUILT")"
