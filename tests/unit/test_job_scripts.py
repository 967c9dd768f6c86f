"""gateway/jobs/scripts.py and the template machinery around it: the runtime hook, shell
variables passed to the command, site templates overriding built-in ones by name, and the
submit options built from a job row."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
from test_templates import JOB_ID, PYTHON, WORKDIR, cluster_config, job_row, spec

from gateway.cli.admin import config_problems
from gateway.config import ImageConfig, parse_config
from gateway.errors import ConfigError
from gateway.jobs.scripts import render_script, slurm_job_name, submit_options
from gateway.runtimes import ContainerRuntime, load_runtime
from gateway.runtimes.base import ContainerJob
from gateway.runtimes.none import HostRuntime
from gateway.scheduler.options import InvalidSubmitOptions
from gateway.templates import (
    ScriptRenderError,
    ShellVariable,
    TemplateValueError,
    Word,
    builtin_templates,
    make_environment,
    render,
    shell_words,
    template_problems,
)


class FakeContainer:
    """A container runtime that returns words of its own (some hostile) around the command,
    standing in for the cluster's apptainer runtime."""

    name = "apptainer"
    program = None
    environment_prefix = None

    def __init__(self, image: str = "/images/py 3.sif") -> None:
        self.image = image

    def exec_argv(self, job: ContainerJob, argv: Sequence[Word]) -> list[Word]:
        return ["apptainer", "exec", "--bind", ShellVariable("HOME", "--home="), self.image,
                *argv]


def script(kind: str = "notebook", templates: Path | None = None,
           runtime: ContainerRuntime | None = None, name: str = "n", **overrides: Any) -> str:
    """The rendered script of a job; with ``runtime``, the job is in the cluster's image
    ``py`` and that runtime runs it."""
    cluster = cluster_config()
    if runtime is not None:
        cluster = cluster.model_copy(update={"images": {
            "py": ImageConfig(runtime="apptainer", path="/images/py.sif")}})
        overrides["image"] = "py"
    runtimes: dict[str, ContainerRuntime] = {"none": HostRuntime()}
    if runtime is not None:
        runtimes["apptainer"] = runtime
    return render_script(make_environment(templates),
                         job_row(spec(name, kind=kind, **overrides)), cluster, runtimes)


def command_line(text: str) -> str:
    """The script's command line (the one it runs in the background and waits for),
    continuation lines joined."""
    lines = text.replace(" \\\n    ", " ").split("\n")
    return lines[lines.index('hpcgw_child=$!') - 1].removesuffix(" &")


# -- the runtime hook ------------------------------------------------------------------------------


def test_load_runtime_finds_each_runtime_by_name() -> None:
    runtime = load_runtime("none", cluster="dev")
    assert isinstance(runtime, HostRuntime) and runtime.name == "none"
    job = ContainerJob(image="", workdir=WORKDIR)
    assert runtime.exec_argv(job, ["a", ShellVariable("HOME")]) == ["a", ShellVariable("HOME")]
    assert load_runtime("apptainer", cluster="dev").program == "apptainer"
    assert load_runtime("charliecloud", cluster="dev").program == "ch-run"
    with pytest.raises(ConfigError, match="cluster dev: unknown container runtime 'docker'"):
        load_runtime("docker", cluster="dev")


@pytest.mark.parametrize("kind", ["notebook", "lab"])
def test_the_command_runs_through_the_runtime(kind: str) -> None:
    host = command_line(script(kind))
    contained = command_line(script(kind, runtime=FakeContainer()))
    assert contained == f"apptainer exec --bind --home=\"$HOME\" '/images/py 3.sif' {host}"
    assert host.startswith(f"{PYTHON} -I ")


def test_hostile_words_from_a_runtime_are_quoted_too(tmp_path: Path) -> None:
    marker = tmp_path / "injected"
    image = f"x'; touch {marker}; '\n$(touch {marker})"
    text = script(runtime=FakeContainer(image))
    # Its only line breaks are the command's continuations: no word holds a raw newline.
    assert all(c == "\n" or c.isprintable() for c in text)
    words = bash_words(command_line(text), tmp_path)
    assert words[4] == image
    assert not marker.exists()


def test_a_missing_runtime_is_a_render_error() -> None:
    with pytest.raises(ScriptRenderError, match="'runtime' is undefined"):
        render(make_environment(), "notebook.sh.j2", job_id=JOB_ID, workdir=WORKDIR,
               python=PYTHON, slurm_name="hpcgw-n", spec=spec("n"), lab_bind="127.0.0.1",
               passed_variables=())


def test_an_image_the_cluster_no_longer_offers_is_a_render_error() -> None:
    row = job_row(spec("n", image="gone"))
    with pytest.raises(ScriptRenderError, match="image 'gone' is no longer offered"):
        render_script(make_environment(), row, cluster_config(), {"none": HostRuntime()})


# -- shell variables in the command ----------------------------------------------------------------


def bash_words(command: str, cwd: Path, home: str = "/home/alice") -> list[str]:
    """The words bash makes of ``command`` (its first word replaced by printf)."""
    done = subprocess.run(["bash", "-c", f"set -u; printf '%s\\0' {command}"], cwd=cwd,
                          capture_output=True, timeout=10, check=True,
                          env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": home,
                               "JUPYTER_RUNTIME_DIR": "/run dir/*"})
    return done.stdout.decode().split("\0")[:-1]


def test_shell_variables_expand_to_one_word_each(tmp_path: Path) -> None:
    (tmp_path / "glob-me").touch()
    words = bash_words(shell_words([ShellVariable("HOME", "--root="),
                                    ShellVariable("JUPYTER_RUNTIME_DIR"),
                                    ShellVariable("HOME", "it's ")]), tmp_path, home="a b *")
    assert words == ["--root=a b *", "/run dir/*", "it's a b *"]


def test_lab_passes_home_to_the_server_unexpanded_by_the_gateway() -> None:
    line = command_line(script("lab"))
    assert '--ServerApp.root_dir="$HOME" --ServerApp.preferred_dir="$HOME"' in line


@pytest.mark.parametrize("name", ["HPCGW_JOB_NAME", "home", "HOME;id", "", "LD_PRELOAD",
                                  "SLURM_JOB_ID"])
def test_only_allowlisted_variables_can_be_passed(name: str, tmp_path: Path) -> None:
    with pytest.raises(TemplateValueError):
        ShellVariable(name)
    (tmp_path / "lab.sh.j2").write_text(
        '{% extends "base.sh.j2" %}{% block command %}exec {{ [python, shell_var('
        + repr(name) + ')] | in_runtime }}\n{% endblock %}')
    with pytest.raises(ScriptRenderError, match="not one a script may pass on"):
        script("lab", tmp_path)


@pytest.mark.parametrize("printed", ["spec.parameters", "[python]", "shell_var('HOME')", "none"])
def test_only_text_and_numbers_can_be_printed(printed: str, tmp_path: Path) -> None:
    (tmp_path / "notebook.sh.j2").write_text("#!/bin/bash\necho {{ " + printed + " }}\n")
    with pytest.raises(ScriptRenderError, match="can't be printed into a script"):
        script("notebook", tmp_path, parameters={"x": "$(id)"})


@pytest.mark.parametrize(("argv", "error"), [
    ("'text'", "list of words"), ("[python, none]", "NoneType is not a word"),
    ("[python, true]", "bool is not a word"), ("[python, spec.parameters]", "dict is not a word"),
    ("[python, [1]]", "list is not a word"), ("[python, missing]", "'missing' is undefined"),
])
def test_in_runtime_takes_only_words(argv: str, error: str, tmp_path: Path) -> None:
    (tmp_path / "notebook.sh.j2").write_text("exec {{ " + argv + " | in_runtime }}\n")
    with pytest.raises(ScriptRenderError, match=error):
        script("notebook", tmp_path)
    (tmp_path / "notebook.sh.j2").write_text("exec {{ [python, spec.cpus] | in_runtime }}\n")
    assert script("notebook", tmp_path, cpus=3) == f"exec {PYTHON} 3\n"


def test_long_commands_break_only_before_options() -> None:
    words = ["/usr/bin/python3", *(f"--option-{i}" for i in range(20)), "--kernel", "k 1"]
    lines = shell_words(words).split(" \\\n    ")
    assert len(lines) > 1 and all(len(line) <= 90 for line in lines)
    assert all(line.startswith("--") for line in lines[1:])
    assert lines[-1].endswith("--kernel 'k 1'")


# -- site templates ----------------------------------------------------------------------------


SITE_LAB = """{% extends "base.sh.j2" %}
{% block title %}site lab{% endblock %}
{% block label %}lab{% endblock %}
{% block command %}
exec {{ [python, "-I", "site-lab.py", "--name", spec.name] | in_runtime }}
{% endblock %}
"""


def test_a_site_template_overrides_only_its_name(tmp_path: Path) -> None:
    (tmp_path / "lab.sh.j2").write_text(SITE_LAB)
    lab = script("lab", tmp_path, name="x'$(id)")
    assert f"# hpcgw job {JOB_ID}: site lab. Do not edit" in lab  # the site's, on the built-in base
    assert "set -u\numask 077\n" in lab
    assert lab.endswith(f"exec {PYTHON} -I site-lab.py --name 'x'\"'\"'$(id)'\n")
    assert script("notebook", tmp_path) == script("notebook")  # still the built-in one


def test_a_site_template_can_extend_the_builtin_one_it_replaces(tmp_path: Path) -> None:
    (tmp_path / "lab.sh.j2").write_text(
        '{% extends "builtin/lab.sh.j2" %}\n{% block stage_in %}\nmodule load jupyter\n'
        "{% endblock %}\n")
    lab, builtin = script("lab", tmp_path), script("lab")
    assert lab.replace("module load jupyter\n", "") == builtin
    assert "\nmodule load jupyter\n" in lab


def test_a_site_base_is_used_by_the_builtin_templates(tmp_path: Path) -> None:
    (tmp_path / "base.sh.j2").write_text(
        "#!/bin/bash\n# site base\n{% block environment %}{% endblock %}"
        "{% block command %}{% endblock %}")
    notebook = script("notebook", tmp_path)
    assert notebook.startswith("#!/bin/bash\n# site base\n# The kernel's connection file")


@pytest.mark.parametrize("broken", [
    "{{ spec.name | q }\n", "{% extends 'base.sh.j2' %}{% block command %}",
    "{% extends 'nowhere.sh.j2' %}", "{{ undefined_name | q }}", "{{ spec.name | nofilter }}",
])
def test_a_broken_site_template_is_a_render_error(broken: str, tmp_path: Path) -> None:
    (tmp_path / "lab.sh.j2").write_text(broken)
    with pytest.raises(ScriptRenderError, match=r"lab\.sh\.j2"):
        script("lab", tmp_path)
    script("notebook", tmp_path)  # the others still render


def test_an_unreadable_site_template_is_a_render_error(tmp_path: Path) -> None:
    (tmp_path / "lab.sh.j2").write_bytes(b"\xff\xfe not utf-8")
    with pytest.raises(ScriptRenderError):
        script("lab", tmp_path)


def test_template_problems(tmp_path: Path) -> None:
    assert builtin_templates() == ["base.sh.j2", "lab.sh.j2", "launch.sh.j2", "mounts.sh.j2",
                                   "notebook.sh.j2"]
    assert template_problems(None) == []
    assert template_problems(tmp_path) == []
    assert template_problems(tmp_path / "missing") == [
        f"gateway.template_dir {tmp_path / 'missing'} is not a directory"]
    (tmp_path / "lab.sh.j2").write_text("{% if %}")
    [problem] = template_problems(tmp_path)
    assert problem.startswith("job template lab.sh.j2: ")


def test_check_config_reports_template_problems(
    tmp_path: Path, make_raw_config: Callable[..., dict[str, Any]]
) -> None:
    site = tmp_path / "templates"
    site.mkdir()
    (site / "notebook.sh.j2").write_text("{{ spec.name | q }")
    config = parse_config(make_raw_config(tmp_path / "data", template_dir=str(site)))
    assert config.gateway.template_dir == site
    problems = config_problems(config)
    assert any(p.startswith("job template notebook.sh.j2: ") for p in problems)
    missing = parse_config(make_raw_config(tmp_path / "data",
                                           template_dir=str(tmp_path / "nope")))
    assert f"gateway.template_dir {tmp_path / 'nope'} is not a directory" in config_problems(
        missing)


# -- submit options of a job -----------------------------------------------------------------------


@pytest.mark.parametrize(("name", "expected"), [
    ("analysis", "hpcgw-analysis"), ("naïve run", "hpcgw-na_ve_run"), ("", "hpcgw-"),
    ("x" * 100, "hpcgw-" + "x" * 58),
])
def test_slurm_job_name(name: str, expected: str) -> None:
    assert slurm_job_name(name) == expected


def test_submit_options_of_a_job() -> None:
    job_spec = spec("train\n$(id)", partition="gpu", gpus=2, gpu_type="a100", cpus=4,
                    memory_mb=2048, time_s=7200, account="proj1", qos="normal",
                    constraint="ib", reservation="course")
    built = submit_options(job_row(job_spec), cluster_config())
    assert (built.user, built.job_name, built.partition, built.time_s, built.cpus) == (
        "alice", "hpcgw-train___id_", "gpu", 7200, 4)
    assert (built.memory_mb, built.gres, built.account, built.qos, built.constraint,
            built.reservation) == (2048, "gpu:a100:2", "proj1", "normal", "ib", "course")
    assert (built.workdir, built.output, built.tag) == (WORKDIR, f"{WORKDIR}/job.log", JOB_ID)
    assert dict(built.environment) == {"HPCGW_JOB_ID": JOB_ID}


def test_submit_options_refuse_a_job_of_another_cluster() -> None:
    with pytest.raises(InvalidSubmitOptions, match="for cluster 'other'"):
        submit_options(job_row(spec("n", cluster="other")), cluster_config())


def test_submit_options_refuse_a_hostile_unix_user() -> None:
    row = {**job_row(spec("n")), "unix_user": "alice --uid=0"}
    with pytest.raises(InvalidSubmitOptions, match="user"):
        submit_options(row, cluster_config())
