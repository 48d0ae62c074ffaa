"""`qlora train start`'s training-parameter options, one per parameter, generated from the JSON
schema of `TrainingParams` (`training_params.json`: a copy of the service's one definition,
`training/params.py`, rewritten by `make client-params` and checked by a test that fails when it
drifts). The client does not import the service's code: it installs alone.

An option not given is not sent, so the API applies its default (some are the model's)."""

from __future__ import annotations

import json
from functools import lru_cache
from importlib import resources
from typing import Any

import click


@lru_cache
def schema() -> dict[str, Any]:
    return json.loads(resources.files("qlora_client").joinpath("training_params.json").read_text())


def option_name(param: str) -> str:
    return "--" + param.replace("_", "-")


def _concrete(prop: dict[str, Any]) -> tuple[dict[str, Any], bool]:
    """The property's non-null schema, and whether null is allowed."""
    options = prop.get("anyOf")
    if options:
        concrete = [o for o in options if o.get("type") != "null"]
        return concrete[0], len(concrete) < len(options)
    return prop, False


class _CommaList(click.ParamType):
    name = "A,B"

    def __init__(self, choices: list[str] | None) -> None:
        self.choices = choices

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> list[str]:
        if isinstance(value, list):
            return value
        items = [v.strip() for v in str(value).split(",") if v.strip()]
        if self.choices:
            bad = [v for v in items if v not in self.choices]
            if bad:
                self.fail(f"{bad[0]!r} is not one of {', '.join(self.choices)}", param, ctx)
        if len(set(items)) != len(items):
            self.fail("a module is listed more than once", param, ctx)
        return items


def _type(concrete: dict[str, Any]) -> click.ParamType:
    kind = concrete.get("type")
    bounds = dict(min=concrete.get("minimum", concrete.get("exclusiveMinimum")),
                  max=concrete.get("maximum", concrete.get("exclusiveMaximum")),
                  min_open="exclusiveMinimum" in concrete, max_open="exclusiveMaximum" in concrete)
    if kind == "integer":
        return click.IntRange(**bounds)
    if kind == "number":
        return click.FloatRange(**bounds)
    if kind == "array":
        return _CommaList(concrete.get("items", {}).get("enum"))
    if concrete.get("enum"):
        return click.Choice(concrete["enum"])
    return click.STRING


def _shown_default(prop: dict[str, Any]) -> str:
    """` [default: X]`, or nothing where the description tells what null/empty means."""
    default = prop.get("default")
    if default is None or default == []:
        return ""
    return f" [default: {','.join(default) if isinstance(default, list) else default}]"


def options() -> list[click.Option]:
    """One click option per training parameter (`--lora-rank 8`, lists comma-separated)."""
    out = []
    for name, prop in schema()["properties"].items():
        concrete, _ = _concrete(prop)
        help_text = f"{prop.get('description', prop.get('title', name))}{_shown_default(prop)}"
        out.append(click.Option([option_name(name), name], type=_type(concrete), default=None,
                                help=help_text))
    return out


def from_options(values: dict[str, Any]) -> dict[str, Any]:
    """The `training_params` object of the options given (absent ones left to the API)."""
    return {name: values[name] for name in schema()["properties"] if values.get(name) is not None}
