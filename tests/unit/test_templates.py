"""Batch scripts from gateway/job_templates/: golden files, and proof that hostile text stays text.

The spec validator already refuses control characters in names; these tests build ResolvedSpec
directly to bypass it and show that the template layer alone is safe (design.md §4: "a newline
can never add an #SBATCH line", "values from a request never become shell text"). Scripts hold
no #SBATCH line at all: the scheduler options travel as sbatch arguments, and the same hostile
names are shown to reach those only made safe.

Regenerate the golden files after an intended template change with
``HPCGW_UPDATE_GOLDEN=1 pytest tests/unit/test_templates.py`` and review the diff.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path
from typing import Any

import jinja2
import pytest

from gateway.config import ClusterConfig
from gateway.jobs.scripts import render_script, submit_options
from gateway.runtimes.none import HostRuntime
from gateway.scheduler.options import InvalidSubmitOptions
from gateway.scheduler.slurm import sbatch_argv
from gateway.spec import ResolvedSpec
from gateway.templates import (
    ScriptRenderError,
    make_environment,
    render,
    shell_quote,
)

GOLDEN_DIR = Path(__file__).resolve().parent.parent / "golden"
UPDATE = os.environ.get("HPCGW_UPDATE_GOLDEN") == "1"
JOB_ID = "0123456789abcdef"
WORKDIR = f"/home/alice/.hpcgw/jobs/{JOB_ID}"
PYTHON = "/usr/bin/python3"
# Relative on purpose: scripts run with cwd=tmp_path, so a successful injection would create
# tmp_path/MARKER, and the golden files stay the same on every machine.
MARKER = "hpcgw-injected"
LOCALES = ["C", "C.UTF-8"]


def spec(name: str, **overrides: Any) -> ResolvedSpec:
    values: dict[str, Any] = {
        "kind": "notebook", "name": name, "cluster": "dev", "partition": "cpu",
        "account": None, "qos": None, "constraint": None, "reservation": None, "gpus": 0,
        "gpu_type": None, "cpus": 1, "memory_mb": None, "time_s": 3600, "image": None,
        "kernel": "python3", "parameters": {},
    }
    return ResolvedSpec(**{**values, **overrides})


def cluster_config(python: str = PYTHON) -> ClusterConfig:
    """The cluster the jobs are rendered for (labs bind to loopback on it)."""
    return ClusterConfig.model_validate({
        "name": "dev", "python": python, "lab_bind": "127.0.0.1", "default_partition": "cpu",
        "partitions": {"cpu": {}, "gpu": {"max_gpus": 2, "gpu_types": ["a100"]}},
    })


def job_row(job_spec: ResolvedSpec, *, workdir: str = WORKDIR) -> dict[str, Any]:
    """The job as the store holds it (the keys render_script and submit_options read)."""
    return {"id": JOB_ID, "kind": job_spec.kind, "spec": job_spec.model_dump_json(),
            "workdir": workdir, "unix_user": "alice"}


def render_job(job_spec: ResolvedSpec, *, workdir: str = WORKDIR, python: str = PYTHON) -> str:
    return render_script(make_environment(), job_row(job_spec, workdir=workdir),
                         cluster_config(python), {"none": HostRuntime()})


def render_notebook(job_spec: ResolvedSpec, *, workdir: str = WORKDIR) -> str:
    return render_job(job_spec, workdir=workdir)


def job_argv(job_spec: ResolvedSpec, *, workdir: str = WORKDIR) -> list[str]:
    """The sbatch command line the job is submitted with."""
    return sbatch_argv(submit_options(job_row(job_spec, workdir=workdir), cluster_config()))


def plain_argv(job_name: str) -> list[str]:
    return [
        "sbatch", "--parsable", f"--job-name={job_name}", "--partition=cpu",
        "--time=0-01:00:00", "--nodes=1", "--ntasks=1", "--cpus-per-task=1",
        f"--chdir={WORKDIR}", f"--output={WORKDIR}/job.log", "--open-mode=append",
        f"--comment=hpcgw:{JOB_ID}", f"--export=ALL,HPCGW_JOB_ID={JOB_ID}",
    ]

GPU_SPEC = {"partition": "gpu", "gpus": 1, "gpu_type": "a100", "cpus": 4, "memory_mb": 4096,
            "time_s": 86400 + 90, "account": "proj1", "qos": "normal", "constraint": "ib",
            "reservation": "course"}


def gpu_argv(job_name: str) -> list[str]:
    return [
        "sbatch", "--parsable", f"--job-name={job_name}", "--partition=gpu",
        "--time=1-00:01:30", "--nodes=1", "--ntasks=1", "--cpus-per-task=4", "--mem=4096M",
        "--gres=gpu:a100:1", "--account=proj1", "--qos=normal", "--constraint=ib",
        "--reservation=course", f"--chdir={WORKDIR}", f"--output={WORKDIR}/job.log",
        "--open-mode=append", f"--comment=hpcgw:{JOB_ID}",
        f"--export=ALL,HPCGW_JOB_ID={JOB_ID}",
    ]


# golden file stem -> (job name, spec overrides, expected Slurm job name)
CASES: dict[str, tuple[str, dict[str, Any], str]] = {
    "plain": ("analysis", {}, "hpcgw-analysis"),
    "gpu_all_options": ("train-1.v2", GPU_SPEC, "hpcgw-train-1.v2"),
    "command_substitution": (f"$(touch {MARKER})", {}, "hpcgw-__touch_hpcgw-injected_"),
    "quote_break": ("'; id", {}, "hpcgw-___id"),
    "quote_break_touch": (
        f"'; touch {MARKER}; echo '", {}, "hpcgw-___touch_hpcgw-injected__echo__"),
    "mixed_quotes": ('a"b`c', {}, "hpcgw-a_b_c"),
    "backticks": (f'a"b`touch {MARKER}`c\\', {}, "hpcgw-a_b_touch_hpcgw-injected_c_"),
    "newline_sbatch": ("x\n#SBATCH --output=/tmp/y", {}, "hpcgw-x__SBATCH_--output__tmp_y"),
    "newline_command": (f"x\ntouch {MARKER}\n#", GPU_SPEC, "hpcgw-x_touch_hpcgw-injected__"),
    "variables": ("${HOME} $PATH %j ~ *", {}, "hpcgw-__HOME___PATH__j____"),
    "unicode_controls": ("naïve ☃\t\x01\r\\'end", {}, "hpcgw-na_ve_______end"),
}


def directives(script: str) -> set[str]:
    # sbatch (and bash) split lines on "\n" only.
    return {line for line in script.split("\n") if line.lstrip().startswith("#SBATCH")}


def expected_argv(case: str) -> list[str]:
    _, overrides, slurm_name = CASES[case]
    return gpu_argv(slurm_name) if overrides else plain_argv(slurm_name)


def export_line(script: str, variable: str) -> str:
    lines = [line for line in script.split("\n") if line.startswith(f"export {variable}=")]
    assert len(lines) == 1, lines
    return lines[0]


def bash(script: str, cwd: Path, locale: str = "C.UTF-8") -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        ["bash", "-c", script], cwd=cwd, capture_output=True, timeout=10, check=False,
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": locale},
    )


# -- golden files --------------------------------------------------------------------------------


@pytest.mark.parametrize("case", sorted(CASES))
def test_golden(case: str) -> None:
    name, overrides, _ = CASES[case]
    script = render_notebook(spec(name, **overrides))
    golden = GOLDEN_DIR / f"notebook_{case}.sh"
    if UPDATE:
        golden.write_text(script)
    assert golden.exists(), f"{golden} is missing; run with HPCGW_UPDATE_GOLDEN=1 to create it"
    assert script == golden.read_text(), (
        f"{golden.name} differs from the rendered script; if the template change is intended, "
        "regenerate with HPCGW_UPDATE_GOLDEN=1 and review the diff")


def test_no_stale_golden_files() -> None:
    stems = {p.name.removeprefix("notebook_").removesuffix(".sh")
             for p in GOLDEN_DIR.glob("notebook_*.sh")}
    assert stems == set(CASES)


# -- structure -------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", sorted(CASES))
def test_the_script_holds_no_sbatch_directive(case: str) -> None:
    name, overrides, _ = CASES[case]
    assert directives(render_notebook(spec(name, **overrides))) == set()


@pytest.mark.parametrize("case", sorted(CASES))
def test_sbatch_argv_is_exactly_the_expected_one(case: str) -> None:
    # The hostile names reach sbatch's argv only made safe: as the job name's safe characters.
    name, overrides, slurm_name = CASES[case]
    argv = job_argv(spec(name, **overrides))
    assert argv == expected_argv(case)
    assert re.fullmatch(r"hpcgw-[A-Za-z0-9._-]*", slurm_name)
    assert all(word.isascii() and word.isprintable() for word in argv)


@pytest.mark.parametrize("case", sorted(CASES))
def test_script_is_one_line_per_statement_and_printable(case: str) -> None:
    name, overrides, _ = CASES[case]
    script = render_notebook(spec(name, **overrides))
    # No raw control character made it into the script: the only line breaks are the template's.
    assert all(c == "\n" or c.isprintable() for c in script)
    assert script.count("\n") == render_notebook(spec("plain", **overrides)).count("\n")


@pytest.mark.parametrize("case", sorted(CASES))
def test_bash_accepts_the_script(case: str, tmp_path: Path) -> None:
    name, overrides, _ = CASES[case]
    path = tmp_path / "job.sh"
    path.write_text(render_notebook(spec(name, **overrides)))
    result = subprocess.run(["bash", "-n", str(path)], capture_output=True, timeout=10,
                            check=False)
    assert result.returncode == 0, result.stderr.decode()


@pytest.mark.parametrize("locale", LOCALES)
@pytest.mark.parametrize("case", sorted(CASES))
def test_job_name_arrives_literally(case: str, locale: str, tmp_path: Path) -> None:
    name, overrides, _ = CASES[case]
    line = export_line(render_notebook(spec(name, **overrides)), "HPCGW_JOB_NAME")
    result = bash(f'{line}; printf %s "$HPCGW_JOB_NAME"', tmp_path, locale)
    assert result.returncode == 0, result.stderr.decode()
    assert result.stdout == name.encode()
    assert list(tmp_path.iterdir()) == []  # no injected command ran


@pytest.mark.parametrize("case", sorted(CASES))
def test_whole_script_up_to_its_command_runs_no_injected_command(case: str,
                                                                 tmp_path: Path) -> None:
    name, overrides, _ = CASES[case]
    script = render_notebook(spec(name, **overrides))
    head = script.split(f"\n{PYTHON} -I runner.py")[0]
    assert "runner.py" not in head
    result = bash(head + '\nprintf %s "$HPCGW_JOB_NAME" > name.out\n', tmp_path)
    assert result.returncode == 0, result.stderr.decode()
    assert (tmp_path / "name.out").read_bytes() == name.encode()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["name.out", "runtime"]
    assert (tmp_path / "runtime").stat().st_mode & 0o777 == 0o700  # the kernel's private dir
    assert b"hpcgw: job 0123456789abcdef on " in result.stdout


@pytest.mark.parametrize("hostile", [
    "$(touch {marker})", "`touch {marker}`", "'; touch {marker}; '", "\"; touch {marker}; \"",
    "x\ntouch {marker}", "x\r\ntouch {marker}", "\\'$(touch {marker})",
])
def test_absolute_marker_is_never_created(hostile: str, tmp_path: Path) -> None:
    marker = tmp_path / "created-by-injection"
    name = hostile.format(marker=marker)
    line = export_line(render_notebook(spec(name)), "HPCGW_JOB_NAME")
    result = bash(f'{line}; printf %s "$HPCGW_JOB_NAME"', tmp_path)
    assert result.stdout == name.encode()
    assert not marker.exists()


def test_kernel_is_quoted_too(tmp_path: Path) -> None:
    script = render_notebook(spec("n", kernel=f"py; touch {MARKER}"))
    assert f"--kernel 'py; touch {MARKER}'" in script


# -- the two filters -----------------------------------------------------------------------------


ROUND_TRIP = [
    "", "plain", "with space", "it's", 'say "hi"', "back\\slash", "trailing\\", "new\nline",
    "tab\tchar", "\x01ctrl", "\x7f", "\r\n", "naïve ☃ 😀", "$(id) `id` ${HOME} $'x'", "'",
    "''", "\\'", "-n", "*", "~", "!!", "mix\n'\"\\\t\x01é😀\x1b[0m",
]


@pytest.mark.parametrize("locale", LOCALES)
@pytest.mark.parametrize("text", ROUND_TRIP)
def test_shell_quote_round_trips_through_bash(text: str, locale: str, tmp_path: Path) -> None:
    result = bash(f"printf %s {shell_quote(text)}", tmp_path, locale)
    assert result.returncode == 0, result.stderr.decode()
    assert result.stdout == text.encode()
    assert "\n" not in shell_quote(text)


NON_ASCII_NON_PRINTABLE = [
    "a\u00a0b", "line\u2028sep", "soft\u00adhyphen", "c1\x85control", "zero\u200bwidth\x01",
]


@pytest.mark.parametrize("text", NON_ASCII_NON_PRINTABLE)
def test_shell_quote_round_trips_non_ascii_separators_in_c_locale(
    text: str, tmp_path: Path
) -> None:
    result = bash(f"printf %s {shell_quote(text)}", tmp_path, "C")
    assert result.stdout == text.encode()


@pytest.mark.parametrize("text", NON_ASCII_NON_PRINTABLE)
def test_shell_quote_round_trips_non_ascii_separators_in_utf8(text: str, tmp_path: Path) -> None:
    result = bash(f"printf %s {shell_quote(text)}", tmp_path, "C.UTF-8")
    assert result.stdout == text.encode()


def test_shell_quote_accepts_non_strings() -> None:
    assert shell_quote(42) == "42"
    assert shell_quote(None) == "None"


UNSAFE_VALUES = [
    "", "a b", "cpu --output=/tmp/y", "a\nb", "cpu\n#SBATCH --output=/tmp/y", "a\tb", "a'b",
    'a"b', "a;b", "$(id)", "`id`", "a\\b", "a\rb", "näive", "a#b", "a*b", "cpu\n", "\ncpu",
    "cpu\r\n", "-cpu", "a,b", "a%j",
]


@pytest.mark.parametrize("value", UNSAFE_VALUES)
@pytest.mark.parametrize("field", ["partition", "account", "qos", "constraint", "reservation"])
def test_unsafe_scheduler_values_never_reach_sbatch(field: str, value: str) -> None:
    # The second lock: even a value that bypassed the allowlists is refused before sbatch runs.
    with pytest.raises(InvalidSubmitOptions, match=field):
        job_argv(spec("n", **{field: value}))


def test_an_unsafe_workdir_is_refused() -> None:
    with pytest.raises(InvalidSubmitOptions, match="workdir"):
        job_argv(spec("n"), workdir="/home/alice/my jobs/x")
    with pytest.raises(InvalidSubmitOptions, match="output"):
        job_argv(spec("n"), workdir="/home/alice/%u/x")


def test_templates_use_strict_undefined() -> None:
    with pytest.raises(ScriptRenderError) as raised:
        render(make_environment(), "notebook.sh.j2", job_id=JOB_ID, workdir=WORKDIR,
               slurm_name="hpcgw-x", spec=spec("x"), runtime=HostRuntime())  # python missing
    assert isinstance(raised.value.__cause__, jinja2.UndefinedError)


def test_a_broken_admin_template_is_a_render_error(tmp_path: Path) -> None:
    (tmp_path / "notebook.sh.j2").write_text("#!/bin/bash\n{{ spec.name | q }\n")
    with pytest.raises(ScriptRenderError):
        render(make_environment(tmp_path), "notebook.sh.j2", spec=spec("x"))
    with pytest.raises(ScriptRenderError):
        render(make_environment(tmp_path), "missing.sh.j2")
