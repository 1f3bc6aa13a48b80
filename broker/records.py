"""The one way a record dataclass becomes a Redis hash (its ``to_redis``): one field per attribute, as text."""

from __future__ import annotations

import dataclasses
import enum
import json


def hash_fields(record) -> dict[str, str]:
    """Every attribute that is not None, as text: enums by value, dicts as JSON, booleans as 1/0, tuples
    comma-separated."""
    out = {}
    for item in dataclasses.fields(record):
        value = getattr(record, item.name)
        if value is None:
            continue
        if isinstance(value, enum.Enum):
            value = value.value
        elif isinstance(value, dict):
            value = json.dumps(value)
        elif isinstance(value, bool):
            value = int(value)
        elif isinstance(value, tuple):
            value = ",".join(value)
        out[item.name] = str(value)
    return out
