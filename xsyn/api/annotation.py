"""Typed annotation requests and responses (the ``apsam`` model), shared by server and SDK.

Coordinates: points ``[x, y]`` and boxes ``[x0, y0, x1, y1]`` in pixels of the embedded image;
masks come back at that image's size as COCO RLE and polygons (``[x0, y0, x1, y1, ...]``).
"""

from __future__ import annotations

import math
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from xsyn.api.limits import MAX_POINTS
from xsyn.api.validation import check_box, load_json, validate
from xsyn.errors import InvalidArgument


class SegmentRequest(BaseModel):
    """One click (or several points and/or a box) on an embedded image."""

    model_config = ConfigDict(extra="forbid")
    op: Literal["segment"] = "segment"
    key: str = Field(min_length=1, max_length=64)
    points: list[list[float]] = Field(default_factory=list)
    labels: list[int] = Field(default_factory=list)
    box: list[float] | None = None
    multimask: bool = False
    adaptive_points: bool = True
    seed: int = Field(0, ge=0, lt=2**31)
    #: ``auto``: the model's own tokens (APSAM: from the image's energy CNN; SAM: learned);
    #: ``sam``: SAM's learned mask tokens (a plain SAM export only; APSAM has none).
    tokens: Literal["auto", "sam"] = "auto"

    @field_validator("points")
    @classmethod
    def _points(cls, points):
        if len(points) > MAX_POINTS:
            raise ValueError(f"{len(points)} points, at most {MAX_POINTS}")
        for i, p in enumerate(points):
            if len(p) != 2 or not all(math.isfinite(v) for v in p):
                raise ValueError(f"point {i} {p} must be two finite numbers [x, y]")
        return points

    @field_validator("labels")
    @classmethod
    def _labels(cls, labels):
        bad = [v for v in labels if v not in (0, 1)]
        if bad:
            raise ValueError(f"labels {bad} not in SAM's set (1 = foreground, 0 = background)")
        return labels

    @field_validator("box")
    @classmethod
    def _box(cls, box):
        if box is not None:
            check_box(box)
        return box

    @model_validator(mode="after")
    def _prompt(self):
        if len(self.points) != len(self.labels):
            raise ValueError(f"points ({len(self.points)}) and labels ({len(self.labels)}) differ in length")
        if not self.points and self.box is None:
            raise ValueError("give at least one point or a box")
        return self


class EmbedRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    op: Literal["embed"] = "embed"


class GenerateRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    op: Literal["generate"] = "generate"
    key: str = Field(min_length=1, max_length=64)
    points_per_side: int | None = Field(None, ge=1, le=64)
    pred_iou_thresh: float | None = Field(None, ge=-1e9, le=1, allow_inf_nan=False)
    stability_score_thresh: float | None = Field(None, ge=-1e9, le=1, allow_inf_nan=False)


class MaskOut(BaseModel):
    rle: dict
    polygons: list[list[float]]
    score: float
    box: list[float]
    area: int


class AnnotationResponse(BaseModel):
    op: str
    key: str
    mode: str
    image_size: list[int]
    cached: bool = False
    masks: list[MaskOut] = Field(default_factory=list)
    points: list[list[float]] = Field(default_factory=list)
    labels: list[int] = Field(default_factory=list)
    adaptive_points: list[list[int]] = Field(default_factory=list)


REQUESTS = {"embed": EmbedRequest, "segment": SegmentRequest, "generate": GenerateRequest}


def parse_annotation_request(payload: bytes | str | dict) -> EmbedRequest | SegmentRequest | GenerateRequest:
    """Validate an embed / segment / generate request; InvalidArgument names the field."""
    data = load_json(payload)
    op = data.get("op")
    if op not in REQUESTS:
        raise InvalidArgument(f"op: {op!r}, expected one of {sorted(REQUESTS)}")
    return validate(REQUESTS[op], data)
