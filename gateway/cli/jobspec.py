"""What a job is asked for on the command line: sbatch's resource flags and papermill's
parameter forms, turned into the API's job spec."""

from __future__ import annotations

import argparse
import json
import re
from typing import Any

import yaml

from .http import EXIT_USAGE, ClientError

_GRES = re.compile(r"^gpu(?::(?P<type>[A-Za-z0-9._+-]*[A-Za-z._+-][A-Za-z0-9._+-]*))?"
                   r"(?::(?P<count>\d+))?$")


def parse_parameter(text: str) -> tuple[str, Any]:
    """``name=value``: the value is JSON if it parses as JSON, else the literal string."""
    name, sep, raw = text.partition("=")
    if not sep or not name:
        raise ClientError(f"-P wants name=value, got {text!r}", exit=EXIT_USAGE)
    try:
        return name, json.loads(raw)
    except ValueError:
        return name, raw


def spec_from_args(args: argparse.Namespace, kind: str) -> dict[str, Any]:
    """The job spec the sbatch-style flags describe (unset flags are left to the server)."""
    spec: dict[str, Any] = {"kind": kind}
    for flag, field in (("cluster", "cluster"), ("partition", "partition"),
                        ("account", "account"), ("qos", "qos"), ("constraint", "constraint"),
                        ("reservation", "reservation"), ("cpus", "cpus"), ("mem", "memory"),
                        ("time", "time"), ("job_name", "name"), ("image", "image"),
                        ("kernel", "kernel")):
        if getattr(args, flag, None) is not None:
            spec[field] = getattr(args, flag)
    if getattr(args, "gpus", None) is not None:
        spec["gpus"] = args.gpus
    if getattr(args, "webhook", None) is not None:
        spec["webhook"] = {"url": args.webhook}
    if args.gres:
        match = _GRES.match(args.gres)
        if not match:
            raise ClientError(f"--gres wants gpu[:TYPE][:COUNT], got {args.gres!r}",
                              exit=EXIT_USAGE)
        spec["gpus"] = int(match["count"] or 1)
        if match["type"]:
            spec["gpu_type"] = match["type"]
    parameters = notebook_parameters(args)
    if parameters:
        spec["parameters"] = parameters
    return spec


def notebook_parameters(args: argparse.Namespace) -> dict[str, Any]:
    """The parameters papermill's forms give, merged in papermill's order (a later form wins
    for a name): ``-f`` files and ``-y`` YAML mappings, ``--parameters NAME VALUE`` (the value
    typed as papermill types it), ``-r NAME VALUE`` (a string, as given), then ``-P
    name=value`` (JSON if it parses, else a string)."""
    parameters: dict[str, Any] = {}
    for source, text in [*((f, _read_text(f)) for f in getattr(args, "parameters_file", None)
                           or []),
                         *(("-y", y) for y in getattr(args, "parameters_yaml", None) or [])]:
        parameters.update(_yaml_mapping(source, text))
    for name, value in getattr(args, "parameters", None) or []:
        parameters[name] = papermill_value(value)
    for name, value in getattr(args, "parameters_raw", None) or []:
        parameters[name] = value
    for text in getattr(args, "parameter", None) or []:
        name, value = parse_parameter(text)
        parameters[name] = value
    return parameters


def papermill_value(text: str) -> Any:
    """A ``-p`` value as papermill reads it: True, False, None, an int, a float, else the
    string."""
    if text in ("True", "False", "None"):
        return {"True": True, "False": False, "None": None}[text]
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def _read_text(path: str) -> str:
    with open(path, encoding="utf-8") as handle:
        return handle.read()


def _yaml_mapping(source: str, text: str) -> dict[str, Any]:
    """``text`` as a YAML mapping of parameters (``source`` names it in errors)."""
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ClientError(f"{source}: not YAML: {exc}".splitlines()[0],
                          exit=EXIT_USAGE) from None
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
        raise ClientError(f"{source}: parameters must be a YAML mapping of names to values",
                          exit=EXIT_USAGE)
    return value
