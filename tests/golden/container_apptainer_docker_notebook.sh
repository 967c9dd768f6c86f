#!/bin/bash
# hpcgw job 0123456789abcdef: papermill run. Do not edit: the gateway renders this file.
set -u
umask 077
export HPCGW_JOB_ID=0123456789abcdef
export HPCGW_JOB_NAME=train
echo "hpcgw: job $HPCGW_JOB_ID on $(hostname) at $(date -Is) (CUDA_VISIBLE_DEVICES=${CUDA_VISIBLE_DEVICES:-})"
# The kernel's connection file and IPC sockets go here, private to the job (never TCP).
export JUPYTER_RUNTIME_DIR="$PWD/runtime"
mkdir -p -m 700 runtime
if ! command -v apptainer >/dev/null 2>&1; then
    echo "hpcgw: this job's image runs with apptainer, but apptainer is not installed on $(hostname)"
    printf '{"status": "launch_error", "exit_status": 127}\n' > exit.json
    exit 127
fi
# The container starts from an empty environment: the job's own variables, and from this
# script's environment only Slurm's and the GPU selection.
hpcgw_env=()
for hpcgw_name in $(compgen -e); do
    case "$hpcgw_name" in
        SLURM_*|SLURMD_NODENAME|CUDA_VISIBLE_DEVICES|GPU_DEVICE_ORDINAL|ROCR_VISIBLE_DEVICES)
            hpcgw_env+=(APPTAINERENV_"$hpcgw_name=${!hpcgw_name}") ;;
    esac
done
# Not exec: the command runs in the background and is waited for (SIGTERM is passed on), so an
# EXIT trap still runs. Its launcher writes exit.json as soon as it runs: none means it never
# started, and job.log's last line says why.
env -i HOME="$HOME" USER="$USER" PATH="$PATH" "${hpcgw_env[@]}" \
    APPTAINERENV_PATH=/usr/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    APPTAINERENV_LANG=C.UTF-8 APPTAINERENV_JUPYTER_RUNTIME_DIR="$JUPYTER_RUNTIME_DIR" \
    APPTAINERENV_HPCGW_JOB_ID=0123456789abcdef \
    APPTAINERENV_HPCGW_JOB_NAME=train apptainer exec --cleanenv \
    --bind=/home/alice/.hpcgw/jobs/0123456789abcdef \
    --pwd=/home/alice/.hpcgw/jobs/0123456789abcdef docker://ghcr.io/org/jupyter:2024.1 /usr/bin/python3 \
    -I runner.py --input input.ipynb --output output.ipynb --parameters parameters.json \
    --kernel python3 --exit-record exit.json --progress progress.json \
    --runtime-dir "$JUPYTER_RUNTIME_DIR" &
hpcgw_child=$!
trap 'kill -TERM "$hpcgw_child" 2>/dev/null' TERM INT
while wait "$hpcgw_child"; hpcgw_status=$?; kill -0 "$hpcgw_child" 2>/dev/null; do :; done
[ -e exit.json ] || printf '{"status": "launch_error", "exit_status": %d}\n' "$hpcgw_status" > exit.json
exit "$hpcgw_status"
