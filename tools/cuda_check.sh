#!/usr/bin/env bash
# One command for a CUDA machine: install, build, run the CUDA tests and the GPU benchmark, print
# one table.
#
#   tools/cuda_check.sh WHEEL_DIR [OUT_DIR]          # OUT_DIR default: work_dirs/cuda_check
#
# For a Linux machine with an NVIDIA GPU, Python and a CUDA build of torch + torchvision already
# installed, and no internet. WHEEL_DIR comes from `tools/download_wheels.sh DIR PYTHON_VERSION`
# run on a machine with the package registry (same Python version, x86_64). Steps:
#   1. tools/gpu_preflight.py: the GPU is there and torch can use it;
#   2. the wheels installed (no index, no dependencies resolved) into .cuda_env/site, which goes
#      first on PYTHONPATH (the machine's own packages stay untouched);
#   3. mmcv 2.1.0 built with CPU ops from the folder's sdist with every core (tools/build_mmcv.sh;
#      cached per torch/Python version where tools/setup_env.sh caches it): nothing of ours needs
#      mmcv's CUDA kernels;
#   4. pytest tests/test_cuda.py (and the NMS parity tests), in 4 processes with pytest-xdist;
#   5. tools/benchmark.py --device cuda (budget CUDA_CHECK_BENCH_BUDGET_S seconds, default 240);
#   6. one summary: machine, test results, benchmark tables -> OUT_DIR/cuda_check.txt.
# CUDA_CHECK_DEVICE=cpu runs the same steps on the CPU (tests with
# MOBILEONE_DENSE_TEST_DEVICE=cpu, a tiny benchmark): a dry run of the script on a machine without
# a GPU.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
WHEEL_DIR="$(cd "${1:?usage: tools/cuda_check.sh WHEEL_DIR [OUT_DIR]}" && pwd)"
OUT="${2:-$ROOT/work_dirs/cuda_check}"
DEVICE="${CUDA_CHECK_DEVICE:-cuda}"
PY="${PYTHON:-python3}"
ENV_DIR="$ROOT/.cuda_env"
SITE="$ENV_DIR/site"
START=$SECONDS
mkdir -p "$OUT" "$SITE"
OUT="$(cd "$OUT" && pwd)"
log() { printf '[cuda_check %s +%ds] %s\n' "$(date +%H:%M:%S)" "$((SECONDS - START))" "$*"; }

log "Python $("$PY" -c 'import sys; print(sys.version.split()[0])'), $(nproc) cores, wheels in $WHEEL_DIR"
if [[ "$DEVICE" == cuda ]]; then
  "$PY" "$ROOT/tools/gpu_preflight.py"
  "$PY" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else "no CUDA GPU visible to torch: CUDA_CHECK_DEVICE=cpu for a dry run")'
fi

# 2. wheels: our site folder first on the path, the machine's torch and friends after it
STAMP="$SITE/.installed"
WANT="$(ls "$WHEEL_DIR" | sha256sum | cut -d' ' -f1)"
if [[ ! -f "$STAMP" || "$(cat "$STAMP")" != "$WANT" ]]; then
  log "installing $(ls "$WHEEL_DIR"/*.whl | wc -l) wheels into $SITE"
  "$PY" -m pip --disable-pip-version-check install -q --no-index --no-deps --no-compile \
    --upgrade --target "$SITE" "$WHEEL_DIR"/*.whl
  echo "$WANT" >"$STAMP"
fi
export PYTHONPATH="$SITE:$ROOT${PYTHONPATH:+:$PYTHONPATH}"

# 3. mmcv with CPU ops
if ! "$PY" -c 'import mmcv.ops' 2>/dev/null; then
  SDIST="$(ls "$WHEEL_DIR"/mmcv-2.1.0.tar.gz)"
  TORCH_TAG="$("$PY" -c 'import sys, torch; print(f"torch{torch.__version__.split("+")[0]}-cp{sys.version_info[0]}{sys.version_info[1]}")')"
  CACHE="${MOBILEONE_DENSE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/mobileone_dense}/wheels/$TORCH_TAG"
  WHEEL="$(bash "$ROOT/tools/build_mmcv.sh" "$PY" "$CACHE" "$SDIST" | tail -n1)"
  "$PY" -m pip --disable-pip-version-check install -q --no-index --no-deps --upgrade \
    --target "$SITE" "$WHEEL"
fi
"$PY" - <<'EOF'
import importlib, sys
missing = []
for name in ('mmcv.ops', 'mmengine', 'mmdet', 'mmseg', 'mmpretrain', 'pycocotools', 'cv2',
             'onnx', 'onnxruntime', 'pytest', 'mobileone_dense'):
    try:
        importlib.import_module(name)
    except ImportError as error:
        missing.append(f'{name} ({error})')
if missing:
    sys.exit('cannot import: ' + '; '.join(missing) + '. Add the missing packages to the wheel '
             'folder (tools/download_wheels.sh DIR VERSION --complete fetches every dependency).')
import torch, mmcv, mmdet, mmseg, mmpretrain
print(f'[cuda_check] torch {torch.__version__} (CUDA {torch.version.cuda}), mmcv {mmcv.__version__}, '
      f'mmdet {mmdet.__version__}, mmseg {mmseg.__version__}, mmpretrain {mmpretrain.__version__}')
EOF
log "environment ready"

# 4. tests: in 4 processes where pytest-xdist is installed, each task's trained model in one
export MOBILEONE_DENSE_TEST_DEVICE="$DEVICE"
PARALLEL=() THREADS="${OMP_NUM_THREADS:-}"
if "$PY" -c 'import xdist' 2>/dev/null && (( $(nproc) >= 8 )); then
  PARALLEL=(-n 4 --dist loadgroup)
  # a quarter of the cores for each test process and the tools it starts: torch would give every
  # one of them all the cores, and their spinning OpenMP threads would slow each other down
  THREADS="${THREADS:-$(( $(nproc) / 4 ))}"
fi
set +e
env ${THREADS:+OMP_NUM_THREADS=$THREADS} \
  "$PY" -m pytest "$ROOT/tests/test_cuda.py" "$ROOT/tests/test_nms.py" -q -p no:cacheprovider \
  "${PARALLEL[@]}" -rA --junitxml "$OUT/cuda_tests.xml" 2>&1 | tee "$OUT/cuda_tests.log"
TESTS_RC=${PIPESTATUS[0]}
set -e
log "tests finished (exit status $TESTS_RC)"

# 5. benchmark
if [[ "$DEVICE" == cuda ]]; then
  BENCH=(--device cuda --budget-s "${CUDA_CHECK_BENCH_BUDGET_S:-240}")
else  # dry run: the same code paths, tiny
  BENCH=(--device cpu --mode throughput --task cls --arch s0 --input-size 64 --batches 2
         --dtypes float32 bfloat16 --train-settings 2x64 --warmup 1 --repeats 2)
fi
set +e
"$PY" "$ROOT/tools/benchmark.py" "${BENCH[@]}" --out-dir "$OUT" 2>&1 | tee "$OUT/benchmark.log"
BENCH_RC=${PIPESTATUS[0]}
set -e
log "benchmark finished (exit status $BENCH_RC)"

# 6. summary
"$PY" - "$OUT" "$TESTS_RC" "$BENCH_RC" "$((SECONDS - START))" <<'EOF' | tee "$OUT/cuda_check.txt"
import datetime, json, os, platform, subprocess, sys
import xml.etree.ElementTree as ET
import torch
from mobileone_dense.analysis.throughput import format_throughput
out, tests_rc, bench_rc, seconds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no GPU (dry run on the CPU)'
try:
    driver = subprocess.run(['nvidia-smi', '--query-gpu=driver_version', '--format=csv,noheader'],
                            capture_output=True, text=True).stdout.split('\n')[0].strip()
except OSError:
    driver = '-'
print(f'\n=== cuda_check {datetime.date.today()}: {gpu}, driver {driver or "-"}, '
      f'{os.cpu_count()} cores, Python {platform.python_version()}, torch {torch.__version__} '
      f'(CUDA {torch.version.cuda}), {seconds} s in all ===')
counts, failed = {}, []
try:
    for case in ET.parse(os.path.join(out, 'cuda_tests.xml')).iter('testcase'):
        state = 'passed'
        for child in case:
            if child.tag in ('failure', 'error'):
                state = 'failed'
            elif child.tag == 'skipped':
                state = 'skipped'
        counts[state] = counts.get(state, 0) + 1
        if state == 'failed':
            failed.append(f'{case.get("classname")}::{case.get("name")}')
except (OSError, ET.ParseError) as error:
    print(f'tests: no report ({error})')
print('tests: ' + ', '.join(f'{n} {s}' for s, n in sorted(counts.items())) +
      f' (exit status {tests_rc}; details: {out}/cuda_tests.log)')
for name in failed:
    print(f'  FAILED {name}')
try:
    with open(os.path.join(out, 'throughput.json')) as f:
        print('\n' + format_throughput(json.load(f)['rows']))
except OSError:
    print(f'benchmark: no result (exit status {bench_rc}; see {out}/benchmark.log)')
EOF
[[ "$TESTS_RC" == 0 && "$BENCH_RC" == 0 ]]
