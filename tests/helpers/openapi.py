"""Holding a memory API response to the schema the OpenAPI document gives for it."""

from __future__ import annotations

from typing import Any

from openapi_schema_validator import OAS30Validator

from wsgi_memopt.api.openapi import document

PREFIX = "/api/v1/memory"
DOC = document(PREFIX)


def schema_errors(method: str, path: str, status: int, body: Any) -> list[str]:
    """Where ``body`` departs from the schema DOC gives for (method, path, status)."""
    operation = DOC["paths"].get(path if path != PREFIX else PREFIX + "/", {}).get(method.lower())
    if operation is None:
        # No such path or method in the document (404, 405): the common error schema.
        schema: dict[str, Any] = {"$ref": "#/components/schemas/Error"}
    else:
        responses = operation["responses"]
        if str(status) not in responses:
            return [f"{method} {path}: status {status} is not documented"]
        schema = responses[str(status)]["content"]["application/json"]["schema"]
    validator = OAS30Validator({"allOf": [schema], "components": DOC["components"]})
    return [
        f"{list(error.absolute_path)}: {error.message}" for error in validator.iter_errors(body)
    ]
