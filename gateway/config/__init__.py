"""The gateway's configuration: one TOML file, validated by pydantic.

``config.example.toml`` documents every key. A cluster section that fails validation disables that
cluster (recorded in :attr:`Config.cluster_errors`), not the service; a broken ``[gateway]`` section
is fatal. Users and tokens live in the store, never here.

The sections are models in :mod:`.sections` (gateway-wide) and :mod:`.clusters` (one per
cluster); the allowlist patterns they check against are in :mod:`.base`, shared with the job
spec and the API. This module assembles them: :class:`Config`, :func:`parse_config` (a parsed
TOML document) and :func:`load_config` (a file).
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..errors import ConfigError
from ..plainwords import plain_errors
from ..sso.settings import OIDCConfig
from .base import HOST, IDENTIFIER, SAFE_PATH, UNIX_USER, schema_pattern
from .clusters import ClusterConfig, ImageConfig, PartitionConfig, SSHConfig
from .sections import (
    GatewayConfig,
    LabConfig,
    LimitsConfig,
    MetricsConfig,
    PollConfig,
    StagingConfig,
    WebhooksConfig,
)

__all__ = [
    "HOST", "IDENTIFIER", "SAFE_PATH", "UNIX_USER", "ClusterConfig", "Config", "GatewayConfig",
    "ImageConfig", "LabConfig", "LimitsConfig", "MetricsConfig", "PartitionConfig",
    "PollConfig", "SSHConfig", "StagingConfig", "WebhooksConfig", "load_config",
    "parse_config", "schema_pattern",
]


class Config(BaseModel):
    model_config = ConfigDict(extra="forbid")

    gateway: GatewayConfig
    poll: PollConfig = Field(default_factory=lambda: PollConfig.model_validate({}))
    labs: LabConfig = Field(default_factory=lambda: LabConfig.model_validate({}))
    limits: LimitsConfig = Field(default_factory=lambda: LimitsConfig.model_validate({}))
    metrics: MetricsConfig = Field(default_factory=lambda: MetricsConfig.model_validate({}))
    staging: StagingConfig = Field(default_factory=lambda: StagingConfig.model_validate({}))
    webhooks: WebhooksConfig = Field(default_factory=lambda: WebhooksConfig.model_validate({}))
    oidc: OIDCConfig | None = None  # single sign-on for the portal; None: token login only
    clusters: list[ClusterConfig]
    cluster_errors: dict[str, str] = Field(default_factory=dict, exclude=True)

    def cluster(self, name: str | None) -> ClusterConfig | None:
        """The named cluster, or the first one when ``name`` is None; None if unknown/disabled."""
        if name is None:
            return self.clusters[0] if self.clusters else None
        return next((c for c in self.clusters if c.name == name), None)


def _format_errors(error: ValidationError) -> str:
    return "; ".join(
        f"{field}: {message}" for field, message in plain_errors(error, "(top)")
    )


def parse_config(raw: dict[str, Any]) -> Config:
    """Validate a parsed TOML document. Broken clusters are disabled and reported, not fatal."""
    raw = dict(raw)
    clusters: list[ClusterConfig] = []
    errors: dict[str, str] = {}
    sections = raw.pop("clusters", [])
    if not isinstance(sections, list):
        raise ConfigError("clusters: write each cluster as a [[clusters]] table")
    for index, section in enumerate(sections):
        if not isinstance(section, dict):
            errors[f"clusters[{index}]"] = "not a table"
            continue
        label = str(section.get("name", f"clusters[{index}]"))
        try:
            cluster = ClusterConfig.model_validate(section)
        except ValidationError as exc:
            errors[label] = _format_errors(exc)
            continue
        if any(c.name == cluster.name for c in clusters):
            errors[f"{label} (clusters[{index}])"] = "another cluster already has this name"
            continue
        clusters.append(cluster)
    try:
        config = Config.model_validate({**raw, "clusters": clusters})
    except ValidationError as exc:
        # ``problems``: each one on its own, the clusters' too (check-config lists them all).
        problems = [f"{field}: {message}" for field, message in plain_errors(exc, "(top)")]
        problems += [f"cluster {name}: disabled: {error}" for name, error in errors.items()]
        raise ConfigError(_format_errors(exc), problems=problems) from exc
    config.cluster_errors = errors
    if not clusters:
        errors.setdefault("(clusters)", "no usable cluster is configured")
    return config


def load_config(path: str | os.PathLike[str] | None) -> Config:
    """Read the config from ``path``, else ``$HPCGW_CONFIG``; ConfigError if neither is usable."""
    location = path or os.environ.get("HPCGW_CONFIG")
    if not location:
        raise ConfigError("no config file: pass --config FILE or set HPCGW_CONFIG")
    try:
        raw = tomllib.loads(Path(location).read_text())
    except OSError as exc:
        raise ConfigError(f"cannot read {location}: {exc.strerror}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{location} is not valid TOML: {exc}") from exc
    return parse_config(raw)
