#!/bin/bash
# hpcgw job 0123456789abcdef: JupyterLab. Do not edit: the gateway renders this file.
set -u
umask 077
export HPCGW_JOB_ID=0123456789abcdef
export HPCGW_JOB_NAME=train
echo "hpcgw: lab $HPCGW_JOB_ID on $(hostname) at $(date -Is) (CUDA_VISIBLE_DEVICES=${CUDA_VISIBLE_DEVICES:-})"
export JUPYTER_RUNTIME_DIR="$PWD/runtime"
mkdir -p -m 700 runtime
# Kernels talk to the server over IPC sockets, never TCP (--KernelManager.transport=ipc): no
# port race between kernels on one node, nothing another user can connect to. The server puts
# each kernel's connection file and sockets in runtime/ as kernel-<36-char id>-ipc-<N>. A unix
# socket's path holds at most 107 bytes: when runtime/'s path leaves no room for that, the
# server reaches the same directory through a short alias, a symlink in a private (0700)
# directory under /tmp; the sockets themselves stay in runtime/.
if [ $(( $(printf %s "$JUPYTER_RUNTIME_DIR" | wc -c) + 51 )) -gt 107 ]; then
    alias_dir="$(mktemp -d /tmp/hpcgw-XXXXXXXX)" && ln -s "$JUPYTER_RUNTIME_DIR" "$alias_dir/r" \
        || exit 4
    echo "hpcgw: $JUPYTER_RUNTIME_DIR is too long to name unix sockets in; kernels use $alias_dir/r"
    JUPYTER_RUNTIME_DIR="$alias_dir/r"
fi
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
    --bind=/home/alice/.hpcgw/jobs/0123456789abcdef --bind=/scratch/a+b/-x.y \
    --bind=/software \
    --pwd=/home/alice/.hpcgw/jobs/0123456789abcdef /shared/images/pytorch-2.5+cu12.sif /usr/bin/python3 \
    -I lab.py --no-browser --ServerApp.ip=127.0.0.1 --ServerApp.port=0 \
    --ServerApp.port_retries=0 --ServerApp.base_url=/labs/0123456789abcdef/ \
    --ServerApp.root_dir="$HOME" --ServerApp.preferred_dir="$HOME" \
    --ServerApp.default_url=/lab --ServerApp.shutdown_no_activity_timeout=0 \
    --KernelSpecManager.ensure_native_kernel=False --KernelManager.transport=ipc &
hpcgw_child=$!
trap 'kill -TERM "$hpcgw_child" 2>/dev/null' TERM INT
while wait "$hpcgw_child"; hpcgw_status=$?; kill -0 "$hpcgw_child" 2>/dev/null; do :; done
[ -e exit.json ] || printf '{"status": "launch_error", "exit_status": %d}\n' "$hpcgw_status" > exit.json
exit "$hpcgw_status"
