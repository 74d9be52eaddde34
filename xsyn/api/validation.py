"""Validation helpers shared by the request schemas: boxes and one error format.

Coordinates: boxes are ``[x0, y0, x1, y1]`` pixels (x right, y down, ``x1``/``y1`` exclusive).
"""

from __future__ import annotations

import json
import math
from typing import TypeVar

from pydantic import BaseModel, ValidationError

from xsyn.errors import InvalidArgument

Model = TypeVar("Model", bound=BaseModel)


def check_box(box: list[float], label: str = "box") -> None:
    """ValueError unless ``box`` is four finite numbers ``[x0, y0, x1, y1]`` with x0 < x1, y0 < y1."""
    if len(box) != 4:
        raise ValueError(f"{label} has {len(box)} values, expected 4 (x0, y0, x1, y1)")
    if not all(math.isfinite(v) for v in box):
        raise ValueError(f"{label} {box} holds NaN or infinity")
    if box[2] <= box[0] or box[3] <= box[1]:
        raise ValueError(f"{label} {box} is empty or inverted (need x0 < x1, y0 < y1)")


def outside(box, width: int, height: int) -> bool:
    """True when an xyxy box leaves the ``width x height`` image."""
    return box[0] < 0 or box[1] < 0 or box[2] > width or box[3] > height


def load_json(payload: str | bytes | dict) -> dict:
    """A JSON object from text or bytes (a dict passes through); InvalidArgument otherwise."""
    if isinstance(payload, dict):
        return payload
    try:
        data = json.loads(payload)
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise InvalidArgument(f"request: not valid JSON ({type(exc).__name__}: {exc})") from None
    if not isinstance(data, dict):
        raise InvalidArgument(f"request: expected a JSON object, got {type(data).__name__}")
    return data


def validate(model: type[Model], payload: str | bytes | dict) -> Model:
    """``model`` from a JSON payload or dict; InvalidArgument naming the first bad field."""
    try:
        return model.model_validate(load_json(payload))
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "request"
        raise InvalidArgument(f"{where}: {first['msg']}") from None
