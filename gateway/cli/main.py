"""`hpcgw`: one entry point, subcommands, sbatch's flag names where sbatch has the option."""

from __future__ import annotations

import argparse
import asyncio
import inspect
import sys
from collections.abc import Sequence
from typing import Any

from ..errors import GatewayError
from . import admin, client, storage


class _Subcommands:
    """Adds subcommands that all accept the common flags."""

    def __init__(self, action: Any, common: argparse.ArgumentParser) -> None:
        self._action, self._common = action, common

    def add_parser(self, name: str, **kwargs: Any) -> argparse.ArgumentParser:
        parser: argparse.ArgumentParser = self._action.add_parser(
            name, parents=[self._common], **kwargs)
        return parser


def _resource_flags(parser: argparse.ArgumentParser) -> None:
    add = parser.add_argument
    add("-M", "--cluster", help="cluster name (default: the gateway's first)")
    add("-p", "--partition")
    add("-A", "--account")
    add("-q", "--qos")
    add("-C", "--constraint")
    add("--reservation")
    add("--gres", help="gpu[:TYPE]:COUNT")
    add("-c", "--cpus-per-task", dest="cpus", type=int)
    add("--mem", help="memory, e.g. 4G")
    add("-t", "--time", help="time limit, e.g. 1:00:00 or 1-00:00:00")
    add("-J", "--job-name")
    add("--image", metavar="NAME",
        help="run in this container image of the cluster (GET /api/v1/clusters lists them)")
    add("--kernel")
    add("--wait", action="store_true", help="wait until the job ends")


def build_parser() -> argparse.ArgumentParser:
    # --config and --json are accepted before and after the subcommand.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", default=argparse.SUPPRESS,
                        help="gateway config (default: $HPCGW_CONFIG)")
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                        help="machine-readable output")
    parser = argparse.ArgumentParser(prog="hpcgw", description=__doc__, parents=[common])
    sub = _Subcommands(parser.add_subparsers(dest="command", required=True), common)

    serve = sub.add_parser("serve", help="run the gateway")
    serve.add_argument("--host")
    serve.add_argument("--port", type=int)
    serve.set_defaults(run=admin.cmd_serve)

    submit = sub.add_parser("submit", help="run a notebook as a batch job")
    submit.add_argument("notebook")
    _resource_flags(submit)
    submit.add_argument("-P", "--parameter", action="append", metavar="NAME=VALUE",
                        help="papermill parameter (value parsed as JSON, else a string)")
    submit.add_argument("--file", action="append", metavar="PATH",
                        help="a side file, put next to the notebook under its own name")
    submit.set_defaults(run=client.cmd_submit)

    lab = sub.add_parser("lab", help="start an interactive JupyterLab; prints its URL")
    _resource_flags(lab)
    lab.set_defaults(run=client.cmd_lab)

    for name, func, help_text in (
        ("status", client.cmd_status, "show one job"),
        ("cancel", client.cmd_cancel, "cancel a job"),
        ("log", client.cmd_log, "print a job's output log (each cell's output as it runs)"),
    ):
        command = sub.add_parser(name, help=help_text)
        command.add_argument("job_id")
        command.set_defaults(run=func)
        if name == "log":
            command.add_argument("-f", "--follow", action="store_true",
                                 help="print the whole log, then what is added, until the job "
                                      "ends (exit status 0 only if it succeeded)")
    fetch = sub.add_parser("fetch", help="download the executed notebook (or the outputs)")
    fetch.add_argument("job_id")
    fetch.add_argument("--outputs", metavar="DIR",
                       help="download the job's collected output files under DIR instead")
    fetch.add_argument("-o", "--output", help="file to write ('-' for stdout; default ID.ipynb)")
    fetch.set_defaults(run=client.cmd_fetch)
    sub.add_parser("queue", help="list your jobs").set_defaults(run=client.cmd_queue)

    user = _Subcommands(sub.add_parser("user", help="manage gateway users").add_subparsers(
        dest="user_command", required=True), common)
    add = user.add_parser("add", help="add a user; prints its token as the last line")
    add.add_argument("name")
    add.add_argument("--unix-user", required=True)
    add.set_defaults(run=admin.cmd_user_add)
    user.add_parser("list").set_defaults(run=admin.cmd_user_list)

    token = _Subcommands(sub.add_parser("token", help="manage tokens").add_subparsers(
        dest="token_command", required=True), common)
    issue = token.add_parser("issue", help="a new token for a user")
    issue.add_argument("name")
    issue.set_defaults(run=admin.cmd_token_issue)
    revoke = token.add_parser("revoke", help="revoke all of --user's tokens, or one read on stdin")
    revoke.add_argument("--user")
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
    storage.add_parsers(_Subcommands(sub.add_parser(
        "storage", help="your storage servers for data staging").add_subparsers(
        dest="storage_command", required=True), common))
    sub.add_parser("check-config", help="explain every problem in the config").set_defaults(
        run=admin.cmd_check_config)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # Not parser.set_defaults: the common actions are shared with every subparser.
    args.config = getattr(args, "config", None)
    args.json = getattr(args, "json", False)
    try:
        result = args.run(args)
        if inspect.iscoroutine(result):
            result = asyncio.run(result)
        return int(result)
    except GatewayError as exc:
        print(f"hpcgw: error: {exc.detail}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
