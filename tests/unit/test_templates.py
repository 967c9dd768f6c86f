"""Batch scripts from job_templates/: golden files, and proof that hostile text stays text.

The spec validator already refuses control characters in names; these tests build ResolvedSpec
directly to bypass it and show that the template layer alone is safe (design.md §4: "a newline
can never add an #SBATCH line", "values from a request never become shell text").

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

from gateway.jobs.submitter import slurm_job_name
from gateway.spec import ResolvedSpec
from gateway.templates import (
    ScriptRenderError,
    TemplateValueError,
    make_environment,
    render,
    sbatch_value,
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


def render_notebook(job_spec: ResolvedSpec, *, workdir: str = WORKDIR) -> str:
    return render(
        make_environment(), "notebook.sh.j2", job_id=JOB_ID, workdir=workdir, python=PYTHON,
        slurm_name=slurm_job_name(job_spec.name), spec=job_spec,
    )


BASE_DIRECTIVES = {
    "#SBATCH --partition=cpu",
    "#SBATCH --time=0-01:00:00",
    "#SBATCH --nodes=1",
    "#SBATCH --ntasks=1",
    "#SBATCH --cpus-per-task=1",
    f"#SBATCH --chdir={WORKDIR}",
    f"#SBATCH --output={WORKDIR}/job.log",
    "#SBATCH --open-mode=append",
}

GPU_SPEC = {"partition": "gpu", "gpus": 1, "gpu_type": "a100", "cpus": 4, "memory_mb": 4096,
            "time_s": 86400 + 90, "account": "proj1", "qos": "normal", "constraint": "ib",
            "reservation": "course"}
GPU_DIRECTIVES = {
    "#SBATCH --partition=gpu",
    "#SBATCH --time=1-00:01:30",
    "#SBATCH --nodes=1",
    "#SBATCH --ntasks=1",
    "#SBATCH --cpus-per-task=4",
    "#SBATCH --mem=4096M",
    "#SBATCH --gres=gpu:a100:1",
    "#SBATCH --account=proj1",
    "#SBATCH --qos=normal",
    "#SBATCH --constraint=ib",
    "#SBATCH --reservation=course",
    f"#SBATCH --chdir={WORKDIR}",
    f"#SBATCH --output={WORKDIR}/job.log",
    "#SBATCH --open-mode=append",
}

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
    return {line for line in script.split("\n") if line.startswith("#SBATCH")}


def expected_directives(case: str) -> set[str]:
    _, overrides, slurm_name = CASES[case]
    base = GPU_DIRECTIVES if overrides else BASE_DIRECTIVES
    return base | {f"#SBATCH --job-name={slurm_name}"}


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
def test_sbatch_directives_are_exactly_the_expected_ones(case: str) -> None:
    name, overrides, slurm_name = CASES[case]
    script = render_notebook(spec(name, **overrides))
    assert directives(script) == expected_directives(case)
    assert re.fullmatch(r"hpcgw-[A-Za-z0-9._-]*", slurm_name)
    # Every directive comes before the first command (sbatch stops reading them there).
    lines = script.split("\n")
    first_command = next(i for i, line in enumerate(lines)
                         if line.strip() and not line.startswith("#"))
    assert all(not line.startswith("#SBATCH") for line in lines[first_command:])


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
def test_whole_script_up_to_exec_runs_no_injected_command(case: str, tmp_path: Path) -> None:
    name, overrides, _ = CASES[case]
    script = render_notebook(spec(name, **overrides))
    head = script.split("\nexec ")[0]
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


@pytest.mark.parametrize("value", [
    "cpu", "gpu:a100:1", "0-01:00:00", "/home/alice/.hpcgw/jobs/0123456789abcdef",
    "hpcgw-a_b.c", "proj+1", "a=b,c%d@e",
])
def test_sbatch_value_passes_safe_values(value: str) -> None:
    assert sbatch_value(value) == value


@pytest.mark.parametrize("value", [
    "", "a b", "cpu --output=/tmp/y", "a\nb", "cpu\n#SBATCH --output=/tmp/y", "a\tb", "a'b",
    'a"b', "a;b", "$(id)", "`id`", "a\\b", "a\rb", "näive", "a#b", "a*b",
])
def test_sbatch_value_refuses_anything_needing_quotes(value: str) -> None:
    with pytest.raises(TemplateValueError):
        sbatch_value(value)


@pytest.mark.parametrize("value", ["cpu\n", "\ncpu", "cpu\r\n", "cpu\n\n"])
def test_sbatch_value_refuses_a_leading_or_trailing_newline(value: str) -> None:
    with pytest.raises(TemplateValueError):
        sbatch_value(value)


@pytest.mark.parametrize("field", ["partition", "account", "qos", "constraint", "reservation"])
def test_template_refuses_unsafe_directive_values(field: str) -> None:
    # The second lock: even a value that bypassed the allowlists cannot reach an #SBATCH line.
    with pytest.raises(ScriptRenderError, match='unsafe value'):
        render_notebook(spec("n", **{field: "x --output=/tmp/y"}))
    with pytest.raises(ScriptRenderError, match='unsafe value'):
        render_notebook(spec("n", **{field: "x\n#SBATCH --output=/tmp/y"}))


def test_template_refuses_an_unsafe_workdir() -> None:
    with pytest.raises(ScriptRenderError, match='unsafe value'):
        render_notebook(spec("n"), workdir="/home/alice/my jobs/x")


def test_templates_use_strict_undefined() -> None:
    with pytest.raises(ScriptRenderError) as raised:
        render(make_environment(), "notebook.sh.j2", job_id=JOB_ID, workdir=WORKDIR,
               slurm_name="hpcgw-x", spec=spec("x"))  # python missing
    assert isinstance(raised.value.__cause__, jinja2.UndefinedError)


def test_a_broken_admin_template_is_a_render_error(tmp_path: Path) -> None:
    (tmp_path / "notebook.sh.j2").write_text("#!/bin/bash\n{{ spec.name | q }\n")
    with pytest.raises(ScriptRenderError):
        render(make_environment(tmp_path), "notebook.sh.j2", spec=spec("x"))
    with pytest.raises(ScriptRenderError):
        render(make_environment(tmp_path), "missing.sh.j2")
