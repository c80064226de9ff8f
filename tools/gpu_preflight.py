"""Before anything trains: if this machine has an NVIDIA GPU, can the installed torch use it?

    python tools/gpu_preflight.py        # exit 0: no GPU, or a GPU torch can use; 1: says why not

Run by ``tools/setup_env.sh`` and ``tools/cuda_check.sh`` (standard library and torch only: the
project need not be installed). Without it a GPU machine whose driver is older than the CUDA of
the pinned torch wheel (torch 2.14.1 from PyPI is a CUDA 13 build) trains silently on the CPU.
``MOBILEONE_DENSE_ALLOW_CPU=1`` turns the stop into a warning.
"""

import os
import shutil
import subprocess
import sys
import warnings
from typing import List, Optional, Tuple

# Oldest Linux driver that runs each CUDA major version's runtime (NVIDIA's "minor version
# compatibility" table): torch wheels bundle the runtime, so the driver is what must be new enough.
MIN_DRIVER = {13: '580.65.06', 12: '525.60.13', 11: '450.80.02'}
# the PyTorch wheel index to suggest for each CUDA major version a driver can run
WHEEL_INDEX = {13: 'cu130', 12: 'cu126', 11: 'cu118'}
TORCH_INSTALL_PAGE = 'https://pytorch.org/get-started/locally/'


def version_tuple(text: str) -> Tuple[int, ...]:
    return tuple(int(part) for part in text.strip().split('.') if part.isdigit())


def query_gpus() -> Optional[List[Tuple[str, str]]]:
    """(name, driver version) of each GPU from ``nvidia-smi``; None if there is no nvidia-smi.

    Raises RuntimeError if nvidia-smi exists but fails (driver not loaded, no device access).
    """
    if shutil.which('nvidia-smi') is None:
        return None
    result = subprocess.run(
        ['nvidia-smi', '--query-gpu=name,driver_version', '--format=csv,noheader'],
        capture_output=True,
        text=True,
        timeout=60,
    )
    lines = [line for line in result.stdout.splitlines() if line.strip()]
    if result.returncode != 0 or not lines:
        raise RuntimeError(
            'nvidia-smi is installed but failed (exit status '
            f'{result.returncode}): {(result.stderr or result.stdout).strip()}'
        )
    return [tuple(part.strip() for part in line.rsplit(',', 1)) for line in lines]


def check(gpus: Optional[List[Tuple[str, str]]]) -> Tuple[bool, str]:
    """(ok, message) for the installed torch on a machine with ``gpus``."""
    import torch

    if not gpus:
        return True, f'no NVIDIA GPU (no nvidia-smi): torch {torch.__version__} runs on the CPU'
    name, driver = gpus[0]
    found = f'{len(gpus)} x {name}, NVIDIA driver {driver}'
    cuda = torch.version.cuda
    if cuda is None:
        return False, (
            f'this machine has {found}, but torch {torch.__version__} is a CPU-only '
            f'build. Install a CUDA build of torch into the environment (see '
            f'{TORCH_INSTALL_PAGE}), then run the setup again.'
        )
    major = version_tuple(cuda)[0]
    needed = MIN_DRIVER.get(major)
    if needed is not None and version_tuple(driver) < version_tuple(needed):
        runs = [m for m, d in MIN_DRIVER.items() if version_tuple(driver) >= version_tuple(d)]
        if runs:
            index = WHEEL_INDEX[max(runs)]
            alternative = (
                f'or install the same torch version built for CUDA {max(runs)} (driver >= '
                f'{MIN_DRIVER[max(runs)]}), e.g. `.venv/bin/pip install '
                f'torch=={torch.__version__.split("+")[0]} torchvision --index-url '
                f'https://download.pytorch.org/whl/{index}` (other builds: {TORCH_INSTALL_PAGE}), '
                'then run the setup again: it keeps that build.'
            )
        else:
            alternative = f'no CUDA build of torch runs on driver {driver}.'
        return False, (
            f'this machine has {found}, too old for torch {torch.__version__}, which '
            f'is built with CUDA {cuda} and needs driver >= {needed}. Update the '
            f'NVIDIA driver to {needed} or newer, {alternative}'
        )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        available = torch.cuda.is_available()
    if not available:
        reason = '; '.join(str(w.message).strip() for w in caught) or 'no reason given by torch'
        hidden = os.environ.get('CUDA_VISIBLE_DEVICES')
        hint = f' CUDA_VISIBLE_DEVICES is {hidden!r}.' if hidden is not None else ''
        return False, (
            f'this machine has {found} and torch {torch.__version__} (CUDA {cuda}) '
            f'should run on it, but torch cannot use the GPU ({reason}).{hint} Check '
            'that this process may open /dev/nvidia* and that nvidia-smi works in it.'
        )
    return True, (
        f'{found}: torch {torch.__version__} (CUDA {cuda}) uses {torch.cuda.get_device_name(0)}'
    )


def main() -> int:
    try:
        ok, message = check(query_gpus())
    except (RuntimeError, subprocess.TimeoutExpired) as error:
        ok, message = False, str(error)
    if ok:
        print(f'[gpu] {message}')
        return 0
    if os.environ.get('MOBILEONE_DENSE_ALLOW_CPU') == '1':
        print(
            f'[gpu] warning: {message} Continuing on the CPU (MOBILEONE_DENSE_ALLOW_CPU=1).',
            file=sys.stderr,
        )
        return 0
    print(
        f'[gpu] error: {message} (To set up for the CPU anyway: MOBILEONE_DENSE_ALLOW_CPU=1.)',
        file=sys.stderr,
    )
    return 1


if __name__ == '__main__':
    sys.exit(main())
