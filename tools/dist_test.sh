#!/usr/bin/env bash
# Distributed testing with torchrun (mmdet's dist_test.sh, for any mobileone_dense config).
#
#   tools/dist_test.sh CONFIG CHECKPOINT GPUS [tools/test.py options]
#
# Results of all processes are gathered before the metric is computed (mmengine drops the
# samples its sampler repeats to even out the processes), so the metric is the single-process one.
# Several nodes: NNODES, NODE_RANK, MASTER_ADDR and PORT as for tools/dist_train.sh.
# PYTHON picks the interpreter (default: python on PATH). Works from any directory.
set -euo pipefail
if [ $# -lt 3 ]; then
    echo "usage: $0 CONFIG CHECKPOINT GPUS [tools/test.py options]" >&2
    exit 2
fi
CONFIG=$1
CHECKPOINT=$2
GPUS=$3
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
    "$TOOLS/test.py" \
    "$CONFIG" \
    "$CHECKPOINT" \
    --launcher pytorch "${@:4}"
