"""Job specs: the shape check (parse_spec) and the policy check against a cluster (resolve_spec)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from gateway.config import Config, parse_config
from gateway.errors import ValidationFailed
from gateway.spec import MAX_PARAMETERS_BYTES, JobSpec, ResolvedSpec, parse_spec, resolve_spec


def fields_of(error: ValidationFailed) -> set[str]:
    return {e["field"] for e in error.errors}


def refused(raw: Any) -> ValidationFailed:
    with pytest.raises(ValidationFailed) as info:
        parse_spec(raw)
    assert info.value.status == 422
    return info.value


def policy_refused(raw: dict[str, Any], config: Config) -> ValidationFailed:
    spec = parse_spec(raw)
    with pytest.raises(ValidationFailed) as info:
        resolve_spec(spec, config, default_name="notebook")
    assert info.value.status == 422
    return info.value


# -- shape -----------------------------------------------------------------------------------


def test_minimal_spec_parses_with_defaults() -> None:
    spec = parse_spec({})
    assert isinstance(spec, JobSpec)
    assert spec.model_dump(exclude_defaults=True) == {}
    assert (spec.kind, spec.gpus, spec.kernel, spec.parameters) == ("notebook", 0, "python3", {})
    assert spec.name is spec.partition is spec.time is spec.memory is spec.cpus is None


def test_unknown_fields_are_refused_by_name() -> None:
    error = refused({"partition": "cpu", "partiton": "gpu", "nodes": 4})
    assert fields_of(error) == {"partiton", "nodes"}
    assert set(error.problem()["fields"]) == {"partiton", "nodes"}
    assert "partiton" in error.detail and "nodes" in error.detail


def test_spec_that_is_not_an_object_is_refused() -> None:
    assert fields_of(refused(["partition", "cpu"])) == {"spec"}


@pytest.mark.parametrize(("raw", "field"), [
    ({"gpus": -1}, "gpus"),
    ({"cpus": 0}, "cpus"),
    ({"kind": "shell"}, "kind"),
    ({"parameters": ["lr", 1]}, "parameters"),
    ({"name": "x" * 1000}, "name"),
    ({"gpus": "two"}, "gpus"),
])
def test_bad_shapes_name_their_field(raw: dict[str, Any], field: str) -> None:
    assert fields_of(refused(raw)) == {field}


@pytest.mark.parametrize("name", [
    "x = 1; import os#",
    "class",
    "def",
    "1abc",
    "a-b",
    "a b",
    "",
    "__import__('os').system('id')",
    "x\n",
])
def test_parameter_names_must_be_identifiers(name: str) -> None:
    error = refused({"parameters": {"ok": 1, name: 2}})
    assert fields_of(error) == {"parameters"}


def test_parameter_values_are_free_json() -> None:
    spec = parse_spec({"parameters": {"lr": 0.1, "tag": "x = 1; import os#", "ys": [1, None]}})
    assert spec.parameters == {"lr": 0.1, "tag": "x = 1; import os#", "ys": [1, None]}


@pytest.mark.parametrize(("parameters", "taken"), [
    ({"ys": list(range(998))}, True),  # the object, the list and 998 numbers: 1,000 values
    ({"ys": list(range(999))}, False),
    ({"ys": [[]] * 999}, False),  # (a red-team's cheapest costly value, 60 KiB of it before)
    ({"text": "x" * (16 * 1024 - 11)}, True),  # {"text":"..."}: 16 KiB
    ({"text": "x" * (16 * 1024 - 10)}, False),
])
def test_parameters_are_settings_not_data(parameters: dict[str, Any], taken: bool) -> None:
    """Every answer that shows a job parses, checks and writes its parameters again: a list
    of 100 jobs with 60 KiB of ``[[],[],...]`` each stopped the gateway for seconds."""
    if taken:
        assert parse_spec({"parameters": parameters}).parameters == parameters
    else:
        error = refused({"parameters": parameters})
        assert fields_of(error) == {"parameters"}
        assert "at most 1000 values and 16 KiB" in str(error.errors)


@pytest.mark.parametrize("name", [
    "run\n#SBATCH --output=/tmp/y",
    "run\r",
    "tab\there",
    "bell\x07",
    "nul\x00",
    "esc\x1b[31m",
    "rtl\u202eoverride",
])
def test_job_names_with_control_characters_are_refused(name: str) -> None:
    assert fields_of(refused({"name": name})) == {"name"}


def test_printable_hostile_names_pass_the_shape_check() -> None:
    # Quoting, not refusal, makes these safe (see test_templates.py).
    for name in ["$(id)", "'; id", 'a"b`c', "naïve ☃"]:
        assert parse_spec({"name": name}).name == name


# -- policy ----------------------------------------------------------------------------------


def test_defaults_are_filled_from_the_cluster(config: Config) -> None:
    resolved = resolve_spec(parse_spec({}), config, default_name="notebook")
    assert resolved.cluster == "dev"
    assert resolved.partition == "cpu"           # the cluster's default_partition
    assert resolved.time_s == 30 * 60            # cpu's default_time
    assert resolved.time == "0-00:30:00"
    assert resolved.name == "notebook"
    assert resolved.kernel == "python3"
    assert resolved.memory_mb is None
    assert resolved.gres is None


def with_partition(config: Config, name: str, **changes: Any) -> Config:
    cluster = config.clusters[0]
    partition = cluster.partitions[name].model_validate(
        {**cluster.partitions[name].model_dump(), **changes})
    partitions = {**cluster.partitions, name: partition}
    return config.model_copy(update={"clusters": [
        cluster.model_copy(update={"partitions": partitions})]})


def test_cpus_and_memory_defaults_come_from_the_partition(config: Config) -> None:
    assert resolve_spec(parse_spec({}), config, "n").cpus == 1
    configured = with_partition(config, "cpu", default_cpus=2, default_memory="512M",
                                lab_default_memory="2G")
    notebook = resolve_spec(parse_spec({}), configured, "n")
    assert (notebook.cpus, notebook.memory_mb) == (2, 512)
    lab = resolve_spec(parse_spec({"kind": "lab"}), configured, "n")
    assert (lab.cpus, lab.memory_mb) == (2, 2048)
    asked = resolve_spec(parse_spec({"kind": "lab", "cpus": 4, "memory": "3G"}), configured, "n")
    assert (asked.cpus, asked.memory_mb) == (4, 3072)
    only_batch = with_partition(config, "cpu", default_memory="768M")
    assert resolve_spec(parse_spec({"kind": "lab"}), only_batch, "n").memory_mb == 768


@pytest.mark.parametrize(("changes", "problem"), [
    ({"default_cpus": 9}, "default_cpus 9 is over max_cpus 8"),
    ({"default_memory": "9G"}, "default_memory 9G is over max_memory 8G"),
    ({"lab_default_memory": "16G"}, "lab_default_memory 16G is over max_memory 8G"),
    ({"default_time": "03:00:00"}, "default_time 03:00:00 is over max_time 02:00:00"),
    ({"lab_default_memory": "lots"}, "lab_default_memory"),
])
def test_partition_defaults_must_be_within_its_limits(
        changes: dict[str, Any], problem: str, make_raw_config: Any, tmp_path: Path) -> None:
    raw = make_raw_config(tmp_path)
    raw["clusters"][0]["partitions"]["cpu"].update(changes)
    assert problem in parse_config(raw).cluster_errors["dev"]


def test_default_time_follows_the_chosen_partition(config: Config) -> None:
    resolved = resolve_spec(parse_spec({"partition": "gpu"}), config, default_name="nb")
    assert (resolved.partition, resolved.time_s) == ("gpu", 3600)


def test_a_full_valid_spec_resolves(config: Config) -> None:
    raw = {"name": "train", "cluster": "dev", "partition": "gpu", "account": "proj1",
           "gpus": 2, "gpu_type": "a100", "cpus": 16, "memory": "64G", "time": "1-00:00:00",
           "parameters": {"lr": 0.1}}
    resolved = resolve_spec(parse_spec(raw), config, default_name="notebook")
    assert resolved.name == "train"
    assert resolved.account == "proj1"
    assert resolved.memory_mb == 64 * 1024
    assert resolved.time_s == 86400
    assert resolved.gres == "gpu:a100:2"
    assert resolved.parameters == {"lr": 0.1}


@pytest.mark.parametrize(("raw", "field"), [
    ({"partition": "bigmem"}, "partition"),
    ({"cluster": "elsewhere"}, "cluster"),
    ({"account": "proj2"}, "account"),
    ({"qos": "high"}, "qos"),                                # nothing allowlisted
    ({"image": "/images/x.sif"}, "image"),                   # no container runtime yet
    ({"image": "pytorch"}, "image"),
    ({"kernel": "julia"}, "kernel"),
    ({"time": "02:00:01"}, "time"),                          # cpu allows 02:00:00
    ({"partition": "gpu", "time": "1-00:00:01"}, "time"),
    ({"time": "00:00:30"}, "time"),                          # under a minute
    ({"partition": "gpu", "gpus": 3}, "gpus"),               # gpu allows 2
    ({"gpus": 1}, "gpus"),                                   # cpu has no GPUs
    ({"partition": "gpu", "gpus": 1, "gpu_type": "h100"}, "gpu_type"),
    ({"partition": "gpu", "gpu_type": "a100"}, "gpu_type"),  # a type needs gpus >= 1
    ({"memory": "9G"}, "memory"),                            # cpu allows 8G
    ({"cpus": 9}, "cpus"),
    ({"kind": "lab", "parameters": {"a": 1}}, "parameters"),  # parameters are for notebooks
    ({"persist": {"storage": "s", "path": "/srv/lab"}}, "persist"),  # labs only
    ({"kind": "lab", "outputs": [{"path": "results/"}]}, "outputs"),  # notebook runs only
])
def test_out_of_policy_values_name_their_field(
    raw: dict[str, Any], field: str, config: Config
) -> None:
    error = policy_refused(raw, config)
    assert fields_of(error) == {field}
    assert field in error.problem()["fields"]


@pytest.mark.parametrize(("raw", "words"), [
    ({"time": "soon"}, "a Slurm time: MM, MM:SS"), ({"time": " 1:00"}, "a Slurm time"),
    ({"time": "1:00\n"}, "a Slurm time"), ({"time": "1" * 8}, "a Slurm time"),
    ({"memory": "lots"}, "a size per node: 4G"), ({"memory": "4 G"}, "a size per node"),
])
def test_a_time_or_memory_not_in_its_form_is_refused_in_words(
    raw: dict[str, Any], words: str
) -> None:
    """The forms are the OpenAPI document's patterns, checked before any policy."""
    (error,) = refused(raw).errors
    assert error["field"] in raw and words in error["message"]


@pytest.mark.parametrize("time", ["0", "00:00", "0-00:00:00"])
def test_zero_time_is_refused(time: str, config: Config) -> None:
    assert fields_of(policy_refused({"time": time}, config)) == {"time"}


def test_limits_at_the_edge_are_allowed(config: Config) -> None:
    raw = {"partition": "gpu", "gpus": 2, "gpu_type": "a100", "memory": "64G", "cpus": 16,
           "time": "24:00:00"}
    assert resolve_spec(parse_spec(raw), config, default_name="nb").time_s == 86400


def test_every_bad_field_is_named_at_once(config: Config) -> None:
    raw = {"partition": "gpu", "account": "nope", "gpus": 5, "gpu_type": "v100",
           "memory": "128G", "time": "2-00:00:00", "image": "evil"}
    error = policy_refused(raw, config)
    assert fields_of(error) == {"account", "gpus", "gpu_type", "memory", "time", "image"}
    assert error.problem()["fields"] == sorted(fields_of(error))


def test_unknown_partition_and_account_together(config: Config) -> None:
    error = policy_refused({"partition": "bigmem", "account": "proj2"}, config)
    assert fields_of(error) == {"partition", "account"}
    partition_message = next(e["message"] for e in error.errors if e["field"] == "partition")
    assert "bigmem" in partition_message and "cpu" in partition_message


# -- the resolved spec ---------------------------------------------------------------------------


def resolved(**overrides: Any) -> ResolvedSpec:
    values: dict[str, Any] = {
        "kind": "notebook", "name": "n", "cluster": "dev", "partition": "gpu", "account": None,
        "qos": None, "constraint": None, "reservation": None, "gpus": 0, "gpu_type": None,
        "cpus": 1, "memory_mb": None, "time_s": 3600, "image": None, "kernel": "python3",
        "parameters": {},
    }
    return ResolvedSpec(**{**values, **overrides})


@pytest.mark.parametrize(("gpus", "gpu_type", "gres"), [
    (0, None, None),
    (1, None, "gpu:1"),
    (2, None, "gpu:2"),
    (1, "a100", "gpu:a100:1"),
    (2, "a100", "gpu:a100:2"),
])
def test_gres(gpus: int, gpu_type: str | None, gres: str | None) -> None:
    assert resolved(gpus=gpus, gpu_type=gpu_type).gres == gres


def test_resolved_spec_round_trips_through_json() -> None:
    spec = resolved(gpus=1, gpu_type="a100", memory_mb=512, parameters={"a": [1, "b"]})
    assert ResolvedSpec.model_validate_json(spec.model_dump_json()) == spec


def test_shape_errors_are_in_plain_words() -> None:
    error = refused({"cpus": "many", "gpus": -1, "kind": "batch", "name": "a" * 300,
                     "bogus": 1, "parameters": {"1x": 2}, "inputs": "data"})
    assert {e["field"]: e["message"] for e in error.errors} == {
        "cpus": "a whole number", "gpus": "at least 0", "kind": "one of 'notebook' or 'lab'",
        "name": "at most 256 characters", "bogus": "not a known field",
        "parameters": "parameter names must be Python identifiers: ['1x']",
        "inputs": "a list"}
    assert not any(word in json.dumps(error.errors) for word in ("Input should", "Value error",
                                                                  "pydantic", "Extra inputs"))


# -- webhook -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("url", "words"), [
    ("ftp://hooks.example.org/in", "http:// or https://"),
    ("https://user:pw@hooks.example.org/in", "no user name or password"),
    ("https://hooks.example.org/in#top", "no fragment"),
    ("https://hooks.example.org/" + "x" * 2100, "at most 2048 characters"),
    ("https://127.1/in", "four decimal numbers"),
    ("https://hooks.example.org/a b", "printable ASCII"),
])
def test_a_bad_webhook_url_is_refused_in_words(url: str, words: str) -> None:
    error = refused({"webhook": {"url": url}})
    assert fields_of(error) == {"webhook.url"}
    assert words in error.errors[0]["message"]


@pytest.mark.parametrize("webhook", [{}, {"url": 5}, {"url": "https://h.example", "x": 1},
                                     "https://h.example"])
def test_a_webhook_of_the_wrong_shape_is_refused(webhook: Any) -> None:
    assert all(field.startswith("webhook") for field in fields_of(refused({"webhook": webhook})))


def test_a_webhook_to_a_public_host_resolves_and_round_trips(config: Config) -> None:
    for kind in ("notebook", "lab"):
        spec = resolve_spec(parse_spec({"kind": kind, "webhook": {
            "url": "https://hooks.example.org/in?job=1"}}), config, default_name="nb")
        assert spec.webhook is not None
        assert spec.webhook.url == "https://hooks.example.org/in?job=1"
        assert ResolvedSpec.model_validate_json(spec.model_dump_json()) == spec


@pytest.mark.parametrize("host", ["127.0.0.1", "[::1]", "localhost", "10.0.0.7",
                                  "169.254.169.254", "[::ffff:127.0.0.1]", "api.localhost"])
def test_a_webhook_to_an_internal_address_is_refused_unless_allowed(
    host: str, tmp_path: Path, make_raw_config: Any
) -> None:
    raw = {"webhook": {"url": f"http://{host}:8080/hook"}}
    error = policy_refused(raw, parse_config(make_raw_config(tmp_path)))
    assert fields_of(error) == {"webhook.url"}
    assert "only to public addresses" in error.errors[0]["message"]
    allowing = make_raw_config(tmp_path)
    allowing["webhooks"] = {"allow_private": True}
    resolve_spec(parse_spec(raw), parse_config(allowing), default_name="nb")


def test_parameters_of_accented_text_well_under_16_kib_are_accepted() -> None:
    """README: "at most 1,000 JSON values and 16 KiB in all". json.dumps escapes every
    non-ASCII character as \\uXXXX (6 bytes, 12 for one past U+FFFF), so 5.6 KB of French
    text is refused as over 16 KiB (the stored spec, model_dump_json, is UTF-8)."""
    parameters = {"title": "é" * 2800}
    size = len(json.dumps(parameters, ensure_ascii=False, separators=(",", ":")).encode())
    assert size < MAX_PARAMETERS_BYTES / 2
    assert parse_spec({"parameters": parameters}).parameters == parameters
