"""Admin subcommands that work on the config and the store directly (server running or not)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import logging
import os
import resource
import shutil
import signal
import sys
from pathlib import Path

from aiohttp import web

from .. import logs
from ..config import Config, load_config
from ..errors import ConfigError
from ..store import Store, loose_modes
from ..templates import template_problems


def open_store(config: Config) -> Store:
    return Store(config.gateway.data_dir / "hpcgw.db")


def cmd_user_add(args: argparse.Namespace) -> int:
    store = open_store(load_config(args.config))
    user = store.users.add_user(args.name, args.unix_user, admin=args.admin)
    role = "an admin, " if user.admin else ""
    print(f"added user {user.name} ({role}runs jobs as unix user {user.unix_user}); token:",
          file=sys.stderr)
    print(store.users.issue_token(user))
    return 0


def cmd_user_set(args: argparse.Namespace) -> int:
    """Change a user's admin flag and/or enabled state; say what the user is now."""
    from ..jobs.oversight import set_user

    if args.admin is None and args.disabled is None and args.sso_subject is None:
        print("hpcgw: nothing to change: give --admin/--no-admin, --disable/--enable and/or "
              "--sso-subject", file=sys.stderr)
        return 2
    store = open_store(load_config(args.config))
    if args.sso_subject is not None:
        store.users.set_subject(args.name, args.sso_subject.strip() or None)
        print(f"user {args.name}: single sign-on identity "
              f"{args.sso_subject.strip() or 'unbound'}")
    if args.admin is None and args.disabled is None:
        return 0
    change = set_user(store, args.name, admin=args.admin, disabled=args.disabled)
    state = "disabled" if change.disabled else "enabled"
    print(f"user {change.user.name}: {'admin' if change.user.admin else 'not an admin'}, "
          f"{state}")
    if change.stopped_labs:
        print(f"stopping {len(change.stopped_labs)} lab(s): {', '.join(change.stopped_labs)}")
    return 0


def cmd_user_list(args: argparse.Namespace) -> int:
    users = open_store(load_config(args.config)).users.list_users()
    if args.json:
        import json

        print(json.dumps(users, indent=2))
        return 0
    print(f"{'NAME':20} {'UNIX_USER':16} {'ADMIN':5} {'STATE':8} {'TOKENS':>6}  CREATED")
    for user in users:
        state = "disabled" if user["disabled_at"] else "enabled"
        print(f"{user['name']:20} {user['unix_user']:16} {'yes' if user['admin'] else 'no':5} "
              f"{state:8} {user['active_tokens']:>6}  {user['created_at']}")
    return 0


def cmd_token_issue(args: argparse.Namespace) -> int:
    store = open_store(load_config(args.config))
    print(store.users.issue_token(store.users.get_user(args.name)))
    return 0


def cmd_token_revoke(args: argparse.Namespace) -> int:
    store = open_store(load_config(args.config))
    if args.user:
        count = store.users.revoke_tokens(store.users.get_user(args.user))
        print(f"revoked {count} token(s) of {args.user}")
        return 0
    # The token is read from stdin, never taken from argv (which other users can see in ps).
    token = sys.stdin.readline().strip()
    if not store.users.revoke_token(token):
        print("hpcgw: no such active token", file=sys.stderr)
        return 1
    print("revoked 1 token")
    return 0


def cmd_artifacts_prune(args: argparse.Namespace) -> int:
    """Remove the artifacts of jobs that ended more than ``--older-than`` days ago (default:
    ``gateway.artifact_retention_days``; 0 there keeps them for ever, so nothing is pruned
    without ``--older-than``). Prints the count of jobs and the bytes removed (``--json``: also
    their ids). Exit 1 if a job's directory was refused (each named on stderr)."""
    from ..jobs.retention import PruneReport, prune

    config = load_config(args.config)
    days: float | None = args.older_than
    if days is None and config.gateway.artifact_retention_days == 0:
        print("hpcgw: gateway.artifact_retention_days is 0 (keep for ever): nothing pruned; "
              "give --older-than DAYS to prune anyway", file=sys.stderr)
        report = PruneReport()
    else:
        days = config.gateway.artifact_retention_days if days is None else days
        report = prune(open_store(config), config.gateway.data_dir, days)
    if args.json:
        import json

        print(json.dumps({"older_than_days": days, "jobs": len(report.jobs),
                          "bytes": report.bytes, "job_ids": report.jobs,
                          "refused": report.refused}, indent=2))
    else:
        print(f"removed the artifacts of {len(report.jobs)} job(s), {report.bytes} bytes"
              + ("" if days is None else f" (jobs that ended more than {days:g} day(s) ago)"))
    for line in report.refused:
        print(f"hpcgw: not removed: {line}", file=sys.stderr)
    return 1 if report.refused else 0


def non_negative_days(text: str) -> float:
    """argparse type of ``--older-than``: a finite number of days >= 0 (fractions allowed)."""
    try:
        days = float(text)
    except ValueError:
        days = -1.0
    if not days >= 0 or days == float("inf"):
        raise argparse.ArgumentTypeError(f"not a number of days >= 0: {text!r}")
    return days


def config_problems(config: Config) -> list[str]:
    """Everything check-config can find wrong beyond the schema (which load_config checks)."""
    problems = [f"cluster {name}: disabled: {error}"
                for name, error in config.cluster_errors.items()]
    problems += template_problems(config.gateway.template_dir)
    data_dir = config.gateway.data_dir
    problems += [f"gateway store: {loose} is readable by other users; the gateway makes it "
                 "0600/0700 when it next opens the store" for loose in loose_modes(data_dir)]
    parent = next((p for p in (data_dir, *data_dir.parents) if p.exists()), Path("/"))
    if not os.access(parent, os.W_OK):
        problems.append(f"gateway.data_dir {data_dir}: {parent} is not writable")
    for cluster in config.clusters:
        if cluster.transport != "local":
            continue
        for tool in ("sbatch", "squeue", "sacct", "scancel", "sinfo"):
            if shutil.which(tool) is None:
                problems.append(f"cluster {cluster.name}: {tool} is not on PATH")
        if not Path(cluster.python).exists():
            problems.append(f"cluster {cluster.name}: python {cluster.python} does not exist")
        if cluster.command_prefix and shutil.which(cluster.command_prefix[0]) is None:
            problems.append(f"cluster {cluster.name}: {cluster.command_prefix[0]} not on PATH")
    return problems


def config_file_problems(location: str | None) -> list[str]:
    """The config file itself: it holds ``cookie_secret``, so no other user may read it."""
    if not location or not Path(location).exists():
        return []
    mode = Path(location).stat().st_mode & 0o777
    if mode & 0o044:
        return [f"config file {location} ({mode:o}) is readable by other users and holds "
                "gateway.cookie_secret: chmod 600 it"]
    return []


def cmd_check_config(args: argparse.Namespace) -> int:
    """Print every problem of the config (``problem: ...``, one per line; exit 1 if any);
    with ``--probe``, then what the live cluster says (``ok:``/``problem:``/``note:`` lines)."""
    location = args.config or os.environ.get("HPCGW_CONFIG")
    config: Config | None = None
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        problems = list(exc.extra.get("problems") or [exc.detail])
    else:
        problems = config_problems(config)
    problems += config_file_problems(location)
    for problem in problems:
        print(f"problem: {problem}")
    if config is not None and not problems:
        names = ", ".join(c.name for c in config.clusters)
        print(f"config OK: clusters {names}; data in {config.gateway.data_dir}")
    if config is not None and args.probe:
        from .probe import probe

        findings = asyncio.run(probe(config, mapped_users(config)))
        for finding in findings:
            print(finding.line(), flush=True)
        problems += [f.text for f in findings if f.kind == "problem"]
    return 1 if problems else 0


def mapped_users(config: Config) -> list[str]:
    """The distinct unix users the gateway's users run as (none before the store exists)."""
    if not (config.gateway.data_dir / "hpcgw.db").exists():
        return []
    store = open_store(config)
    try:
        return list(dict.fromkeys(user["unix_user"] for user in store.users.list_users()))
    finally:
        store.close()


async def _serve(config: Config, host: str, port: int) -> None:
    """Serve until SIGINT/SIGTERM, with :func:`gateway.server.server_options` (a connection
    must send a request's headers within ``gateway.header_timeout`` seconds)."""
    from ..server import FrontSite, listening_socket, make_app, server_options

    runner = web.AppRunner(make_app(config), **server_options(config))
    await runner.setup()
    site = FrontSite(runner, listening_socket(host, port))
    await site.start()
    bound = runner.addresses[0][1] if runner.addresses else port
    # What start-up built (modules, the app, its schemas and templates) lives as long as the
    # process: left out of the cyclic collector's passes, which then only walk what requests
    # allocate (the lab proxy: ~8% less CPU per request, bench/README.md).
    gc.freeze()
    print(f"hpcgw: serving on http://{host}:{bound}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    with contextlib.suppress(asyncio.CancelledError):
        await stop.wait()
    await runner.cleanup()


# What the kernel lets one process open at most (fs.nr_open's default), for an unlimited
# hard limit, which RLIMIT_NOFILE cannot take as its soft one.
MAX_OPEN_FILES = 1_048_576


def raise_open_files_limit() -> tuple[int, int]:
    """Raise this process's soft limit on open files to its hard one; ``(before, after)``.

    Each proxied lab request or WebSocket holds two descriptors (the browser's, the lab's),
    and pooled lab connections one each: the usual soft limit of 1,024 would cap a gateway at
    a few hundred open lab WebSockets. The hard limit stays the operator's to set (ulimit,
    systemd's LimitNOFILE). Children (Slurm's commands, ssh) inherit the raised limit; the
    gateway itself only polls with epoll, which has no 1,024 ceiling.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = MAX_OPEN_FILES if hard == resource.RLIM_INFINITY else hard
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError) as exc:
            logging.getLogger("hpcgw").warning(
                "could not raise the open files limit from %d to %d: %s", soft, target, exc)
            return soft, soft
        return soft, target
    return soft, soft


def cmd_serve(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    logs.configure(args.log_level, args.log_format)
    before, after = raise_open_files_limit()
    if after != before:
        logging.getLogger("hpcgw").info("open files limit raised from %d to %d", before, after)
    for name, error in config.cluster_errors.items():
        logging.getLogger("hpcgw").error("cluster %s disabled: %s", name, error,
                                         extra={"cluster": name})
    # Files the gateway creates, and those sudo'd commands create for it, are private.
    os.umask(0o077)
    host = args.host or config.gateway.host
    port = config.gateway.port if args.port is None else args.port
    asyncio.run(_serve(config, host, port))
    return 0
