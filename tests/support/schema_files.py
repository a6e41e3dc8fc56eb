"""Validate documents against the committed schemas/ tree, relative ``$ref``s resolved inside it."""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator
from referencing import Registry, Resource

SCHEMAS = Path(__file__).resolve().parents[2] / "schemas"
BASE = "file:///schemas/"


@functools.cache
def registry() -> Registry[Any]:
    resources = [
        (BASE + path.relative_to(SCHEMAS).as_posix(), Resource.from_contents(json.loads(path.read_text())))
        for path in sorted(SCHEMAS.rglob("*.json"))
        if path.name != "index.json"
    ]
    return Registry().with_resources(resources).crawl()


@functools.cache
def validator(rel: str) -> Draft202012Validator:
    """A validator for ``schemas/<rel>`` (e.g. ``events/io.livekit.signal.join.v1.json``)."""
    return Draft202012Validator({"$ref": BASE + rel}, registry=registry())


def problems(rel: str, document: object) -> list[str]:
    return [f"{list(e.path)}: {e.message}" for e in validator(rel).iter_errors(document)]
