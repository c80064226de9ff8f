#!/usr/bin/env bash
# Distributed testing with torchrun (mmdet's dist_test.sh, for any mobileone_dense config).
#
#   tools/dist_test.sh CONFIG CHECKPOINT GPUS [tools/test.py options]
#
# Results of all processes are gathered before the metric is computed (mmengine drops the
# samples its sampler repeats to even out the processes), so the metric is the single-process one.
# Several nodes: NNODES, NODE_RANK, MASTER_ADDR and PORT as for tools/dist_train.sh.
set -euo pipefail
if [ $# -lt 3 ]; then
    echo "usage: $0 CONFIG CHECKPOINT GPUS [tools/test.py options]" >&2
    exit 2
fi
exec "$(dirname "${BASH_SOURCE[0]}")/dist_run.sh" test.py "$3" "$1" "$2" "${@:4}"
