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
CONFIG=$1
GPUS=$2
NNODES=${NNODES:-1}
NODE_RANK=${NODE_RANK:-0}
PORT=${PORT:-29500}
MASTER_ADDR=${MASTER_ADDR:-"127.0.0.1"}
TOOLS=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

PYTHONPATH="$TOOLS/..${PYTHONPATH:+:$PYTHONPATH}" \
exec "${PYTHON:-python}" -m torch.distributed.run \
    --nnodes="$NNODES" \
    --node_rank="$NODE_RANK" \
    --master_addr="$MASTER_ADDR" \
    --nproc_per_node="$GPUS" \
    --master_port="$PORT" \
    "$TOOLS/train.py" \
    "$CONFIG" \
    --launcher pytorch "${@:3}"
