#!/usr/bin/env bash
# Prepare, on a machine with the package registry, the wheel folder tools/cuda_check.sh installs
# on an offline GPU machine.
#
#   tools/download_wheels.sh DIR [PYTHON_VERSION] [--complete]
#
# PYTHON_VERSION: the GPU machine's Python, e.g. 3.12 (default: this machine's). Downloads, for
# that Python on manylinux x86_64: the OpenMMLab packages and the small dependencies a CUDA
# PyTorch image (torch, torchvision, numpy, scipy, matplotlib, opencv-python-headless, onnx,
# onnxruntime, pytest, ...) does not carry, each without its own dependencies, plus mmcv's sdist
# (built there by tools/build_mmcv.sh) and a transformers 4 for mmpretrain (see PACKAGES).
# --complete instead resolves every dependency except torch and torchvision (a bare Python with
# torch; a few hundred MB). The folder is about 25 MB.
set -euo pipefail

DIR="" PYVER="" COMPLETE=0
for arg in "$@"; do
  case "$arg" in
    --complete) COMPLETE=1 ;;
    *) if [[ -z "$DIR" ]]; then DIR="$arg"; else PYVER="$arg"; fi ;;
  esac
done
[[ -n "$DIR" ]] || { echo "usage: tools/download_wheels.sh DIR [PYTHON_VERSION] [--complete]" >&2; exit 2; }
[[ -n "$PYVER" ]] || PYVER="$(python3 -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')"

# The versions tools/setup_env.sh resolves (requirements.txt pins the OpenMMLab stack).
PACKAGES=(
  mmengine==0.10.7 mmdet==3.3.0 mmsegmentation==1.2.2 mmpretrain==1.2.0
  pycocotools shapely terminaltables addict yapf platformdirs termcolor prettytable wcwidth
  ftfy modelindex model-index ordered-set mat4py importlib-metadata lazy_importer
  "setuptools>=77.0.3,<81"
  # mmpretrain 1.2.0 imports its BLIP models whenever transformers >= 4.28 is installed, and they
  # fail with transformers 5 ("TypeError: NoneType takes no arguments"), which CUDA images carry
  # (seen on an H200 image, 2026-12-04): these go first on the path in .cuda_env/site instead
  transformers==4.38.2 tokenizers==0.15.2 huggingface_hub==0.20.3
)
PLATFORMS=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64
           --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64
           --platform manylinux1_x86_64 --platform any)
mkdir -p "$DIR"
PIP=(python3 -m pip --disable-pip-version-check download -q -d "$DIR" --only-binary=:all:
     --python-version "$PYVER" --implementation cp "${PLATFORMS[@]}")
# pip, minus this machine's noise about absent local index folders
quiet() { "$@" 2> >(grep -v 'is ignored: it is neither a file nor a directory' >&2); }
if [[ "$COMPLETE" == 1 ]]; then
  quiet "${PIP[@]}" "${PACKAGES[@]}" onnx onnxruntime onnxscript pytest opencv-python-headless \
    matplotlib scipy
  rm -f "$DIR"/torch-*.whl "$DIR"/torchvision-*.whl "$DIR"/nvidia_*.whl "$DIR"/triton-*.whl
else
  quiet "${PIP[@]}" --no-deps "${PACKAGES[@]}"
fi
# mmcv's sdist as a file: `pip download` would run its setup.py, which needs torch here
python3 - "$DIR" <<'PY'
import hashlib, os, re, sys, urllib.parse, urllib.request
index = 'https://pypi.org/simple/mmcv/'
page = urllib.request.urlopen(index, timeout=60).read().decode()
href = re.search(r'href="([^"]*/mmcv-2\.1\.0\.tar\.gz)#sha256=([0-9a-f]+)"', page)
if href is None:
    sys.exit(f'mmcv-2.1.0.tar.gz not listed on {index}')
data = urllib.request.urlopen(urllib.parse.urljoin(index, href[1]), timeout=300).read()
if hashlib.sha256(data).hexdigest() != href[2]:
    sys.exit('mmcv-2.1.0.tar.gz: sha256 mismatch, not saved')
with open(os.path.join(sys.argv[1], 'mmcv-2.1.0.tar.gz'), 'wb') as f:
    f.write(data)
PY
# one version of each package: two stop an offline install
DUPLICATES="$(ls "$DIR" | sed -E 's/-[0-9][^-]*(-|\.tar\.gz$).*//' | tr '[:upper:]-' '[:lower:]_' \
              | sort | uniq -d)"
[[ -z "$DUPLICATES" ]] || { echo "two versions of: $DUPLICATES in $DIR; keep one" >&2; exit 1; }
echo "wheels for Python $PYVER in $DIR ($(du -sh "$DIR" | cut -f1)); on the GPU machine:"
echo "  tools/cuda_check.sh $DIR"
