"""Runs one notebook with papermill inside a Slurm job and leaves an exit record.

Copied by the gateway into the job's directory and run by the job-side Python (which has
papermill). It depends on nothing of the gateway's and never contacts it. The exit record
(``exit.json``, written atomically) tells the gateway what happened even after Slurm has
forgotten the job:

    {"status": "ok"}
    {"status": "notebook_error", "ename": ..., "evalue": ..., "cell": N}
    {"status": "error", "ename": ..., "evalue": ...}

Exit status: 0 ok, 3 the notebook raised, 4 anything else (kernel died, bad input, ...).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import traceback
from typing import Any


def write_record(path: str, record: dict[str, Any]) -> None:
    partial = path + ".part"
    with open(partial, "w") as handle:
        json.dump(record, handle)
    os.replace(partial, path)


def execute(args: argparse.Namespace) -> tuple[int, dict[str, Any]]:
    import papermill
    from papermill.exceptions import PapermillExecutionError

    with open(args.parameters) as handle:
        parameters = json.load(handle)
    try:
        papermill.execute_notebook(
            args.input,
            args.output,
            parameters=parameters,
            kernel_name=args.kernel,
            progress_bar=False,
            log_output=True,
            request_save_on_cell_execute=True,
        )
    except PapermillExecutionError as exc:
        return 3, {"status": "notebook_error", "ename": exc.ename, "evalue": exc.evalue,
                   "cell": exc.exec_count}
    return 0, {"status": "ok"}


def main() -> int:
    parser = argparse.ArgumentParser()
    for option in ("--input", "--output", "--parameters", "--kernel", "--exit-record"):
        parser.add_argument(option, required=True)
    args = parser.parse_args()
    try:
        code, record = execute(args)
    except Exception as exc:  # the record must say what happened, whatever it was
        traceback.print_exc()
        code, record = 4, {"status": "error", "ename": type(exc).__name__, "evalue": str(exc)}
    write_record(args.exit_record, record)
    print(f"hpcgw: notebook run ended: {record['status']}", flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
