#!/usr/bin/env bash
# torchrun for one of our tools: what tools/dist_train.sh and tools/dist_test.sh share.
#
#   tools/dist_run.sh TOOL.py NPROC_PER_NODE [tool arguments]
#
# NNODES, NODE_RANK (0 .. NNODES-1), MASTER_ADDR (node 0's address) and PORT select the nodes;
# PYTHON picks the interpreter (default: python on PATH). Works from any directory.
set -euo pipefail
TOOL=$1
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
    "$TOOLS/$TOOL" "${@:3}" --launcher pytorch
