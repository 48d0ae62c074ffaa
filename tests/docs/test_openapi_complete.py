"""Every operation of the API is documented the way the API reference needs it: a readable id,
a summary and a description, an example of its request and of its answer, and each error it
can answer with an example; every tag has a description; every example matches its schema.

A failure lists, per operation, exactly what to add to its route decorator (helpers in
`api/routers/openapi_doc.py`); then run `make docs`."""

from __future__ import annotations

import re
from typing import Any

import jsonschema
import pytest
from referencing import Registry, Resource

JSON = "application/json"
METHODS = ("get", "post", "put", "patch", "delete")
HOW = "(helpers: api/routers/openapi_doc.py; then run `make docs`)"


def _operations(spec: dict[str, Any]):
    for path, item in spec["paths"].items():
        for method in METHODS:
            if method in item:
                yield f"{method.upper()} {path}", item[method]


def _has_example(media: dict[str, Any] | None) -> bool:
    return bool(media) and ("example" in media or bool(media.get("examples")))


def _problems(where: str, op: dict[str, Any]) -> list[str]:
    problems = []
    op_id = op.get("operationId", "")
    if not re.fullmatch(r"[a-z][A-Za-z0-9]*", op_id):
        problems.append(f"operation id {op_id!r} is not camelCase: name the route function like "
                        "`start_training` (-> startTraining) or set operation_id=\"startTraining\"")
    if not op.get("summary"):
        problems.append('no summary: add summary="..." (one line) to the decorator')
    if not op.get("description"):
        problems.append('no description: add description="..." (what it does, when to call it) to the decorator')
    if "requestBody" in op and not _has_example(op["requestBody"].get("content", {}).get(JSON)):
        problems.append("request body without an example: add openapi_extra=body_example({...}) "
                        "(or body_example(RequestModel) when the model has `examples`)")
    responses = op.get("responses", {})
    successes = [code for code in responses if code.startswith("2")]
    for code in successes:
        content = responses[code].get("content") or {}
        if any(not _has_example(media) for media in content.values()):
            problems.append(f"response {code} without an example: add responses={{{code}: ok_example({{...}})}}")
    errors = [code for code in responses if code[0] in "45"]
    for code in errors:
        if not responses[code].get("description"):
            problems.append(f"error {code} without a description: use error(description, detail)")
        if not _has_example(responses[code].get("content", {}).get(JSON)):
            problems.append(f"error {code} without an example: add responses={{{code}: error(\"when\", \"the detail\")}}")
    if op.get("security") and "401" not in responses:
        problems.append("needs a token but documents no 401: add **UNAUTHORIZED to its responses "
                        "(or to its router's)")
    if any(p.get("in") == "path" for p in op.get("parameters", [])) and "404" not in responses:
        problems.append("has a path parameter but documents no 404: add responses={404: error(...)}")
    if "requestBody" in op and not ({"400", "422"} & set(responses)):
        problems.append("has a body but documents no validation error (400 or 422)")
    return [f"{where} ({op_id or 'no id'}): {p}" for p in problems]


def test_every_operation_is_documented(openapi):
    problems = [p for where, op in _operations(openapi) for p in _problems(where, op)]
    assert not problems, f"{len(problems)} things to add {HOW}:\n" + "\n".join(problems)


def test_operation_ids_are_unique_and_read_like_the_action(openapi):
    ids = [op["operationId"] for _, op in _operations(openapi)]
    assert len(ids) == len(set(ids)), sorted(i for i in ids if ids.count(i) > 1)
    by_route = {where: op["operationId"] for where, op in _operations(openapi)}
    assert by_route["POST /v1/trainings"] == "startTraining"
    assert by_route["GET /v1/trainings"] == "listTrainings"
    assert by_route["GET /v1/auth/me"] == "getCurrentUser"
    assert by_route["GET /v1/models/allowed"] == "listModels"


def test_every_tag_has_a_description(openapi):
    described = {t["name"]: t.get("description") for t in openapi.get("tags", [])}
    used = {tag for _, op in _operations(openapi) for tag in op.get("tags", [])}
    missing = sorted(tag for tag in used if not described.get(tag))
    assert not missing, (f"tags without a description: {missing}: add {{'name': ..., 'description': ...}} "
                         "to OPENAPI_TAGS in api/main.py, then run `make docs`")
    untagged = [where for where, op in _operations(openapi) if not op.get("tags")]
    assert not untagged, f"operations without a tag (the API reference groups by tag): {untagged}"


def _examples(spec: dict[str, Any]):
    """(where, schema, example) of every request and response example."""
    for where, op in _operations(spec):
        media = op.get("requestBody", {}).get("content", {}).get(JSON, {})
        if "example" in media:
            yield f"{where} request", media["schema"], media["example"]
        for code, response in op.get("responses", {}).items():
            media = response.get("content", {}).get(JSON, {})
            if "example" in media and "schema" in media:
                yield f"{where} {code}", media["schema"], media["example"]


def test_every_example_matches_its_schema(openapi):
    registry = Registry().with_resource("urn:spec", Resource.from_contents(
        {"components": openapi["components"]}, default_specification=jsonschema.Draft202012Validator.META_SCHEMA
        and __import__("referencing.jsonschema").jsonschema.DRAFT202012))
    failures, checked = [], 0
    for where, schema, example in _examples(openapi):
        schema = {**schema, "$ref": "urn:spec" + schema["$ref"]} if "$ref" in schema else _rebase(schema)
        validator = jsonschema.Draft202012Validator(schema, registry=registry,
                                                    format_checker=jsonschema.FormatChecker())
        errors = sorted(validator.iter_errors(example), key=lambda e: list(e.absolute_path))
        checked += 1
        if errors:
            failures.append(f"{where}: {errors[0].json_path}: {errors[0].message}")
    assert checked >= 20, checked
    assert not failures, "examples that do not match their schema:\n" + "\n".join(failures)


def _rebase(node: Any) -> Any:
    """`#/components/...` references made absolute (`urn:spec#/components/...`)."""
    if isinstance(node, dict):
        return {k: ("urn:spec" + v if k == "$ref" and v.startswith("#/") else _rebase(v)) for k, v in node.items()}
    if isinstance(node, list):
        return [_rebase(v) for v in node]
    return node


@pytest.mark.parametrize("broken, expected", [
    ({"summary": ""}, "no summary"),
    ({"description": None}, "no description"),
    ({"operationId": "start_training_v1_trainings_post"}, "not camelCase"),
])
def test_the_check_names_what_is_missing(openapi, broken, expected):
    op = dict(openapi["paths"]["/v1/trainings"]["post"], **broken)
    problems = _problems("POST /v1/trainings", op)
    assert any(expected in p for p in problems), problems
    bare = {"operationId": "startTraining", "summary": "s", "description": "d", "security": [{"HTTPBearer": []}],
            "requestBody": {"content": {JSON: {"schema": {}}}},
            "responses": {"202": {"content": {JSON: {"schema": {}}}}, "400": {"description": "bad"}}}
    text = "\n".join(_problems("POST /v1/x", bare))
    for needed in ("body_example(", "ok_example(", "error(", "UNAUTHORIZED"):
        assert needed in text, text
