#!/usr/bin/env bash
# Distributed training with torchrun (mmdet's dist_train.sh, for any mobileone_dense config).
#
#   tools/dist_train.sh CONFIG GPUS [tools/train.py options]
#
# One node: GPUS processes. Several nodes: run it on every node with the same GPUS (per node),
# NNODES, MASTER_ADDR (node 0's address) and PORT, and NODE_RANK = 0 .. NNODES-1.
# PYTHON picks the interpreter (default: python on PATH). Works from any directory.
set -euo pipefail
if [ $# -lt 2 ]; then
    echo "usage: $0 CONFIG GPUS [tools/train.py options]" >&2
    exit 2
fi
exec "$(dirname "${BASH_SOURCE[0]}")/dist_run.sh" train.py "$2" "$1" "${@:3}"
