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
# Not exec: the command runs in the background and is waited for (SIGTERM is passed on), so an
# EXIT trap still runs. Its launcher writes exit.json as soon as it runs: none means it never
# started, and job.log's last line says why.
/usr/bin/python3 -I runner.py --input input.ipynb --output output.ipynb \
    --parameters parameters.json --kernel python3 --exit-record exit.json \
    --progress progress.json --runtime-dir "$JUPYTER_RUNTIME_DIR" &
hpcgw_child=$!
trap 'kill -TERM "$hpcgw_child" 2>/dev/null' TERM INT
while wait "$hpcgw_child"; hpcgw_status=$?; kill -0 "$hpcgw_child" 2>/dev/null; do :; done
[ -e exit.json ] || printf '{"status": "launch_error", "exit_status": %d}\n' "$hpcgw_status" > exit.json
exit "$hpcgw_status"
