#!/bin/bash
# hpcgw job 0123456789abcdef: papermill run. Do not edit: the gateway renders this file.
set -u
umask 077
export HPCGW_JOB_ID=0123456789abcdef
export HPCGW_JOB_NAME='a"b`touch hpcgw-injected`c\'
echo "hpcgw: job $HPCGW_JOB_ID on $(hostname) at $(date -Is) (CUDA_VISIBLE_DEVICES=${CUDA_VISIBLE_DEVICES:-})"
# The kernel's connection file and IPC sockets go here, private to the job (never TCP).
export JUPYTER_RUNTIME_DIR="$PWD/runtime"
mkdir -p -m 700 runtime
exec /usr/bin/python3 -I runner.py --input input.ipynb --output output.ipynb \
    --parameters parameters.json --kernel python3 --exit-record exit.json \
    --runtime-dir "$JUPYTER_RUNTIME_DIR"
