"""What every config section shares: the allowlist patterns identifiers and paths must match,
and the strict base model (unknown keys are errors, sections are frozen)."""

from __future__ import annotations

import re

from pydantic import BaseModel, ConfigDict

# Identifiers that reach sbatch options or paths must match this (design.md §4: allowlists).
IDENTIFIER = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,63}\Z")
UNIX_USER = re.compile(r"^[a-z_][a-z0-9_-]{0,31}\Z")
SAFE_PATH = re.compile(r"^/[A-Za-z0-9._/{}+-]*\Z")
HOST = re.compile(r"^[A-Za-z0-9][A-Za-z0-9.:-]{0,253}\Z")


def schema_pattern(regex: re.Pattern[str]) -> str:
    """``regex`` (anchored ``^...\\Z``) as a JSON Schema / OpenAPI pattern (``^...$``), so a
    model field and the document check exactly what the gateway checks."""
    assert regex.pattern.startswith("^") and regex.pattern.endswith("\\Z"), regex.pattern
    return regex.pattern[:-2] + "$"


class Strict(BaseModel):
    """A config section: unknown keys are errors, and the parsed section is frozen."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def identifiers(values: list[str]) -> list[str]:
    """``values``, each checked against :data:`IDENTIFIER` (ValueError names the first bad one)."""
    for value in values:
        if not IDENTIFIER.match(value):
            raise ValueError(f"not a valid identifier: {value!r}")
    return values
