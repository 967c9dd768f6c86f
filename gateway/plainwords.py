"""pydantic's validation errors in plain words, for people: the API's 422 field errors and
``hpcgw check-config`` (a leaf module). pydantic's own phrasing ("Input should be a valid
integer, unable to parse string as an integer") names its internals; users get what the value
must be ("a whole number"), and the messages of the gateway's own validators as they are."""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

# pydantic error type -> what the value must be (``{name}`` filled from the error's context).
_PLAIN: dict[str, str] = {
    "missing": "required",
    "extra_forbidden": "not a known field",
    "int_type": "a whole number", "int_parsing": "a whole number",
    "int_from_float": "a whole number", "float_type": "a number", "float_parsing": "a number",
    "bool_type": "true or false", "bool_parsing": "true or false",
    "string_type": "text", "dict_type": "an object (a JSON mapping)",
    "model_type": "an object (a JSON mapping)", "model_attributes_type": "an object",
    "list_type": "a list", "tuple_type": "a list",
    "greater_than_equal": "at least {ge}", "greater_than": "more than {gt}",
    "less_than_equal": "at most {le}", "less_than": "less than {lt}",
    "string_too_long": "at most {max_length} characters",
    "string_too_short": "at least {min_length} characters",
    "too_long": "at most {max_length} items", "too_short": "at least {min_length} items",
    "literal_error": "one of {expected}", "enum": "one of {expected}",
    "string_pattern_mismatch": "not in the form this field takes",
    "json_invalid": "not valid JSON",
}


def plain_message(error: Any) -> str:
    """One pydantic error (an item of ``ValidationError.errors()``) in plain words."""
    kind, context = error.get("type", ""), error.get("ctx") or {}
    if kind in ("value_error", "assertion_error") and "error" in context:
        return str(context["error"])  # the gateway's own validator said it
    template = _PLAIN.get(kind)
    if template is None:
        return str(error.get("msg", "not valid"))
    try:
        return template.format(**{k: str(v) for k, v in context.items()})
    except (KeyError, IndexError):
        return str(error.get("msg", "not valid"))


def plain_errors(exc: ValidationError, top: str) -> list[tuple[str, str]]:
    """Every error of ``exc`` as (dotted field path, or ``top`` for the whole value; plain
    message)."""
    return [(".".join(str(p) for p in error["loc"]) or top, plain_message(error))
            for error in exc.errors()]
