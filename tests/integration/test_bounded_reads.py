"""A job that makes its output.ipynb a symlink to a 3 GiB sparse file, or to /dev/zero, on the
real dev cluster (local and SSH transport): the job ends ``failed`` with a message naming the file
and the cap (or saying it is not a regular file), and the gateway's peak RSS (VmHWM of its
``hpcgw serve`` process) grows by less than MAX_GROWTH_MIB. The symlink is made after papermill
has finished (papermill writes through a symlink) by the cluster's ``python``: a wrapper that runs
the real job-side Python and then replaces output.ipynb, by job name."""

from __future__ import annotations

import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .conftest import (
    Api,
    Gateway,
    add_users,
    dev_source,
    make_notebook,
    start_gateway,
    stop_gateway,
    write_config,
)

MAX_RESULT_BYTES = 64 * 1024 * 1024
MAX_GROWTH_MIB = 64
JOB_PYTHON = "/opt/hpcgw-jobenv/bin/python"
WRAPPER = f"""#!/bin/sh
{JOB_PYTHON} "$@"
status=$?
case "$HPCGW_JOB_NAME" in
  sparse) truncate -s 3G sparse.bin && ln -sfn "$PWD/sparse.bin" output.ipynb ;;
  zero) ln -sfn /dev/zero output.ipynb ;;
esac
exit $status
"""


@pytest.fixture(scope="module")
def wrapper() -> Iterator[Path]:
    """The wrapper python, in a directory every job user can reach."""
    directory = Path(tempfile.mkdtemp(prefix="hpcgw-bounded-", dir="/tmp"))
    directory.chmod(0o755)
    script = directory / "python"
    script.write_text(WRAPPER)
    script.chmod(0o755)
    yield script
    shutil.rmtree(directory)


@pytest.fixture(scope="module")
def capped_gateway(dev_config: Path, transport: str, wrapper: Path,
                   tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    home = tmp_path_factory.mktemp(f"bounded-{transport}")
    config = home / "gateway.toml"
    write_config(dev_source(dev_config, transport), config, home / "data",
                 gateway_extra=f"max_result_bytes = {MAX_RESULT_BYTES}", python=f'"{wrapper}"')
    tokens = add_users(config)
    log_path = home / "gateway.log"
    process, url = start_gateway(config, log_path)
    yield Gateway(url, config, tokens, process, log_path)
    stop_gateway(process)


def peak_rss_mib(pid: int) -> float:
    """VmHWM (peak resident set) of process ``pid``, in MiB."""
    status = Path(f"/proc/{pid}/status").read_text()
    match = re.search(r"^VmHWM:\s+(\d+) kB", status, re.M)
    assert match, status
    return int(match[1]) / 1024


async def run_hostile_job(gateway: Gateway, name: str) -> tuple[dict[str, Any], float]:
    """Submit a notebook named ``name`` as alice and wait for its end; (job, peak RSS growth
    of the gateway in MiB)."""
    alice = Api(gateway, "alice")
    before = peak_rss_mib(gateway.process.pid)
    status, job = await alice.submit(make_notebook("print('done')"), {"name": name})
    assert status == 201, job
    job = await alice.wait_terminal(job["id"], timeout=120)
    growth = peak_rss_mib(gateway.process.pid) - before
    print(f"job {name}: {job['state']} ({job['message']}); gateway peak RSS "
          f"{before:.0f} MiB -> +{growth:.1f} MiB")
    status, _ = await alice.call("GET", f"/api/v1/jobs/{job['id']}/notebook")
    assert status == 409  # nothing was kept
    return job, growth


async def test_an_output_symlinked_to_a_huge_sparse_file_fails_naming_file_and_cap(
        capped_gateway: Gateway) -> None:
    job, growth = await run_hostile_job(capped_gateway, "sparse")
    assert (job["state"], job["reason"]) == ("failed", "job_error"), job
    assert "output.ipynb" in job["message"]
    assert "larger than the cap of 64 MiB (67108864 bytes)" in job["message"]
    assert "gateway.max_result_bytes" in job["message"]
    assert growth < MAX_GROWTH_MIB, f"gateway peak RSS grew {growth:.0f} MiB"


async def test_an_output_symlinked_to_dev_zero_fails_as_not_a_regular_file(
        capped_gateway: Gateway) -> None:
    job, growth = await run_hostile_job(capped_gateway, "zero")
    assert (job["state"], job["reason"]) == ("failed", "job_error"), job
    assert "output.ipynb" in job["message"] and "not a regular file" in job["message"]
    assert growth < MAX_GROWTH_MIB, f"gateway peak RSS grew {growth:.0f} MiB"
