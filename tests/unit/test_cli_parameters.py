"""The CLI's parameter forms (papermill's by their long names, and -P) and its sbatch-style
resource flags, as the job spec they send."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from gateway.cli.http import ClientError
from gateway.cli.jobspec import papermill_value, spec_from_args
from gateway.cli.main import build_parser


def spec(*argv: str) -> dict[str, Any]:
    return spec_from_args(build_parser().parse_args(["submit", "nb.ipynb", *argv]), "notebook")


@pytest.mark.parametrize(("text", "value"), [
    ("True", True), ("False", False), ("None", None), ("3", 3), ("-2", -2), ("0.5", 0.5),
    ("1e3", 1000.0), ("text", "text"), ("true", "true"), ("[1, 2]", "[1, 2]"), ("", ""),
])
def test_values_are_typed_as_papermill_types_them(text: str, value: Any) -> None:
    assert papermill_value(text) == value and type(papermill_value(text)) is type(value)


def test_every_form_merges_in_papermills_order(tmp_path: Path) -> None:
    params = tmp_path / "params.yaml"
    params.write_text("alpha: 0.1\nbeta: from-file\nlayers: [64, 32]\n")
    sent = spec("-f", str(params), "-y", "{beta: from-yaml, gamma: 2}",
                "--parameters", "gamma", "3", "--parameters", "flag", "True",
                "-r", "label", "007", "-P", "epochs=5", "-P", "note=hello world")
    assert sent["parameters"] == {"alpha": 0.1, "beta": "from-yaml", "layers": [64, 32],
                                  "gamma": 3, "flag": True, "label": "007", "epochs": 5,
                                  "note": "hello world"}
    assert "parameters" not in spec()


@pytest.mark.parametrize("argv", [["-y", "[1, 2]"], ["-y", "a: [b"], ["-y", "{1: 2}"],
                                  ["-P", "novalue"]])
def test_bad_parameters_are_a_usage_error(argv: list[str]) -> None:
    with pytest.raises(ClientError) as refused:
        spec(*argv)
    assert refused.value.exit_status == 2


def test_a_missing_parameters_file_is_an_os_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        spec("-f", str(tmp_path / "missing.yaml"))


def test_sbatch_flags_make_the_spec() -> None:
    assert spec("-p", "gpu", "-G", "2", "-c", "4", "--mem", "8G", "-t", "1:00:00", "-J", "x",
                "--image", "cpu", "-A", "proj", "-q", "normal") == {
        "kind": "notebook", "partition": "gpu", "gpus": 2, "cpus": 4, "memory": "8G",
        "time": "1:00:00", "name": "x", "image": "cpu", "account": "proj", "qos": "normal"}
    assert spec("--gres", "gpu:a100:2") == {"kind": "notebook", "gpus": 2, "gpu_type": "a100"}
    assert spec("--webhook", "https://hooks.example.org/in") == {
        "kind": "notebook", "webhook": {"url": "https://hooks.example.org/in"}}


def test_every_subcommand_and_argument_is_described() -> None:
    """`hpcgw X --help` teaches: each subcommand (nested ones too) and each of its arguments
    has a help text."""
    import argparse

    from gateway.cli.main import build_parser

    undescribed = []
    pending: list[tuple[str, argparse.ArgumentParser]] = [("hpcgw", build_parser())]
    while pending:
        name, parser = pending.pop()
        for action in parser._actions:  # argparse keeps no public list of them
            if isinstance(action, argparse._SubParsersAction):
                helps = {choice.dest: choice.help for choice in action._choices_actions}
                for sub, subparser in action.choices.items():
                    if not helps.get(sub):
                        undescribed.append(f"{name} {sub}")
                    pending.append((f"{name} {sub}", subparser))
            elif not action.help and not isinstance(action, argparse._HelpAction):
                undescribed.append(f"{name} {'/'.join(action.option_strings) or action.dest}")
    assert undescribed == []


@pytest.mark.parametrize(("argv", "detail"), [
    (["--json", "submit"], "hpcgw submit: the following arguments are required: notebook"),
    (["queue", "--json", "--frobnicate"], "hpcgw: unrecognized arguments: --frobnicate"),
    (["cancel", "--json", "-t", "x", "-t"], "hpcgw cancel: argument -t/--state: expected one "
                                            "argument"),
])
def test_a_usage_error_with_json_is_a_problem_on_stdout(
    argv: list[str], detail: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from gateway.cli.main import main

    with pytest.raises(SystemExit) as exited:
        main(argv)
    out, err = capsys.readouterr()
    assert exited.value.code == 2 and err == ""
    assert json.loads(out) == {"type": "about:blank", "title": "Usage error", "detail": detail,
                               "exit_status": 2}
    with pytest.raises(SystemExit):
        main([word for word in argv if word != "--json"])
    assert "error:" in capsys.readouterr().err  # without --json: argparse's own lines
