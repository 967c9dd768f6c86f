"""`hpcgw check-config --probe` against the real dev cluster: what it says of a config that
matches the cluster, and every mismatch of one that does not, found in a single run."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import asyncssh

from .conftest import DEV_DIR, HPCGW, add_users, write_config

MISSING_IMAGE = "/var/cache/hpcgw/images/no-such-image"


def check_config(config: Path) -> subprocess.CompletedProcess[str]:
    config.chmod(0o600)
    return subprocess.run([*HPCGW, "--config", str(config), "check-config", "--probe"],
                          capture_output=True, text=True, timeout=300)


def test_a_config_that_matches_the_cluster_probes_clean(dev_config: Path, tmp_path: Path
                                                        ) -> None:
    config = tmp_path / "gateway.toml"
    write_config(dev_config, config, tmp_path / "data")
    storage = json.loads((DEV_DIR / "storage.json").read_text())
    with config.open("a") as staging:
        staging.write(f'\n[staging]\nknown_hosts = ["{storage["known_hosts_line"]}"]\n')
    add_users(config)
    result = check_config(config)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    for expected in ("ok: cluster dev: partition cpu is up",
                     "ok: cluster dev: partition gpu is up",
                     "ok: cluster dev: commands run as alice",
                     "ok: cluster dev: commands run as bob",
                     "ok: cluster dev: the job Python /opt/hpcgw-jobenv/bin/python imports "
                     "papermill ",
                     "ok: cluster dev: image bookworm-jupyter: ch-run is on the cluster",
                     "ok: cluster dev: image bookworm-jupyter: the job Python "
                     "/opt/jupyter/bin/python imports papermill ",
                     f"ok: storage server {storage['host']}:{storage['port']} offers the pinned "
                     "host key"):
        assert any(line.startswith(expected) for line in lines), (expected, lines)
    assert not any(line.startswith("problem:") for line in lines)


def test_every_mismatch_with_the_cluster_is_found_in_one_run(dev_config: Path, tmp_path: Path
                                                             ) -> None:
    """A partition Slurm lacks, a user the command prefix can't become, a job Python without
    papermill, a missing image, a storage server whose pinned host key is wrong: all five."""
    config = tmp_path / "gateway.toml"
    wrong_key = asyncssh.generate_private_key("ssh-ed25519").export_public_key().decode()
    storage_port = json.loads((DEV_DIR / "storage.json").read_text())["port"]
    write_config(dev_config, config, tmp_path / "data", python='"/usr/bin/python3"')
    text = config.read_text().replace(
        'path = "/var/cache/hpcgw/images/', f'path = "{MISSING_IMAGE}"\n# was: "', 1)
    text += ('\n[clusters.partitions.bigmem]\n'
             f'\n[staging]\nknown_hosts = ["[127.0.0.1]:{storage_port} '
             f'{wrong_key.strip()}"]\n')
    config.write_text(text)
    add_users(config)
    subprocess.run([*HPCGW, "--config", str(config), "user", "add", "carol", "--unix-user",
                    "nosuchuser"], check=True, capture_output=True)
    result = check_config(config)
    assert result.returncode == 1, result.stdout + result.stderr
    problems = [line for line in result.stdout.splitlines() if line.startswith("problem:")]
    assert any("partition bigmem is not in Slurm (sinfo lists: cpu, gpu)" in p
               for p in problems), problems
    assert any("a command run as nosuchuser" in p for p in problems), problems
    assert any("/usr/bin/python3 cannot import what jobs need" in p and "papermill" in p
               for p in problems), problems
    assert any(f"{MISSING_IMAGE} does not exist" in p for p in problems), problems
    assert any(f"storage server 127.0.0.1:{storage_port} offers host key SHA256:" in p
               and "not the pinned" in p for p in problems), problems
    assert "ok: cluster dev: commands run as alice" in result.stdout  # the rest still checked


def test_a_cluster_whose_ssh_host_key_changed_is_a_problem(dev_config: Path, tmp_path: Path
                                                           ) -> None:
    """The SSH transport pins the cluster's host key: a server offering another is refused,
    and the probe says so instead of running anything there."""
    config = tmp_path / "gateway.toml"
    write_config(dev_config.with_name("gateway-ssh.toml"), config, tmp_path / "data")
    wrong_key = asyncssh.generate_private_key("ssh-ed25519").export_public_key().decode()
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text(f"[127.0.0.1]:2222 {wrong_key}")
    text = config.read_text()
    config.write_text(text.replace(f'known_hosts = "{DEV_DIR}/ssh/known_hosts"',
                                   f'known_hosts = "{known_hosts}"'))
    assert str(known_hosts) in config.read_text()
    add_users(config)
    result = check_config(config)
    assert result.returncode == 1, result.stdout + result.stderr
    problems = [line for line in result.stdout.splitlines() if line.startswith("problem:")]
    assert any("cluster dev: the scheduler could not be asked" in p and "host key" in p.lower()
               for p in problems), problems
