"""Outputs on the real dev cluster, both transports: what a notebook writes under its listed
paths comes back to the gateway (API and `hpcgw fetch --outputs`), also from a failed run;
a listed path it did not write is named in the job's message; links never come back."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from .conftest import Api, Gateway, make_notebook

WRITE_OUTPUTS = (
    "import json, os\n"
    "os.makedirs('results/sub', exist_ok=True)\n"
    "open('results/a.txt', 'w').write('alpha')\n"
    "open('results/sub/b.bin', 'wb').write(bytes(range(256)) * 4096)\n"
    "json.dump({'rows': 3}, open('summary.json', 'w'))\n"
    "os.symlink('/etc/passwd', 'results/passwd')\n"
    "os.symlink('/etc', 'results/etc')")
OUTPUTS = [{"path": "results/"}, {"path": "summary.json"}, {"path": "never/written.txt"}]


async def test_listed_outputs_come_back_and_links_do_not(
        gateway: Gateway, alice: Api, tmp_path: Path) -> None:
    status, job = await alice.submit(make_notebook(WRITE_OUTPUTS),
                                     {"name": "outputs", "outputs": OUTPUTS})
    assert status == 201, job
    job = await alice.wait_terminal(job["id"], 120)
    assert job["state"] == "succeeded", job
    assert job["message"] == ("the notebook ran to the end; "
                              "outputs missing: never/written.txt (not written)")
    assert not Path(f"/home/alice/.hpcgw/jobs/{job['id']}/.hpcgw-outputs.tar").exists()
    status, listed = await alice.call("GET", f"/api/v1/jobs/{job['id']}/files")
    assert status == 200
    assert listed["files"] == [{"path": "results/a.txt", "size": 5},
                               {"path": "results/sub/b.bin", "size": 256 * 4096},
                               {"path": "summary.json", "size": 11}]
    status, body = await alice.call("GET", f"/api/v1/jobs/{job['id']}/files/results/sub/b.bin")
    assert status == 200 and body == bytes(range(256)) * 4096
    for bad in ("results/passwd", "results/etc/passwd", "..%2F..%2Fhpcgw.db", "results"):
        status, _ = await alice.call("GET", f"/api/v1/jobs/{job['id']}/files/{bad}")
        assert status == 404, bad
    gateway.cli("alice", "fetch", job["id"], "--outputs", str(tmp_path / "out"))
    fetched = tmp_path / "out"
    assert (fetched / "results" / "a.txt").read_text() == "alpha"
    assert hashlib.sha256((fetched / "results/sub/b.bin").read_bytes()).hexdigest() == \
        hashlib.sha256(bytes(range(256)) * 4096).hexdigest()
    assert json.loads((fetched / "summary.json").read_text()) == {"rows": 3}
    assert not (fetched / "results" / "passwd").exists()


async def test_a_failed_runs_outputs_are_collected_as_far_as_they_exist(
        alice: Api, bob: Api) -> None:
    status, job = await alice.submit(
        make_notebook("open('partial.txt', 'w').write('so far')\nraise RuntimeError('boom')"),
        {"name": "fails", "outputs": [{"path": "partial.txt"}]})
    assert status == 201, job
    job = await alice.wait_terminal(job["id"], 120)
    assert (job["state"], job["reason"]) == ("failed", "notebook_error"), job
    status, body = await alice.call("GET", f"/api/v1/jobs/{job['id']}/files/partial.txt")
    assert status == 200 and body == b"so far"
    for path in ("files", "files/partial.txt"):
        status, _ = await bob.call("GET", f"/api/v1/jobs/{job['id']}/{path}")
        assert status == 404  # another user's outputs do not exist for bob
