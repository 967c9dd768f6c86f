"""The config file: a broken cluster disables that cluster; a broken [gateway] is fatal."""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from gateway.config import load_config, parse_config
from gateway.errors import ConfigError

RawConfig = Callable[..., dict[str, Any]]


def with_second_cluster(raw: dict[str, Any], **changes: Any) -> dict[str, Any]:
    """``raw`` plus a copy of its cluster named ``other``, with ``changes`` applied to the copy."""
    other = copy.deepcopy(raw["clusters"][0])
    other.update({"name": "other", **changes})
    raw["clusters"].append(other)
    return raw


def test_valid_config(tmp_path: Path, make_raw_config: RawConfig) -> None:
    config = parse_config(make_raw_config(tmp_path))
    assert config.cluster_errors == {}
    assert [c.name for c in config.clusters] == ["dev"]
    assert config.cluster(None) is config.clusters[0]
    assert config.cluster("dev") is config.clusters[0]
    assert config.cluster("nope") is None
    gpu = config.clusters[0].partitions["gpu"]
    assert (gpu.max_gpus, gpu.gpu_types, gpu.max_time_s) == (2, ["a100"], 86400)
    assert config.gateway.data_dir == tmp_path


@pytest.mark.parametrize(("changes", "mentioned"), [
    ({"default_partition": "bigmem"}, "default_partition"),
    ({"work_root": "/home/{unix_user}/my jobs"}, "work_root"),
    ({"work_root": "/home/$USER/jobs"}, "work_root"),
    ({"work_root": "relative/jobs"}, "work_root"),
    ({"python": "/usr/bin/python3; id"}, "python"),
    ({"accounts": ["proj1", "proj 2"]}, "accounts"),
    ({"partitions": {}}, "partitions"),
    ({"partitions": {"cpu x": {}}}, "partitions"),
    ({"partitions": {"cpu": {"max_time": "forever"}}}, "max_time"),
    ({"partitions": {"cpu": {"max_memory": "lots"}}}, "max_memory"),
    ({"partitions": {"cpu": {"gpu_types": ["a100;x"]}}}, "gpu_types"),
    ({"transport": "carrier-pigeon"}, "transport"),
    ({"unknown_key": 1}, "unknown_key"),
    ({"name": "bad name"}, "name"),
])
def test_a_broken_cluster_disables_only_itself(
    tmp_path: Path, make_raw_config: RawConfig, changes: dict[str, Any], mentioned: str
) -> None:
    raw = with_second_cluster(make_raw_config(tmp_path), **changes)
    config = parse_config(raw)
    assert [c.name for c in config.clusters] == ["dev"]
    label = str(raw["clusters"][1]["name"])
    assert list(config.cluster_errors) == [label]
    assert mentioned in config.cluster_errors[label]
    assert config.cluster(label) is None


def test_missing_default_partition_disables_the_cluster(
    tmp_path: Path, make_raw_config: RawConfig
) -> None:
    raw = make_raw_config(tmp_path)
    raw["clusters"][0]["default_partition"] = "bigmem"
    config = parse_config(raw)
    assert config.clusters == []
    assert "bigmem" in config.cluster_errors["dev"]
    assert "(clusters)" in config.cluster_errors


def test_an_unnamed_broken_cluster_is_labelled_by_position(
    tmp_path: Path, make_raw_config: RawConfig
) -> None:
    raw = make_raw_config(tmp_path)
    del raw["clusters"][0]["name"]
    config = parse_config(raw)
    assert "clusters[0]" in config.cluster_errors


def test_no_clusters_at_all_is_reported(tmp_path: Path, make_raw_config: RawConfig) -> None:
    raw = make_raw_config(tmp_path)
    del raw["clusters"]
    config = parse_config(raw)
    assert config.clusters == [] and "(clusters)" in config.cluster_errors


@pytest.mark.parametrize("secret", [None, "", "short", "x" * 31])
def test_cookie_secret_missing_or_short_is_fatal(
    tmp_path: Path, make_raw_config: RawConfig, secret: str | None
) -> None:
    raw = make_raw_config(tmp_path)
    if secret is None:
        del raw["gateway"]["cookie_secret"]
    else:
        raw["gateway"]["cookie_secret"] = secret
    with pytest.raises(ConfigError, match="cookie_secret"):
        parse_config(raw)


def test_cookie_secret_of_32_characters_is_enough(
    tmp_path: Path, make_raw_config: RawConfig
) -> None:
    raw = make_raw_config(tmp_path)
    raw["gateway"]["cookie_secret"] = "x" * 32
    assert parse_config(raw).gateway.cookie_secret == "x" * 32


@pytest.mark.parametrize(("section", "key", "value"), [
    ("gateway", "unknown", 1),
    ("gateway", "port", 70000),
    ("gateway", "max_notebook_bytes", 10),
    ("poll", "young_interval", 0),
])
def test_broken_gateway_sections_are_fatal(
    tmp_path: Path, make_raw_config: RawConfig, section: str, key: str, value: Any
) -> None:
    raw = make_raw_config(tmp_path)
    raw[section][key] = value
    with pytest.raises(ConfigError, match=key):
        parse_config(raw)


def test_missing_gateway_section_is_fatal(tmp_path: Path, make_raw_config: RawConfig) -> None:
    raw = make_raw_config(tmp_path)
    del raw["gateway"]
    with pytest.raises(ConfigError, match="gateway"):
        parse_config(raw)


def test_config_errors_contain_no_secret(tmp_path: Path, make_raw_config: RawConfig) -> None:
    raw = make_raw_config(tmp_path)
    raw["gateway"]["cookie_secret"] = "TOPSECRET-but-short"
    with pytest.raises(ConfigError) as info:
        parse_config(raw)
    assert "TOPSECRET" not in info.value.detail


def test_load_config_from_toml(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "hpcgw.toml"
    path.write_text(f"""
[gateway]
data_dir = "{tmp_path}"
cookie_secret = "{'k' * 40}"

[[clusters]]
name = "dev"
default_partition = "cpu"
[clusters.partitions.cpu]
max_time = "01:00:00"
""")
    config = load_config(path)
    assert config.clusters[0].partitions["cpu"].max_time_s == 3600
    monkeypatch.setenv("HPCGW_CONFIG", str(path))
    assert load_config(None).clusters[0].name == "dev"


def test_load_config_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HPCGW_CONFIG", raising=False)
    with pytest.raises(ConfigError, match="no config file"):
        load_config(None)
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.toml")
    broken = tmp_path / "broken.toml"
    broken.write_text("[gateway\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(broken)


@pytest.mark.parametrize("clusters", [{"name": "dev"}, "dev"])
def test_clusters_must_be_a_list_of_tables(
    tmp_path: Path, make_raw_config: RawConfig, clusters: Any
) -> None:
    raw = make_raw_config(tmp_path)
    raw["clusters"] = clusters  # e.g. [clusters] written instead of [[clusters]]
    with pytest.raises(ConfigError, match=r"\[\[clusters\]\]"):
        parse_config(raw)


def test_a_cluster_entry_that_is_not_a_table_is_disabled(
    tmp_path: Path, make_raw_config: RawConfig
) -> None:
    raw = make_raw_config(tmp_path)
    raw["clusters"].insert(0, "dev")
    config = parse_config(raw)
    assert [c.name for c in config.clusters] == ["dev"]
    assert list(config.cluster_errors) == ["clusters[0]"]


def test_duplicate_cluster_names_are_refused(tmp_path: Path, make_raw_config: RawConfig) -> None:
    raw = make_raw_config(tmp_path)
    raw["clusters"].append(copy.deepcopy(raw["clusters"][0]))
    raw["clusters"][1]["default_partition"] = "gpu"
    config = parse_config(raw)
    assert [c.name for c in config.clusters] == ["dev"]
    first = config.cluster("dev")
    assert first is not None and first.default_partition == "cpu"  # the first one wins
    (label,) = config.cluster_errors
    assert "dev" in label and "name" in config.cluster_errors[label]


def test_check_config_lists_every_problem_in_one_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A broken [gateway] no longer hides the rest: each field and each broken cluster is a
    line of its own, in words, and the exit status says so."""
    from gateway.cli.main import main

    config = tmp_path / "gateway.toml"
    config.write_text(
        f'[gateway]\ndata_dir = "{tmp_path / "data"}"\nport = 99999\ncookie_secret = "short"\n'
        '[[clusters]]\nname = "dev"\ndefault_partition = "cpu"\n'
        '[clusters.partitions.cpu]\nmax_time = "1:00:00"\ndefault_time = "2:00:00"\n'
        '[[clusters]]\nname = "other"\ntransport = "carrier-pigeon"\ndefault_partition = "x"\n'
        '[clusters.partitions.x]\n')
    config.chmod(0o600)
    assert main(["--config", str(config), "check-config"]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert lines[:2] == ["problem: gateway.port: at most 65535",
                         "problem: gateway.cookie_secret: at least 32 characters"]
    assert "problem: cluster dev: disabled: partitions.cpu: default_time 2:00:00 is over " \
           "max_time 1:00:00" in lines
    assert any(line.startswith("problem: cluster other: disabled: ") for line in lines), lines
    assert len(lines) == 4 and not any("pydantic" in line for line in lines)


def test_webhooks_are_public_only_by_default_and_checked(
    tmp_path: Path, make_raw_config: RawConfig
) -> None:
    """[webhooks] is optional; its values are bounded, unknown keys refused, and the backoff's
    cap may not be below its start."""
    webhooks = parse_config(make_raw_config(tmp_path)).webhooks
    assert (webhooks.allow_private, webhooks.max_attempts, webhooks.backoff_s,
            webhooks.max_backoff_s, webhooks.timeout_s) == (False, 5, 1.0, 60.0, 10.0)
    for section, mentioned in (({"max_attempts": 0}, "max_attempts"),
                               ({"timeout_s": 0}, "timeout_s"),
                               ({"allow_privat": True}, "allow_privat"),
                               ({"backoff_s": 30, "max_backoff_s": 10}, "max_backoff_s")):
        raw = make_raw_config(tmp_path)
        raw["webhooks"] = section
        with pytest.raises(ConfigError, match=mentioned):
            parse_config(raw)
