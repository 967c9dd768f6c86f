"""`hpcgw`: one entry point, subcommands, sbatch's flag names where sbatch has the option."""

from __future__ import annotations

import argparse
import asyncio
import importlib.metadata
import inspect
import json
import os
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

from ..errors import GatewayError
from . import admin, client, http, storage


class _Subcommands:
    """Adds subcommands that all accept the common flags."""

    def __init__(self, action: Any, common: argparse.ArgumentParser) -> None:
        self._action, self._common = action, common

    def add_parser(self, name: str, **kwargs: Any) -> argparse.ArgumentParser:
        parser: argparse.ArgumentParser = self._action.add_parser(
            name, parents=[self._common], **kwargs)
        return parser


class _JSONErrorParser(argparse.ArgumentParser):
    """A parser that, for ``--json``, reports a usage error as a problem on stdout (as every
    other error is then) instead of argparse's usage lines on stderr; exit status 2 still."""

    def error(self, message: str) -> NoReturn:
        self.exit(_error(True, f"{self.prog}: {message}", http.EXIT_USAGE))


EPILOG = """\
examples:
  hpcgw submit analysis.ipynb -p gpu -G 1 -t 1:00:00 -P alpha=0.5 --wait
  hpcgw submit analysis.ipynb --parsable          # prints only the job id
  hpcgw log -f ID                                 # each cell's output as it runs
  hpcgw queue -t running,pending                  # your jobs, as squeue
  hpcgw cancel ID [ID...]   |   hpcgw cancel -t pending
  hpcgw lab -p gpu -G 1 --image bookworm-jupyter  # a JupyterLab; prints its URL

environment:
  HPCGW_URL      the gateway (default http://127.0.0.1:8000)
  HPCGW_TOKEN    your token (hpcgw user add / token issue print one)
  HPCGW_CONFIG   the gateway's config file (admin commands: serve, user, token, check-config)

exit status:
  0 success (the job succeeded, with --wait or log -f)   1 the job failed
  2 usage, or a local file could not be read or written   3 the job was cancelled
  4 the job reached its time limit   5 the gateway refused the request (HTTP error)
  6 the gateway could not be reached   130 interrupted (the job keeps running)
"""


def _resource_flags(parser: argparse.ArgumentParser) -> None:
    add = parser.add_argument
    add("-M", "--cluster", help="cluster name (default: the gateway's first)")
    add("-p", "--partition", help="partition (default: the cluster's default partition)")
    add("-A", "--account", help="Slurm account to charge (one the cluster allows)")
    add("-q", "--qos", help="quality of service (one the cluster allows)")
    add("-C", "--constraint", help="node feature(s) the job needs (one the cluster allows)")
    add("--reservation", help="run in this Slurm reservation (one the cluster allows)")
    add("-G", "--gpus", type=int, metavar="N", help="number of GPUs (as sbatch's -G)")
    add("--gres", help="gpu[:TYPE]:COUNT")
    add("-c", "--cpus-per-task", dest="cpus", type=int, metavar="N",
        help="CPUs (default: the partition's default_cpus)")
    add("--mem", help="memory, e.g. 4G")
    add("-t", "--time", help="time limit, e.g. 1:00:00 or 1-00:00:00")
    add("-J", "--job-name", help="the job's name (default: the notebook's file name)")
    add("--image", metavar="NAME",
        help="run in this container image of the cluster (GET /api/v1/clusters lists them)")
    add("--kernel", help="Jupyter kernel (default python3; GET /api/v1/clusters lists them)")
    add("--webhook", metavar="URL",
        help="POST each state change of the job to this http(s) URL, signed (see hpcgw "
        "webhook-secret)")
    add("--wait", action="store_true", help="wait until the job ends")


def build_parser(json_errors: bool = False) -> argparse.ArgumentParser:
    """The whole ``hpcgw`` parser; ``json_errors``: usage errors as problems on stdout (its
    subcommands' parsers are of the same class)."""
    # --config and --json are accepted before and after the subcommand.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", default=argparse.SUPPRESS,
                        help="gateway config (default: $HPCGW_CONFIG)")
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                        help="machine-readable output")
    parser_class = _JSONErrorParser if json_errors else argparse.ArgumentParser
    parser = parser_class(
        prog="hpcgw", description="Run notebooks and JupyterLabs on Slurm through an hpcgw "
        "gateway; sbatch's flag names where sbatch has the option.", parents=[common],
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version",
                        version=f"hpcgw {importlib.metadata.version('hpcgw')}")
    sub = _Subcommands(parser.add_subparsers(dest="command", required=True), common)

    _add_serve(sub)
    _add_runs(sub)
    _add_job_commands(sub)
    _add_own_commands(sub)
    _add_users(sub, common)
    _add_tokens_and_artifacts(sub, common)
    storage.add_parsers(_Subcommands(sub.add_parser(
        "storage", help="your storage servers for data staging").add_subparsers(
        dest="storage_command", required=True), common))
    _add_check_config(sub)
    return parser


def _add_serve(sub: _Subcommands) -> None:
    """``serve``: the gateway itself."""
    serve = sub.add_parser("serve", help="run the gateway")
    serve.add_argument("--host", help="address to listen on (default: gateway.host)")
    serve.add_argument("--port", type=int,
                       help="port to listen on (default: gateway.port; 0: any free one)")
    serve.add_argument("--log-level", choices=["debug", "info", "warning", "error"],
                       default="info", help="the least important events logged (default info)")
    serve.add_argument("--log-format", choices=["json", "text"],
                       help="one JSON object per event, or text lines (default: text on a "
                       "terminal, json otherwise)")
    serve.set_defaults(run=admin.cmd_serve)


def _add_runs(sub: _Subcommands) -> None:
    """``submit`` and ``lab``: new jobs, with sbatch's resource flags."""
    submit = sub.add_parser("submit", help="run a notebook as a batch job")
    submit.add_argument("notebook", help="the .ipynb file to run")
    _resource_flags(submit)
    submit.add_argument("-P", "--parameter", action="append", metavar="NAME=VALUE",
                        help="a parameter (the value parsed as JSON, else a string)")
    submit.add_argument("--parameters", nargs=2, action="append", metavar=("NAME", "VALUE"),
                        help="a parameter, typed as papermill -p types it (True, 3, 0.5, text)")
    submit.add_argument("-r", "--parameters_raw", nargs=2, action="append",
                        metavar=("NAME", "VALUE"), help="a parameter whose value is a string")
    submit.add_argument("-f", "--parameters_file", action="append", metavar="FILE",
                        help="parameters from a YAML file (a mapping)")
    submit.add_argument("-y", "--parameters_yaml", action="append", metavar="YAML",
                        help="parameters as YAML, e.g. '{alpha: 0.5, tags: [a, b]}'")
    submit.add_argument("--file", action="append", metavar="PATH",
                        help="a side file, put next to the notebook under its own name")
    submit.add_argument("--parsable", action="store_true",
                        help="print only the job's id (as sbatch --parsable)")
    submit.set_defaults(run=client.cmd_submit)

    lab = sub.add_parser("lab", help="start an interactive JupyterLab; prints its URL")
    _resource_flags(lab)
    lab.set_defaults(run=client.cmd_lab)


def _add_job_commands(sub: _Subcommands) -> None:
    """What a user does with a job: status, cancel, events, log, fetch."""
    status = sub.add_parser("status", help="show one job")
    status.add_argument("job_id", help="the job's id, or its Slurm job id")
    status.set_defaults(run=client.cmd_status)
    cancel = sub.add_parser("cancel", help="cancel jobs (as scancel)")
    cancel.add_argument("job_ids", nargs="*", metavar="ID",
                        help="job ids or Slurm job ids")
    cancel.add_argument("-t", "--state", help="cancel your jobs in these states "
                                              "(comma-separated; default: all that run)")
    cancel.add_argument("-n", "--name", help="cancel your running jobs with this name")
    cancel.set_defaults(run=client.cmd_cancel)
    events = sub.add_parser("events", help="a job's state changes and webhook deliveries, "
                            "oldest first")
    events.add_argument("job_id", help="the job's id, or its Slurm job id")
    events.set_defaults(run=client.cmd_events)
    log = sub.add_parser("log", help="print a job's output log (each cell's output as it runs)")
    log.add_argument("job_id", help="the job's id (hpcgw queue lists them)")
    log.add_argument("-f", "--follow", action="store_true",
                     help="print the whole log, then what is added, until the job ends (exit "
                          "status as submit --wait)")
    log.set_defaults(run=client.cmd_log)
    fetch = sub.add_parser("fetch", help="download the executed notebook (or the outputs)")
    fetch.add_argument("job_id", help="the job's id (hpcgw queue lists them)")
    fetch.add_argument("--outputs", metavar="DIR",
                       help="download the job's collected output files under DIR instead")
    fetch.add_argument("-o", "--output", help="file to write ('-' for stdout; default ID.ipynb)")
    fetch.set_defaults(run=client.cmd_fetch)


def _add_own_commands(sub: _Subcommands) -> None:
    """``webhook-secret`` and ``queue``: the user's own secret and jobs."""
    secret = sub.add_parser(
        "webhook-secret", help="print your webhook secret (the key of the Hpcgw-Signature "
        "on your jobs' webhook deliveries)",
        description="Prints your webhook secret. Deliveries to a job's webhook carry "
        "Hpcgw-Signature: t=<unix time>,v1=<hex HMAC-SHA256 of \"<t>.<raw body>\">, keyed "
        "with this secret; check it, and that t is recent, before trusting a delivery.")
    secret.set_defaults(run=client.cmd_webhook_secret)
    queue = sub.add_parser("queue", help="list your jobs, newest first (as squeue)")
    queue.add_argument("-t", "--state", help="only these states, comma-separated "
                                             "(e.g. pending,running)")
    queue.add_argument("-n", "--name", help="only jobs with this exact name")
    queue.add_argument("--kind", choices=["notebook", "lab"], help="only notebook runs or labs")
    queue.add_argument("--noheader", action="store_true", help="no header line")
    queue.add_argument("--format", metavar="COLUMNS",
                       help=f"columns, comma-separated (default {client.DEFAULT_COLUMNS}; "
                            f"all: {','.join(client.COLUMNS)})")
    queue.set_defaults(run=client.cmd_queue)


def _add_users(sub: _Subcommands, common: argparse.ArgumentParser) -> None:
    """``user add|set|list`` (admin: needs the config)."""
    user = _Subcommands(sub.add_parser(
        "user", help="manage gateway users (admin: needs the config)").add_subparsers(
        dest="user_command", required=True), common)
    add = user.add_parser("add", help="add a user; prints its token as the last line",
                          description="Adds a gateway user whose jobs run as a unix user of "
                          "the clusters, and prints the user's first token (keep it: it is "
                          "shown once).")
    add.add_argument("name", help="the gateway user's name (what the API and logs show)")
    add.add_argument("--unix-user", required=True, metavar="UNIX_USER",
                     help="the unix account on the clusters that runs this user's jobs")
    add.add_argument("--admin", action="store_true",
                     help="an admin: may list every user's jobs (API and portal)")
    add.set_defaults(run=admin.cmd_user_add)
    change = user.add_parser(
        "set", help="make a user an admin or not; disable or enable a user; bind single sign-on",
        description="Changes a user. --disable stops the user's tokens and browser sessions "
        "at their next request and stops the user's labs (notebook runs go on); --enable "
        "brings the tokens back. Works whether or not the gateway runs.")
    change.add_argument("name", help="the gateway user")
    role = change.add_mutually_exclusive_group()
    role.add_argument("--admin", dest="admin", action="store_true", default=None,
                      help="make the user an admin")
    role.add_argument("--no-admin", dest="admin", action="store_false",
                      help="take the admin role away")
    state = change.add_mutually_exclusive_group()
    state.add_argument("--disable", dest="disabled", action="store_true", default=None,
                       help="disable the user (tokens, sessions and labs stop)")
    state.add_argument("--enable", dest="disabled", action="store_false",
                       help="enable a disabled user again")
    change.add_argument("--sso-subject", metavar="'ISSUER SUB'",
                        help="bind the user to this single sign-on identity (as the login page "
                        "names it; an admin's is never bound by a first sign-on); '' unbinds")
    change.set_defaults(run=admin.cmd_user_set)
    user.add_parser("list", help="the users: name, unix user, admin, disabled, active tokens",
                    description="Lists the gateway's users (--json: as JSON).").set_defaults(
        run=admin.cmd_user_list)


def _add_tokens_and_artifacts(sub: _Subcommands, common: argparse.ArgumentParser) -> None:
    """``token issue|revoke`` and ``artifacts prune`` (admin)."""
    token = _Subcommands(sub.add_parser(
        "token", help="manage users' tokens (admin: needs the config)").add_subparsers(
        dest="token_command", required=True), common)
    issue = token.add_parser("issue", help="a new token for a user (printed once)",
                             description="Issues another token for a user; the ones it has "
                             "keep working.")
    issue.add_argument("name", help="the gateway user")
    issue.set_defaults(run=admin.cmd_token_issue)
    revoke = token.add_parser(
        "revoke", help="revoke all of --user's tokens, or one read on stdin",
        description="Revokes tokens at once: every token of --user, or without --user the "
        "one token read from stdin (never from the command line, which ps shows).")
    revoke.add_argument("--user", metavar="NAME", help="revoke every token of this user")
    revoke.set_defaults(run=admin.cmd_token_revoke)
    artifacts = _Subcommands(sub.add_parser(
        "artifacts", help="manage the gateway's copies of job files").add_subparsers(
        dest="artifacts_command", required=True), common)
    prune = artifacts.add_parser(
        "prune", help="remove the artifacts (notebooks, logs) of jobs that ended long ago; "
        "the jobs stay listed")
    prune.add_argument("--older-than", type=admin.non_negative_days, metavar="DAYS",
                       help="ended more than DAYS ago (default: gateway.artifact_retention_days;"
                       " 0 there prunes nothing)")
    prune.set_defaults(run=admin.cmd_artifacts_prune)


def _add_check_config(sub: _Subcommands) -> None:
    """``check-config``: every problem in the config, and a live probe."""
    check = sub.add_parser(
        "check-config", help="explain every problem in the config (exit 1 if any)",
        description="Reads the config and lists every problem in it, one per line, without "
        "stopping at the first. --probe then checks it against the live cluster.")
    check.add_argument("--probe", action="store_true",
                       help="also ask the cluster: partitions in sinfo, commands run as each "
                       "mapped user, the job Python (and each image's) imports papermill, "
                       "ipykernel and jupyter_server, pinned SSH host keys match")
    check.set_defaults(run=admin.cmd_check_config)


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser(json_errors="--json" in argv).parse_args(argv)
    # Not parser.set_defaults: the common actions are shared with every subparser.
    args.config = getattr(args, "config", None)
    args.json = getattr(args, "json", False)
    try:
        result = args.run(args)
        if inspect.iscoroutine(result):
            result = asyncio.run(result)
        return int(result)
    except http.ClientError as exc:
        return _error(args.json, exc.detail, exc.exit_status, exc.extra.get("problem"))
    except GatewayError as exc:
        return _error(args.json, exc.detail, 1)
    except BrokenPipeError:  # `hpcgw queue | head`: the reader has all it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except OSError as exc:  # a local file: the notebook, a side file, -o
        where = f"{exc.filename}: " if exc.filename else ""
        return _error(args.json, f"{where}{exc.strerror or exc}", http.EXIT_USAGE)
    except KeyboardInterrupt:
        return 130


# The title of a problem the CLI reports itself (the gateway's own problems keep theirs).
_LOCAL_TITLES = {http.EXIT_USAGE: "Usage error", http.EXIT_UNREACHABLE: "Gateway unreachable"}


def _error(as_json: bool, detail: str, exit_status: int,
           problem: dict[str, Any] | None = None) -> int:
    """Report an error and give the exit status: one line on stderr, or with ``--json`` an
    RFC 9457 problem on stdout (the gateway's own when it sent one, else one the CLI makes;
    ``exit_status`` added either way), so a script reads errors where it reads answers."""
    if not as_json:
        print(f"hpcgw: error: {detail}", file=sys.stderr)
        return exit_status
    body = dict(problem) if problem else {
        "type": "about:blank", "title": _LOCAL_TITLES.get(exit_status, "Error"),
        "detail": detail}
    print(json.dumps({**body, "exit_status": exit_status}, indent=2))
    return exit_status


if __name__ == "__main__":
    sys.exit(main())
