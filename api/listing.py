"""OpenAI list endpoints' shared parts: the ``limit`` parameter and the list object."""

from __future__ import annotations

from api.errors import bad_request


def limit_param(query, *, default: int, maximum: int) -> int:
    text = query.get("limit", str(default))
    if not text.isdigit() or not 1 <= int(text) <= maximum:
        raise bad_request(f"limit must be an integer between 1 and {maximum}", param="limit", code="invalid_value")
    return int(text)


def list_object(data: list[dict], has_more: bool) -> dict:
    return {"object": "list", "data": data, "first_id": data[0]["id"] if data else None,
            "last_id": data[-1]["id"] if data else None, "has_more": has_more}
