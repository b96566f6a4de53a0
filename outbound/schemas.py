"""The JSON Schemas the gateway ships beside this package (``schema/<name>.json``), and how a
document is checked against one: the problems name the field and the rule it breaks, never the
value (documents come from outside: partners, destinations)."""

from __future__ import annotations

import functools
import json
import re
from importlib import resources
from typing import Any

_MISSING = re.compile(r"'([a-z_]+)' is a required property")


def load(name: str) -> dict[str, Any]:
    """The schema ``name`` (``referral-v1``, ``outcome-v1``), read from the package."""
    text = (resources.files("outbound") / "schema" / f"{name}.json").read_text("utf-8")
    loaded: dict[str, Any] = json.loads(text)
    return loaded


@functools.cache
def _validator(name: str) -> Any:  # a Draft202012Validator
    # jsonschema (2 MiB with its registry) loads with the first document checked.
    from jsonschema import Draft202012Validator  # type: ignore[import-untyped]

    return Draft202012Validator(load(name))


def problems(name: str, document: object) -> list[str]:
    """Why ``document`` does not satisfy schema ``name`` (empty: it does), sorted; each is
    ``field/path: rule``, with a missing field named from the schema, never from the value."""
    found = []
    for error in _validator(name).iter_errors(document):
        where = "/".join(str(p) for p in error.absolute_path)
        if error.validator == "required" and (missing := _MISSING.match(error.message)):
            where = "/".join(filter(None, [where, missing.group(1)]))
        found.append(f"{where or '(document)'}: {error.validator}")
    return sorted(found)
