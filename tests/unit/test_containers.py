"""Jobs in container images: the images a cluster offers (config), what a spec may pick (422s),
and the command lines each runtime renders (golden files, GPU or not, notebook and lab, binds
with awkward paths), with the environment a container starts from.

Regenerate the golden files after an intended change with
``HPCGW_UPDATE_GOLDEN=1 pytest tests/unit/test_containers.py`` and review the diff.
"""

from __future__ import annotations

import copy
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
from test_templates import GOLDEN_DIR, JOB_ID, UPDATE, WORKDIR, job_row, spec

from gateway.config import ClusterConfig, Config, parse_config
from gateway.errors import ValidationFailed
from gateway.jobs.scripts import render_script
from gateway.runtimes import load_runtime
from gateway.runtimes.charliecloud import top_directories
from gateway.spec import parse_spec, resolve_spec
from gateway.templates import make_environment

IMAGES = {
    "pytorch": {"runtime": "apptainer", "path": "/shared/images/pytorch-2.5+cu12.sif",
                "gpu": True, "description": "PyTorch 2.5, CUDA 12",
                "binds": ["/scratch/a+b/-x.y", "/software"]},
    "hub": {"runtime": "apptainer", "path": "docker://ghcr.io/org/jupyter:2024.1"},
    "bookworm-jupyter": {"runtime": "charliecloud", "python": "/opt/jupyter/bin/python",
                         "path": "/var/cache/hpcgw/images/bookworm-jupyter-0a1b2c3d4e5f",
                         "binds": ["/scratch/a+b/-x.y", "/tmp/shared", "/home/shared"]},
    "conda": {"runtime": "none", "python": "/opt/conda/bin/python"},
}


def cluster(**changes: Any) -> ClusterConfig:
    return ClusterConfig.model_validate({
        "name": "dev", "python": "/opt/hpcgw-jobenv/bin/python", "lab_bind": "127.0.0.1",
        "default_partition": "cpu", "images": copy.deepcopy(IMAGES),
        "partitions": {"cpu": {}, "gpu": {"max_gpus": 2}}, **changes})


def rendered(image: str | None, kind: str = "notebook", **overrides: Any) -> str:
    config = cluster()
    runtimes = {name: load_runtime(name, cluster="dev")
                for name in ("none", "apptainer", "charliecloud")}
    return render_script(make_environment(), job_row(spec("train", kind=kind, image=image,
                                                          **overrides)), config, runtimes)


# golden file stem -> (image, kind, spec overrides)
CASES: dict[str, tuple[str, str, dict[str, Any]]] = {
    "apptainer_notebook_gpu": ("pytorch", "notebook", {"partition": "gpu", "gpus": 2}),
    "apptainer_lab": ("pytorch", "lab", {}),
    "apptainer_docker_notebook": ("hub", "notebook", {}),
    "charliecloud_notebook": ("bookworm-jupyter", "notebook", {"partition": "gpu", "gpus": 1}),
    "charliecloud_lab": ("bookworm-jupyter", "lab", {}),
    "host_image_notebook": ("conda", "notebook", {}),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_golden(case: str) -> None:
    image, kind, overrides = CASES[case]
    script = rendered(image, kind, **overrides)
    golden = GOLDEN_DIR / f"container_{case}.sh"
    if UPDATE:
        golden.write_text(script)
    assert golden.exists(), f"{golden} is missing; run with HPCGW_UPDATE_GOLDEN=1 to create it"
    assert script == golden.read_text()


def test_no_stale_golden_files() -> None:
    stems = {p.name.removeprefix("container_").removesuffix(".sh")
             for p in GOLDEN_DIR.glob("container_*.sh")}
    assert stems == set(CASES)


def tools(tmp_path: Path, *names: str) -> str:
    """A PATH holding only what a job script runs besides its runtime, and ``names`` (stubs
    of a runtime's program)."""
    tool_dir = tmp_path / "bin"
    if tool_dir.exists():
        return str(tool_dir)
    tool_dir.mkdir()
    for tool in ("hostname", "date", "mkdir"):
        (tool_dir / tool).symlink_to(subprocess.run(
            ["bash", "-c", f"command -v {tool}"], capture_output=True, text=True,
            check=True).stdout.strip())
    for name in names:
        (tool_dir / name).write_text("#!/bin/sh\nexit 0\n")
        (tool_dir / name).chmod(0o755)
    return str(tool_dir)


def command_words(script: str, tmp_path: Path, environment: dict[str, str]) -> list[str]:
    """The words the script's command line expands to, run up to (not including) it with
    ``environment`` (and stubs of the runtimes' programs on its PATH): its command replaced
    by printf."""
    lines = script.replace(" \\\n    ", " ").split("\n")
    at = lines.index("hpcgw_child=$!") - 1
    command = lines[at].removesuffix(" &")
    program = "\n".join(["exec 3>&1 >/dev/null", *lines[:at], f"printf '%s\\0' {command} >&3"])
    path = tools(tmp_path, "ch-run", "apptainer") + ":" + environment["PATH"]
    done = subprocess.run(["/bin/bash", "-c", program], cwd=tmp_path, capture_output=True,
                          timeout=10, check=True, env={**environment, "PATH": path})
    return done.stdout.decode().split("\0")[:-1]


BATCH_ENVIRONMENT = {
    "PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": "/home/alice", "USER": "alice",
    "SLURM_JOB_ID": "42", "SLURM_JOB_NODELIST": "node1", "SLURMD_NODENAME": "node1",
    "CUDA_VISIBLE_DEVICES": "0,1", "LD_PRELOAD": "/evil.so", "PYTHONPATH": "/host/lib",
    "AWS_SECRET_ACCESS_KEY": "s3cr3t", "SLURM_JOB_NAME": "a b\nc $(id)",
}


def test_charliecloud_starts_from_a_clean_environment(tmp_path: Path) -> None:
    words = command_words(rendered("bookworm-jupyter", partition="gpu", gpus=1), tmp_path,
                          BATCH_ENVIRONMENT)
    assert words[:2] == ["env", "-i"]
    environment = words[2:words.index("ch-run")]
    assert sorted(environment) == sorted([
        "SLURM_JOB_ID=42", "SLURM_JOB_NODELIST=node1", "SLURMD_NODENAME=node1",
        "CUDA_VISIBLE_DEVICES=0,1", "SLURM_JOB_NAME=a b\nc $(id)", "HOME=/home/alice",
        "USER=alice", f"JUPYTER_RUNTIME_DIR={tmp_path}/runtime",
        "PATH=/opt/jupyter/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "LANG=C.UTF-8", f"HPCGW_JOB_ID={JOB_ID}", "HPCGW_JOB_NAME=train"])
    after = words[words.index("ch-run") + 1:]
    assert after[:after.index("--")] == [
        "--bind=/home", "--bind=/scratch", f"--cd={WORKDIR}",
        "/var/cache/hpcgw/images/bookworm-jupyter-0a1b2c3d4e5f"]
    assert after[after.index("--") + 1:][:3] == ["/opt/jupyter/bin/python", "-I", "runner.py"]


def test_apptainer_passes_the_job_environment_prefixed_and_gpus_with_nv(tmp_path: Path) -> None:
    words = command_words(rendered("pytorch", partition="gpu", gpus=2), tmp_path,
                          BATCH_ENVIRONMENT)
    at = words.index("apptainer")
    assert words[:2] == ["env", "-i"]
    assert sorted(words[2:at]) == sorted([
        "HOME=/home/alice", "USER=alice", f"PATH={tmp_path}/bin:{BATCH_ENVIRONMENT['PATH']}",
        "APPTAINERENV_SLURM_JOB_ID=42", "APPTAINERENV_SLURM_JOB_NODELIST=node1",
        "APPTAINERENV_SLURMD_NODENAME=node1", "APPTAINERENV_CUDA_VISIBLE_DEVICES=0,1",
        "APPTAINERENV_SLURM_JOB_NAME=a b\nc $(id)",
        "APPTAINERENV_PATH=/usr/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "APPTAINERENV_LANG=C.UTF-8", f"APPTAINERENV_JUPYTER_RUNTIME_DIR={tmp_path}/runtime",
        f"APPTAINERENV_HPCGW_JOB_ID={JOB_ID}", "APPTAINERENV_HPCGW_JOB_NAME=train"])
    assert words[at:at + 9] == [
        "apptainer", "exec", "--cleanenv", "--nv", f"--bind={WORKDIR}",
        "--bind=/scratch/a+b/-x.y", "--bind=/software", f"--pwd={WORKDIR}",
        "/shared/images/pytorch-2.5+cu12.sif"]
    assert words[at + 9:at + 12] == ["/usr/bin/python3", "-I", "runner.py"]
    cpu = command_words(rendered("pytorch"), tmp_path, BATCH_ENVIRONMENT)
    assert "--nv" not in cpu


def test_a_node_without_the_runtime_fails_the_launch_saying_so(tmp_path: Path) -> None:
    script = rendered("bookworm-jupyter")
    done = subprocess.run(["/bin/bash", "-c", script], cwd=tmp_path, capture_output=True,
                          timeout=10, check=False,
                          env={"PATH": tools(tmp_path), "HOME": str(tmp_path)})
    assert done.returncode == 127
    assert b"runs with charliecloud, but ch-run is not installed on " in done.stdout
    assert (tmp_path / "exit.json").read_text() == (
        '{"status": "launch_error", "exit_status": 127}\n')


@pytest.mark.parametrize(("paths", "tops"), [
    (["/home/alice/.hpcgw/jobs/x"], ["/home"]),
    (["/home/a", "/scratch/b/c", "/home/b", "/tmp/x", "/scratch"], ["/home", "/scratch"]),
    (["/tmp/hpcgw/jobs/x"], []),
    (["/x"], ["/x"]),
])
def test_charliecloud_binds_top_directories_outside_tmp(paths: list[str],
                                                        tops: list[str]) -> None:
    assert top_directories(paths) == tops


# -- what the config accepts ---------------------------------------------------------------------


@pytest.mark.parametrize(("image", "message"), [
    ({"runtime": "docker", "path": "/x.sif"}, "unknown runtime 'docker'"),
    ({"runtime": "charliecloud", "path": "docker://ghcr.io/a/b:1"}, "not a registry reference"),
    ({"runtime": "apptainer", "path": "relative.sif"}, "an absolute path"),
    ({"runtime": "apptainer", "path": "/images/a b.sif"}, "an absolute path"),
    ({"runtime": "apptainer", "path": "/images/../etc"}, "an absolute path"),
    ({"runtime": "apptainer", "path": "docker://Upper/Case"}, "an absolute path"),
    ({"runtime": "apptainer", "path": "docker://a/b;id"}, "an absolute path"),
    ({"runtime": "none", "path": "/x.sif"}, "give it no path"),
    ({"runtime": "apptainer", "path": "/x.sif", "binds": ["/a,b"]}, "a bind must be"),
    ({"runtime": "apptainer", "path": "/x.sif", "binds": ["/a:/b"]}, "a bind must be"),
    ({"runtime": "apptainer", "path": "/x.sif", "binds": ["/"]}, "a bind must be"),
    ({"runtime": "apptainer", "path": "/x.sif", "python": "python3"}, "absolute path"),
    ({"runtime": "apptainer", "path": "/x.sif", "gpus": True}, "gpus: not a known field"),
])
def test_a_broken_image_disables_its_cluster_naming_the_problem(
    image: dict[str, Any], message: str, make_raw_config: Any, tmp_path: Path
) -> None:
    raw = make_raw_config(tmp_path)
    raw["clusters"][0]["images"] = {"broken": image}
    config = parse_config(raw)
    assert config.clusters == []
    assert message in config.cluster_errors["dev"]


def test_a_default_image_must_be_one_of_the_images(make_raw_config: Any,
                                                   tmp_path: Path) -> None:
    raw = make_raw_config(tmp_path)
    raw["clusters"][0]["default_image"] = "nope"
    assert "default_image 'nope' is not in images" in parse_config(raw).cluster_errors["dev"]


def test_image_python_defaults() -> None:
    config = cluster()
    assert config.image_python(None) == "/opt/hpcgw-jobenv/bin/python"
    assert config.image_python("pytorch") == "/usr/bin/python3"
    assert config.image_python("bookworm-jupyter") == "/opt/jupyter/bin/python"
    assert config.image_python("conda") == "/opt/conda/bin/python"


# -- what a spec may pick ------------------------------------------------------------------------


def with_images(config: Config, **changes: Any) -> Config:
    updated = config.clusters[0].model_copy(update={"images": cluster().images, **changes})
    return config.model_copy(update={"clusters": [updated]})


def test_an_image_of_the_cluster_is_kept_by_name(config: Config) -> None:
    resolved = resolve_spec(parse_spec({"image": "pytorch"}), with_images(config), "n")
    assert resolved.image == "pytorch"
    assert resolve_spec(parse_spec({}), with_images(config), "n").image is None


def test_an_image_outside_the_allowlist_is_refused_naming_it(config: Config) -> None:
    with pytest.raises(ValidationFailed) as refused:
        resolve_spec(parse_spec({"image": "ubuntu:latest"}), with_images(config), "n")
    [error] = refused.value.errors
    assert error["field"] == "image"
    assert error["message"].startswith("'ubuntu:latest' is not an image of cluster dev")
    assert "allowed: pytorch, hub, bookworm-jupyter, conda" in error["message"]
    with pytest.raises(ValidationFailed) as refused:
        resolve_spec(parse_spec({"image": "pytorch"}), config, "n")
    assert "(allowed: this cluster offers none)" in refused.value.errors[0]["message"]


def test_the_cluster_default_image_applies_when_none_is_named(config: Config) -> None:
    configured = with_images(config, default_image="bookworm-jupyter")
    assert resolve_spec(parse_spec({}), configured, "n").image == "bookworm-jupyter"
    assert resolve_spec(parse_spec({"image": "conda"}), configured, "n").image == "conda"
