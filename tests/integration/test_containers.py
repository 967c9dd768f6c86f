"""Jobs inside the dev cluster's Charliecloud image ``bookworm-jupyter`` (built by
containers/charliecloud/build-bookworm-jupyter, offered by scripts/dev-cluster), both
transports: a notebook reading a copied input and a mounted one and writing an output, and a
lab, each showing from inside that it runs in the image, as the job's unix user, with a clean
environment and the GPU selection; images that cannot start end ``failed``/``launch_failed``
with the runtime's own error; a cancelled lab leaves no process behind (a time
limit in the image: test_time_limits.py)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from .conftest import (
    SUITE_LIMITS,
    Api,
    Gateway,
    add_users,
    dev_source,
    make_notebook,
    start_gateway,
    stop_gateway,
    write_config,
)
from .kernel_client import run_cell, start_kernel
from .lab_helpers import request_lab, wait_ready
from .test_notebook_runs import outputs_text
from .test_staging import STORAGE, authorized, register  # noqa: F401 - authorized: a fixture

IMAGE = "bookworm-jupyter"
# Printed from inside a job: which image and Python, who, where, and which variables it has.
INSIDE = (
    "import getpass, json, os, sys\n"
    "print('INSIDE ' + json.dumps({'image': open('/etc/hpcgw-image').read(),\n"
    "    'python': sys.executable, 'user': getpass.getuser(), 'cwd': os.getcwd(),\n"
    "    'environment': sorted(os.environ), 'gpus': os.environ.get('CUDA_VISIBLE_DEVICES'),\n"
    "    'home': os.environ.get('HOME')}))")
# Variables the batch script has from the way it was submitted (sudo, sshd), which must not
# reach a container.
HOST_ONLY = {"SUDO_USER", "SUDO_COMMAND", "SSH_CONNECTION", "SSH_CLIENT", "MAIL", "SHELL"}


def inside(text: str) -> dict[str, Any]:
    """What INSIDE printed, from a notebook's outputs or a cell's stdout."""
    line = next(line for line in text.splitlines() if line.startswith("INSIDE "))
    return dict(json.loads(line.removeprefix("INSIDE ")))


def job_processes(job_id: str) -> list[str]:
    """The processes on this machine (the dev cluster's node) that belong to the job: those
    whose environment has its HPCGW_JOB_ID, as ``pid: command``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environment = (entry / "environ").read_bytes().split(b"\0")
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:  # gone meanwhile
            continue
        if f"HPCGW_JOB_ID={job_id}".encode() in environment:
            found.append(f"{entry.name}: {command}")
    return found


async def test_a_notebook_runs_inside_the_image_with_its_inputs_and_output(
        gateway: Gateway, alice: Api, authorized: list[str]) -> None:  # noqa: F811
    name, _ = register(gateway, "alice", authorized, "--host-key-file",
                       STORAGE["host_key_file"])
    source = (INSIDE + "\n"
              "import hashlib\n"
              "print('copied', hashlib.sha256(open(numbers, 'rb').read()).hexdigest())\n"
              "print('mounted', sorted(os.listdir(data_dir)))\n"
              "open('result.txt', 'w').write('made in ' + open('/etc/hpcgw-image').read())")
    status, job = await alice.submit(
        make_notebook(source, parameters="numbers = ''\ndata_dir = ''"),
        {"name": "in image", "image": IMAGE, "partition": "gpu", "gpus": 1,
         "outputs": [{"path": "result.txt"}],
         "inputs": [{"parameter": "numbers", "storage": name,
                     "path": "/srv/storage/demo/numbers.csv"},
                    {"parameter": "data_dir", "storage": name,
                     "path": "/srv/storage/demo/set1", "mode": "mount"}]})
    assert status == 201, job
    assert job["image"] == IMAGE
    job = await alice.wait_terminal(job["id"], 180)
    assert (job["state"], job["reason"]) == ("succeeded", "completed"), job
    _, notebook = await alice.call("GET", f"/api/v1/jobs/{job['id']}/notebook")
    text = outputs_text(notebook)
    seen = inside(text)
    workdir = f"/home/alice/.hpcgw/jobs/{job['id']}"
    assert seen["image"].startswith(f"NAME={IMAGE}\n")
    assert (seen["python"], seen["user"], seen["cwd"]) == ("/opt/jupyter/bin/python", "alice",
                                                           workdir)
    assert seen["gpus"] == "0" and seen["home"] == "/home/alice"
    assert "CH_RUNNING" in seen["environment"] and "SLURM_JOB_ID" in seen["environment"]
    assert HOST_ONLY.isdisjoint(seen["environment"]), seen["environment"]
    assert f"copied {STORAGE['demo_files']['demo/numbers.csv']}" in text
    assert "mounted ['alpha.txt', 'beta.json', 'gamma.csv']" in text
    status, body = await alice.call("GET", f"/api/v1/jobs/{job['id']}/files/result.txt")
    assert status == 200 and body.startswith(f"made in NAME={IMAGE}".encode())


async def test_the_same_probe_on_the_host_sees_the_host(alice: Api) -> None:
    # The control for the test above: without an image the job has the host's Python and the
    # variables of its submission, so their absence inside the image is the container's doing.
    probe = INSIDE.replace("open('/etc/hpcgw-image').read()", "os.path.exists('/etc/hpcgw-image')")
    status, job = await alice.submit(make_notebook(probe), {"name": "on host"})
    assert status == 201, job
    job = await alice.wait_terminal(job["id"], 120)
    assert job["state"] == "succeeded", job
    _, notebook = await alice.call("GET", f"/api/v1/jobs/{job['id']}/notebook")
    seen = inside(outputs_text(notebook))
    assert seen["image"] is False and seen["python"] == "/opt/hpcgw-jobenv/bin/python"
    assert HOST_ONLY & set(seen["environment"]), seen["environment"]



async def test_a_lab_runs_inside_the_image_and_leaves_nothing_when_cancelled(
        gateway: Gateway, alice: Api, labs: list[str]) -> None:
    lab = await request_lab(alice, image=IMAGE, partition="gpu", gpus=1, time="00:10:00")
    labs.append(lab["id"])
    await wait_ready(alice, lab["id"])
    base = f"{gateway.url}/labs/{lab['id']}/"
    async with aiohttp.ClientSession() as session:
        kernel = await start_kernel(session, base, alice.headers)
        async with session.ws_connect(f"{base}api/kernels/{kernel}/channels",
                                      headers=alice.headers) as ws:
            seen = inside(await run_cell(ws, INSIDE))
    assert seen["image"].startswith(f"NAME={IMAGE}\n")
    assert (seen["python"], seen["user"], seen["gpus"]) == ("/opt/jupyter/bin/python", "alice",
                                                            "0")
    assert HOST_ONLY.isdisjoint(seen["environment"]), seen["environment"]
    assert job_processes(lab["id"]), "the lab's processes carry its HPCGW_JOB_ID"
    status, _ = await alice.call("POST", f"/api/v1/jobs/{lab['id']}/cancel")
    assert status == 202
    ended = await alice.wait_terminal(lab["id"], 120)
    assert ended["state"] == "cancelled", ended
    await alice.wait_for(lab["id"], lambda _: not job_processes(lab["id"]), 30,
                         "no process of the lab left")


# -- images that cannot start ------------------------------------------------------------------

BROKEN_IMAGES = """
[clusters.images.missing]
runtime = "charliecloud"
path = "/var/cache/hpcgw/images/no-such-image"

[clusters.images.no-python]
runtime = "charliecloud"
path = "{image}"
python = "/usr/bin/python9"

[clusters.images.no-papermill]
runtime = "charliecloud"
path = "{image}"
python = "/usr/bin/python3"

[clusters.images.no-runtime]
runtime = "apptainer"
path = "/shared/images/pytorch.sif"
"""


def own_gateway(source: Path, home: Path, extra: str = "") -> Gateway:
    """A gateway of its own on the dev cluster (config ``source`` with its own data directory
    and ``extra`` TOML appended), users alice and bob; stop it with stop_gateway."""
    config = home / "gateway.toml"
    write_config(source, config, home / "data")
    with config.open("a") as appended:
        appended.write(extra + SUITE_LIMITS)
    tokens = add_users(config)
    process, url = start_gateway(config, home / "gateway.log")
    return Gateway(url, config, tokens, process, home / "gateway.log")


@pytest.fixture(scope="module")
def broken(dev_config: Path, transport: str,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    """A gateway of its own whose cluster also offers four images that cannot start."""
    source = dev_source(dev_config, transport)
    image = next(line.split('"')[1] for line in source.read_text().splitlines()
                 if line.startswith("path = ") and IMAGE in line)
    served = own_gateway(source, tmp_path_factory.mktemp(f"broken-images-{transport}"),
                         BROKEN_IMAGES.replace("{image}", image))
    yield served
    stop_gateway(served.process)


@pytest.mark.parametrize(("image", "kind", "error"), [
    ("missing", "notebook",
     "error: can't stat: /var/cache/hpcgw/images/no-such-image: No such file or directory"),
    ("no-python", "notebook", "/usr/bin/python9: No such file or directory"),
    ("no-papermill", "notebook",
     "hpcgw: papermill cannot be imported by /usr/bin/python3: No module named 'papermill'"),
    ("no-papermill", "lab", "ModuleNotFoundError: No module named 'jupyter_server'"),
    ("no-runtime", "notebook", "runs with apptainer, but apptainer is not installed on "),
    ("no-runtime", "lab", "runs with apptainer, but apptainer is not installed on "),
])
async def test_an_image_that_cannot_start_fails_with_the_runtimes_error(
        broken: Gateway, image: str, kind: str, error: str) -> None:
    api = Api(broken, "alice")
    if kind == "lab":
        job = await request_lab(api, image=image, time="00:10:00")
    else:
        status, job = await api.submit(make_notebook("print('never')"), {"image": image})
        assert status == 201, job
    job = await api.wait_terminal(job["id"], 120)
    assert (job["state"], job["reason"]) == ("failed", "launch_failed"), job
    assert job["message"].startswith("the job's command could not start: "), job["message"]
    assert error in job["message"], job["message"]
    assert not job_processes(job["id"])


async def test_an_image_outside_the_allowlist_is_refused_naming_it(alice: Api) -> None:
    status, problem = await alice.submit(make_notebook("1"), {"image": "ubuntu"})
    assert status == 422
    assert problem["errors"] == [{"field": "image", "message": (
        f"'ubuntu' is not an image of cluster dev (allowed: {IMAGE})")}]


async def test_the_clusters_list_their_images(alice: Api) -> None:
    status, clusters = await alice.call("GET", "/api/v1/clusters")
    assert status == 200
    [dev] = clusters["clusters"]
    assert dev["images"] == [{"name": IMAGE, "runtime": "charliecloud", "gpu": False,
                              "description": dev["images"][0]["description"]}]
    assert dev["default_image"] is None
