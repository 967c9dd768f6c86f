"""SubmitOptions: what a job asks of Slurm, checked at construction, and the sbatch argv made of it.

Hostile values are refused when the options are built, so no backend ever sees one; the Slurm
CLI backend then only has to put each value after its flag.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest

from gateway.config import ClusterConfig
from gateway.errors import SchedulerError
from gateway.scheduler.options import InvalidSubmitOptions, SubmitOptions
from gateway.scheduler.slurm import SlurmCLIBackend, sbatch_argv
from gateway.transport import CommandResult

WORKDIR = "/home/alice/.hpcgw/jobs/0123456789abcdef"
PLAIN: dict[str, Any] = {
    "user": "alice", "job_name": "hpcgw-analysis", "partition": "cpu", "time_s": 1800,
    "workdir": WORKDIR, "output": f"{WORKDIR}/job.log", "tag": "0123456789abcdef",
}
ALL_OPTIONS: dict[str, Any] = {
    **PLAIN, "job_name": "hpcgw-train-1.v2", "partition": "gpu", "time_s": 2 * 86400 + 61,
    "cpus": 8, "memory_mb": 16384, "gpus": 2, "gpu_type": "a100", "account": "proj1",
    "qos": "normal", "constraint": "ib", "reservation": "course-2024",
    "environment": {"HPCGW_JOB_ID": "0123456789abcdef", "OMP_NUM_THREADS": "8",
                    "HPCGW_URL": "https://gw.example.org:8443/a+b@c=d", "EMPTY": ""},
}


def options(**overrides: Any) -> SubmitOptions:
    return SubmitOptions(**{**PLAIN, **overrides})


def test_sbatch_argv_of_a_plain_job() -> None:
    assert sbatch_argv(options()) == [
        "sbatch", "--parsable", "--job-name=hpcgw-analysis", "--partition=cpu",
        "--time=0-00:30:00", "--nodes=1", "--ntasks=1", "--cpus-per-task=1",
        f"--chdir={WORKDIR}", f"--output={WORKDIR}/job.log", "--open-mode=append",
        "--comment=hpcgw:0123456789abcdef",
    ]


def test_sbatch_argv_with_every_option() -> None:
    assert sbatch_argv(SubmitOptions(**ALL_OPTIONS)) == [
        "sbatch", "--parsable", "--job-name=hpcgw-train-1.v2", "--partition=gpu",
        "--time=2-00:01:01", "--nodes=1", "--ntasks=1", "--cpus-per-task=8", "--mem=16384M",
        "--gres=gpu:a100:2", "--account=proj1", "--qos=normal", "--constraint=ib",
        "--reservation=course-2024", f"--chdir={WORKDIR}", f"--output={WORKDIR}/job.log",
        "--open-mode=append", "--comment=hpcgw:0123456789abcdef",
        "--export=ALL,HPCGW_JOB_ID=0123456789abcdef,OMP_NUM_THREADS=8,"
        "HPCGW_URL=https://gw.example.org:8443/a+b@c=d,EMPTY=",
    ]


def test_untyped_gpus() -> None:
    assert "--gres=gpu:1" in sbatch_argv(options(gpus=1))
    assert options(gpus=1).gres == "gpu:1"
    assert options().gres is None


def test_the_environment_is_a_read_only_copy() -> None:
    environment = {"A": "1"}
    built = options(environment=environment)
    environment["B"] = "2"
    assert dict(built.environment) == {"A": "1"}
    with pytest.raises(TypeError):
        built.environment["C"] = "3"  # type: ignore[index]


def test_options_are_frozen() -> None:
    built = options()
    with pytest.raises(AttributeError):
        built.partition = "gpu"  # type: ignore[misc]


INJECTIONS = ["x --output=/tmp/y", "x\n#SBATCH --output=/tmp/y", "$(id)", "`id`", "a;b", "a b",
              "a'b", 'a"b', "a,b", "a\\b", "a\rb", "näive", "-x", "", "a%j", "x" * 65]
IDENTIFIER_FIELDS = ["partition", "account", "qos", "constraint", "reservation"]


@pytest.mark.parametrize("value", INJECTIONS)
@pytest.mark.parametrize("field", [*IDENTIFIER_FIELDS, "job_name", "user", "tag"])
def test_hostile_identifiers_are_refused(field: str, value: str) -> None:
    with pytest.raises(InvalidSubmitOptions, match=f"^refused submit options: {field} "):
        options(**{field: value})


@pytest.mark.parametrize("value", INJECTIONS)
def test_hostile_gpu_types_are_refused(value: str) -> None:
    with pytest.raises(InvalidSubmitOptions, match="gpu_type"):
        options(gpus=1, gpu_type=value)


@pytest.mark.parametrize("path", [
    "relative/dir", "/home/alice/%u", "/home/alice/job%j", "/home/alice/../bob", "/home/a b",
    "/home/alice\n#SBATCH", "/home/alice/$(id)", "/home/al'ice", "/home/al\\ice", "",
    "/home/alice/{unix_user}", "/home/ålice",
])
@pytest.mark.parametrize("field", ["workdir", "output"])
def test_unsafe_paths_are_refused(field: str, path: str) -> None:
    with pytest.raises(InvalidSubmitOptions, match=f"{field} "):
        options(**{field: path})


@pytest.mark.parametrize(("field", "value"), [
    ("cpus", 0), ("cpus", -1), ("cpus", True), ("cpus", "4"), ("cpus", 1.5),
    ("memory_mb", 0), ("memory_mb", -5), ("memory_mb", "4G"),
    ("gpus", -1), ("gpus", "1"), ("time_s", 59), ("time_s", 0), ("time_s", "01:00:00"),
])
def test_numbers_must_be_positive_whole_numbers(field: str, value: object) -> None:
    with pytest.raises(InvalidSubmitOptions, match=field):
        options(**{field: value})


def test_a_gpu_type_needs_gpus() -> None:
    with pytest.raises(InvalidSubmitOptions, match="gpu_type 'a100': needs gpus >= 1"):
        options(gpu_type="a100")


@pytest.mark.parametrize("name", ["lower", "1ABC", "A-B", "A B", "A=B", "A,B", "", "Ä",
                                  "SLURM_JOB_ID", "SBATCH_PARTITION", "SRUN_CPUS_PER_TASK",
                                  "SALLOC_PARTITION", "A\nB"])
def test_bad_environment_names_are_refused(name: str) -> None:
    with pytest.raises(InvalidSubmitOptions, match="environment name"):
        options(environment={name: "x"})


@pytest.mark.parametrize("value", ["a,B=2", "a b", "'x'", '"x"', "a\nb", "$(id)", "`id`", "a;b",
                                   "é", "a\\b", "%j", "a\tb"])
def test_environment_values_that_would_break_export_are_refused(value: str) -> None:
    with pytest.raises(InvalidSubmitOptions, match="environment HPCGW_X="):
        options(environment={"HPCGW_X": value})


def test_every_failing_field_is_named() -> None:
    with pytest.raises(InvalidSubmitOptions) as raised:
        options(partition="a b", cpus=0, workdir="x", environment={"x": "1"})
    for field in ("partition", "cpus", "workdir", "environment name"):
        assert field in raised.value.detail
    assert raised.value.type_slug == "submit-options"


class RecordingTransport:
    """Answers every command with ``answer``; remembers (argv, user, stdin)."""

    def __init__(self, answer: bytes) -> None:
        self.answer = answer
        self.calls: list[tuple[list[str], str | None, bytes | None]] = []

    async def run(self, argv: Sequence[str], *, user: str | None, stdin: bytes | None = None,
                  timeout: float | None = None, check: bool = True) -> CommandResult:
        self.calls.append((list(argv), user, stdin))
        return CommandResult(list(argv), 0, self.answer, "")


def backend(transport: RecordingTransport) -> SlurmCLIBackend:
    cluster = ClusterConfig.model_validate(
        {"name": "dev", "default_partition": "cpu", "partitions": {"cpu": {}}})
    return SlurmCLIBackend(cluster, transport)  # type: ignore[arg-type]


async def test_the_backend_runs_sbatch_as_the_user_with_the_script_on_stdin() -> None:
    transport = RecordingTransport(b"4242;dev\n")
    script = "#!/bin/bash\necho hello\n"
    built = SubmitOptions(**ALL_OPTIONS)
    assert await backend(transport).submit(script, built) == "4242"
    assert transport.calls == [(sbatch_argv(built), "alice", script.encode())]


async def test_a_nonsense_answer_from_sbatch_is_an_error() -> None:
    with pytest.raises(SchedulerError):
        await backend(RecordingTransport(b"Submitted batch job\n")).submit("#!/bin/bash\n",
                                                                          options())
