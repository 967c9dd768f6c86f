"""``hpcgw check-config --probe``: the config against the live cluster and storage servers.

What a config can't tell by reading it: that Slurm lists the partitions it names (and they are
up), that commands run as each mapped unix user (the command prefix, or the user's SSH key),
that the job Python imports what jobs need, that container runtimes and images are where the
config says, and that the SSH host keys the gateway pins are the ones the servers offer. Every
check runs, whatever an earlier one found; each finding is one line.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from ..config import ClusterConfig, Config
from ..errors import GatewayError, ValidationFailed
from ..jobs.clusters import ClusterLink, make_cluster_link
from ..runtimes.base import ContainerJob
from ..staging.hostkeys import fetch_host_key, fingerprint, pinned_host_keys
from ..templates import ShellVariable, shell_words
from ..transport import Transport

PROBE_TIMEOUT = 30.0  # seconds per command
# What a notebook run (papermill, ipykernel) and a lab (jupyter_server) import in the job.
# Run with -I (isolated): as a mapped user, neither the working directory nor the user's own
# site-packages or PYTHON* variables can put a module of theirs in the check.
IMPORTS = ("papermill", "ipykernel", "jupyter_server")
_IMPORT_CHECK = ("import importlib, sys\n"
                 "for name in sys.argv[1:]:\n"
                 "    module = importlib.import_module(name)\n"
                 "    print(name, getattr(module, '__version__', '?'))\n")
REGISTRY_PREFIXES = ("docker://", "oras://", "library://")


@dataclass(frozen=True)
class Finding:
    kind: Literal["ok", "problem", "note"]
    text: str

    def line(self) -> str:
        return f"{self.kind}: {self.text}"


async def probe(config: Config, unix_users: Sequence[str]) -> list[Finding]:
    """Every probe of every usable cluster (as ``unix_users``, the store's mapped users) and
    of the storage servers whose host keys the admin pinned."""
    findings: list[Finding] = []
    for cluster in config.clusters:
        if cluster.name not in config.cluster_errors:
            findings += await probe_cluster(cluster, unix_users)
    findings += await probe_storage_keys(config.staging.known_hosts)
    return findings


async def probe_cluster(cluster: ClusterConfig, unix_users: Sequence[str]) -> list[Finding]:
    """The cluster's partitions in Slurm, its mapped users, its job Python, its images."""
    where = f"cluster {cluster.name}"
    try:
        link = make_cluster_link(cluster)
    except GatewayError as exc:
        return [Finding("problem", f"{where}: {exc.detail}")]
    try:
        findings, reachable = await _partitions(link)
        if not reachable:
            return findings
        if not unix_users:
            findings.append(Finding("note", f"{where}: no gateway users yet, so no command "
                                    "was run as a mapped user (hpcgw user add, then probe)"))
        for user in unix_users:
            findings.append(await _runs_as(link.transport, where, user))
        as_user = unix_users[0] if unix_users else None
        findings.append(await _imports(link.transport, where, cluster.python, as_user))
        for name in cluster.images:
            try:
                findings += await _image(link, name, as_user)
            except GatewayError as exc:
                findings.append(Finding("problem", f"{where}: image {name}: could not be "
                                        f"checked: {exc.detail}"))
        return findings
    finally:
        await link.transport.close()


async def _partitions(link: ClusterLink) -> tuple[list[Finding], bool]:
    """A finding per configured partition, and whether the scheduler answered at all."""
    where = f"cluster {link.name}"
    try:
        seen = (await link.backend.cluster_info()).get("partitions", {})
    except GatewayError as exc:
        return [Finding("problem", f"{where}: the scheduler could not be asked (sinfo): "
                        f"{exc.detail}; nothing else was tried on this cluster")], False
    findings = []
    for name in link.config.partitions:
        partition = seen.get(name)
        if partition is None:
            listed = ", ".join(sorted(seen)) or "none"
            findings.append(Finding("problem", f"{where}: partition {name} is not in Slurm "
                                    f"(sinfo lists: {listed})"))
        elif not partition.get("available"):
            findings.append(Finding("problem", f"{where}: partition {name} is down in Slurm"))
        else:
            findings.append(Finding("ok", f"{where}: partition {name} is up "
                                    f"({partition.get('nodes', '?')} node(s))"))
    return findings, True


async def _runs_as(transport: Transport, where: str, user: str) -> Finding:
    """Whether a command the gateway runs for ``user`` runs as that unix user."""
    try:
        result = await transport.run(["id", "-un"], user=user, timeout=PROBE_TIMEOUT,
                                     check=False)
    except GatewayError as exc:
        return Finding("problem", f"{where}: cannot run a command as {user}: {exc.detail}")
    said = result.stdout.decode(errors="replace").strip()
    if result.returncode != 0 or said != user:
        error = result.stderr.strip()[-300:]
        return Finding("problem", f"{where}: a command run as {user} ran as {said or '?'} "
                       f"(exit {result.returncode}{': ' + error if error else ''})")
    return Finding("ok", f"{where}: commands run as {user}")


async def _imports(transport: Transport, where: str, python: str, user: str | None,
                   argv: list[str] | None = None, script: bytes | None = None) -> Finding:
    """Whether the job Python imports what jobs need (as ``user``: the jobs' own view); run
    directly, or as ``argv`` with ``script`` on its stdin (in a container image)."""
    argv = argv or [python, "-I", "-c", _IMPORT_CHECK, *IMPORTS]
    try:
        result = await transport.run(argv, user=user, stdin=script, timeout=PROBE_TIMEOUT,
                                     check=False)
    except GatewayError as exc:
        return Finding("problem", f"{where}: could not run {python}: {exc.detail}")
    if result.returncode != 0:
        last = (result.stderr.strip().splitlines() or ["?"])[-1]
        return Finding("problem", f"{where}: the job Python {python} cannot import what jobs "
                       f"need ({', '.join(IMPORTS)}): {last[-300:]}")
    versions = ", ".join(result.stdout.decode(errors="replace").split("\n")).strip(", ")
    return Finding("ok", f"{where}: the job Python {python} imports {versions}")


async def _image(link: ClusterLink, name: str, user: str | None) -> list[Finding]:
    """Whether the image's runtime is on the cluster, its file or directory is there, and its
    Python imports what jobs need, run through the runtime as a job's command is."""
    where = f"cluster {link.name}: image {name}"
    image = link.config.images[name]
    runtime = link.runtimes[image.runtime]
    findings = []
    if runtime.program is not None:
        found = await _succeeds(link.transport, ["sh", "-c", 'command -v "$1"', "probe",
                                                 runtime.program], user)
        if not found:
            return [Finding("problem", f"{where}: {runtime.program} ({image.runtime}) is not "
                            "on the cluster's PATH")]
        findings.append(Finding("ok", f"{where}: {runtime.program} is on the cluster"))
    if image.path and not image.path.startswith(REGISTRY_PREFIXES):
        if not await _succeeds(link.transport, ["test", "-e", image.path], user):
            return [*findings, Finding("problem", f"{where}: {image.path} does not exist (or "
                                       f"{user or 'the gateway'} cannot see it)")]
        findings.append(Finding("ok", f"{where}: {image.path} is there"))
    python = link.config.image_python(name)
    # /tmp: a directory every runtime shares with the host; the check writes nothing.
    own = tuple((variable, ShellVariable(variable)) for variable in ("HOME", "USER"))
    argv = runtime.exec_argv(ContainerJob(image=image.path, workdir="/tmp", env=own),  # noqa: S108
                             [python, "-I", "-c", _IMPORT_CHECK, *IMPORTS])
    # As in a job: the user's HOME and USER (sudo may set neither), the job's own variables.
    script = ('hpcgw_env=()\n: "${USER:=$(id -un)}" "${HOME:=/tmp}"\nexport USER HOME\n'
              f"{shell_words(argv)}\n").encode()
    findings.append(await _imports(link.transport, where, python, user,
                                   ["bash", "-s"], script))
    return findings


async def _succeeds(transport: Transport, argv: list[str], user: str | None) -> bool:
    """Whether ``argv`` exits 0 (a command that could not run at all raises GatewayError)."""
    result = await transport.run(argv, user=user, timeout=PROBE_TIMEOUT, check=False)
    return result.returncode == 0


async def probe_storage_keys(known_hosts: list[str]) -> list[Finding]:
    """Whether each storage server the admin pinned a host key for offers that key."""
    findings = []
    for (host, port), pinned in pinned_host_keys(known_hosts).items():
        where = f"storage server {host}:{port}"
        try:
            offered = await fetch_host_key(host, port)
        except ValidationFailed as exc:
            reasons = "; ".join(error["message"] for error in exc.errors)
            findings.append(Finding("problem", f"{where}: {reasons}"))
            continue
        if fingerprint(offered) != fingerprint(pinned):
            findings.append(Finding("problem", f"{where} offers host key {fingerprint(offered)}"
                                    f", not the pinned {fingerprint(pinned)}"))
        else:
            findings.append(Finding("ok", f"{where} offers the pinned host key"))
    return findings
