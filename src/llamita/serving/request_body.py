"""Reading a JSON request body and its fields with errors that name the field."""

from __future__ import annotations

import json
from typing import Any

from fastapi import Request

from llamita.serving.errors import APIError

_KIND_NAMES = {
    str: "a string",
    bool: "true or false",
    int: "an integer",
    float: "a number",
    list: "a list",
    dict: "an object",
}


async def read_json_object(request: Request) -> dict[str, Any]:
    """The body as a JSON object; 400 for a body that is not UTF-8, not JSON, or not an object."""
    raw = await request.body()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise APIError(400, f"the request body is not UTF-8 text (byte {e.start})") from None
    try:
        body = json.loads(text)
    except json.JSONDecodeError as e:
        raise APIError(400, f"the request body is not valid JSON: {e}") from None
    except RecursionError:  # `[[[[...]]]]` deeper than the parser's stack
        raise APIError(400, "the request body nests JSON arrays or objects too deeply") from None
    if not isinstance(body, dict):
        raise APIError(400, "the request body must be a JSON object")
    return body


def field(
    body: dict[str, Any],
    name: str,
    kind: type | tuple[type, ...],
    default: Any = None,
    *,
    required: bool = False,
    where: str = "",
) -> Any:
    """body[name] checked against `kind` (None counts as absent); 400 naming the field if it is
    missing but required, or of another type. An int is accepted for a float, a bool never for
    a number."""
    value = body.get(name)
    param = f"{where}{name}"
    if value is None:
        if required:
            raise APIError(400, f"'{param}' is required", param=param)
        return default
    kinds = kind if isinstance(kind, tuple) else (kind,)
    ok = any(isinstance(value, k) for k in kinds) or (float in kinds and isinstance(value, int))
    if isinstance(value, bool) and bool not in kinds:
        ok = False
    if not ok:
        expected = " or ".join(_KIND_NAMES.get(k, k.__name__) for k in kinds)
        raise APIError(400, f"'{param}' must be {expected}, got {json.dumps(value)[:80]}", param=param)
    return value
