#!/bin/bash
# hpcgw job 0123456789abcdef: papermill run. Do not edit: the gateway renders this file.
set -u
umask 077
export HPCGW_JOB_ID=0123456789abcdef
export HPCGW_JOB_NAME=mounted
echo "hpcgw: job $HPCGW_JOB_ID on $(hostname) at $(date -Is) (CUDA_VISIBLE_DEVICES=${CUDA_VISIBLE_DEVICES:-})"
# The kernel's connection file and IPC sockets go here, private to the job (never TCP).
export JUPYTER_RUNTIME_DIR="$PWD/runtime"
mkdir -p -m 700 runtime
# Inputs mounted from storage servers (SSHFS) for the job's life, unmounted when it ends however
# it ends (normal end, failure, scancel and time limit send SIGTERM first). The keys live in
# .mounts (0700, 0600 files) and go with the mounts.
hpcgw_unmount() {
    fusermount3 -u /home/alice/.hpcgw/jobs/0123456789abcdef/inputs/data 2>/dev/null || fusermount3 -uz /home/alice/.hpcgw/jobs/0123456789abcdef/inputs/data 2>/dev/null
    fusermount3 -u /home/alice/.hpcgw/jobs/0123456789abcdef/inputs/table 2>/dev/null || fusermount3 -uz /home/alice/.hpcgw/jobs/0123456789abcdef/inputs/table 2>/dev/null
    rm -rf .mounts
}
trap hpcgw_unmount EXIT
mkdir -p -m 700 inputs
mkdir -p -m 700 /home/alice/.hpcgw/jobs/0123456789abcdef/inputs/data
if ! sshfs -o \
    IdentityFile=/home/alice/.hpcgw/jobs/0123456789abcdef/.mounts/key-0,UserKnownHostsFile=/home/alice/.hpcgw/jobs/0123456789abcdef/.mounts/known_hosts,GlobalKnownHostsFile=/dev/null,StrictHostKeyChecking=yes,BatchMode=yes,IdentitiesOnly=yes,reconnect,ServerAliveInterval=15,ServerAliveCountMax=3,port=2223,ro 'storage@storage.example:/srv/a b/$(touch hpcgw-injected)/`id`'"'"'q"/x,y' /home/alice/.hpcgw/jobs/0123456789abcdef/inputs/data; then
    echo "hpcgw: mounting /home/alice/.hpcgw/jobs/0123456789abcdef/inputs/data failed"
    printf '{"status": "staging_error", "ename": "MountFailed", "evalue": "%s could not be mounted"}\n' /home/alice/.hpcgw/jobs/0123456789abcdef/inputs/data > exit.json
    exit 5
fi
mkdir -p -m 700 /home/alice/.hpcgw/jobs/0123456789abcdef/inputs/table
if ! sshfs -o \
    IdentityFile=/home/alice/.hpcgw/jobs/0123456789abcdef/.mounts/key-1,UserKnownHostsFile=/home/alice/.hpcgw/jobs/0123456789abcdef/.mounts/known_hosts,GlobalKnownHostsFile=/dev/null,StrictHostKeyChecking=yes,BatchMode=yes,IdentitiesOnly=yes,reconnect,ServerAliveInterval=15,ServerAliveCountMax=3,port=2223 storage@storage.example:/srv /home/alice/.hpcgw/jobs/0123456789abcdef/inputs/table; then
    echo "hpcgw: mounting /home/alice/.hpcgw/jobs/0123456789abcdef/inputs/table failed"
    printf '{"status": "staging_error", "ename": "MountFailed", "evalue": "%s could not be mounted"}\n' /home/alice/.hpcgw/jobs/0123456789abcdef/inputs/table > exit.json
    exit 5
fi
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
