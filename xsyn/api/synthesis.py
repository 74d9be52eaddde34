"""Typed synthesis request and response (the ``xsyn`` model), shared by the server, the in-process
runner and the SDK.

Coordinates: boxes are ``[x0, y0, x1, y1]`` pixels of the request image (x right, y down,
``x1``/``y1`` exclusive). Masks are COCO RLE at the request image's size.
"""

from __future__ import annotations

import math
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from xsyn.api.class_groups import ClassGroups
from xsyn.api.limits import MAX_CLASS_NAME, MAX_OBJECTS, MAX_STEPS
from xsyn.api.validation import check_box, validate


class AmgOverrides(BaseModel):
    """Optional overrides of automatic mask generation (idle regions, occluders)."""

    model_config = ConfigDict(extra="forbid")
    points_per_side: int | None = Field(None, ge=1, le=64)
    pred_iou_thresh: float | None = Field(None, ge=-1e9, le=1, allow_inf_nan=False)
    stability_score_thresh: float | None = Field(None, ge=-1e9, le=1, allow_inf_nan=False)
    box_nms_thresh: float | None = Field(None, gt=0, le=1, allow_inf_nan=False)


class SynthesisRequest(BaseModel):
    """Everything but the image.

    ``mode``: ``modify`` re-paints every annotated object (needs boxes); ``add`` paints one new
    object of a class chosen by area group into an idle region. ``bom_alpha = 0`` turns
    occlusion off; ``mps_divisions = 0`` prompts CAR's SAM with the box only; ``car = False``
    keeps the grounding boxes. ``idle_area_range`` is in pixels at 512 x 512 (reference code:
    500..30000); ``min_box_ratio`` defaults to the class-group file's. ``composite_background``
    pastes the input's pixels back outside the generated boxes and occluded cells (default: on
    for the tiny profiles, whose tiny VAE reconstructs a background only roughly; off otherwise,
    as in the paper). ``class_groups``: a shipped group file's name (default: the profile's,
    ``pidray`` for real checkpoints, ``phantom`` for the tiny profiles, whose weights know only
    the phantom classes) unless ``class_groups_data`` sends one.
    """

    model_config = ConfigDict(extra="forbid")
    boxes: list[list[float]] = Field(default_factory=list)
    class_names: list[str] = Field(default_factory=list)
    mode: Literal["modify", "add"] = "modify"
    seed: int = Field(0, ge=0, lt=2**31)
    steps: int = Field(50, ge=1, le=MAX_STEPS)
    guidance: float = Field(7.5, ge=0.0, le=50.0)
    eta: float = Field(0.0, ge=0.0, le=1.0)
    bom_alpha: float = Field(0.3, ge=0.0, le=1.0)
    car: bool = True
    mps_divisions: int = Field(4, ge=0, le=8)
    iou_threshold: float = Field(0.2, ge=0.0, le=1.0)
    idle_area_range: tuple[float, float] | None = None
    min_box_ratio: float | None = Field(None, ge=0.0, lt=1.0)
    class_groups: str | None = None
    class_groups_data: ClassGroups | None = None
    allow_unknown_classes: bool = False
    negative_prompt: str = Field("", max_length=300)
    composite_background: bool | None = None
    amg: AmgOverrides = Field(default_factory=AmgOverrides)
    return_attention_maps: bool = False
    return_mps_points: bool = False
    return_unoccluded_image: bool = False

    @field_validator("boxes")
    @classmethod
    def _boxes(cls, boxes):
        if len(boxes) > MAX_OBJECTS:
            raise ValueError(f"{len(boxes)} boxes, at most {MAX_OBJECTS}")
        for i, box in enumerate(boxes):
            check_box(box, f"box {i}")
        return boxes

    @field_validator("class_names")
    @classmethod
    def _names(cls, names):
        for i, name in enumerate(names):
            if not name.strip():
                raise ValueError(f"class name {i} is empty")
            if len(name) > MAX_CLASS_NAME:
                raise ValueError(f"class name {i} is longer than {MAX_CLASS_NAME} characters")
        return names

    @field_validator("guidance", "eta", "bom_alpha", "iou_threshold")
    @classmethod
    def _finite(cls, v):
        if not math.isfinite(v):
            raise ValueError("must be finite")
        return v

    @field_validator("idle_area_range")
    @classmethod
    def _range(cls, v):
        if v is not None and not (math.isfinite(v[0]) and math.isfinite(v[1]) and 0 <= v[0] < v[1]):
            raise ValueError(f"{list(v)} is not a range 0 <= min < max")
        return v

    @model_validator(mode="after")
    def _consistent(self):
        if len(self.boxes) != len(self.class_names):
            raise ValueError(f"boxes ({len(self.boxes)}) and class_names ({len(self.class_names)}) differ in length")
        if self.mode == "modify" and not self.boxes:
            raise ValueError("mode 'modify' needs at least one box")
        return self


class Item(BaseModel):
    """One object of the output annotation."""

    class_name: str
    box: list[float]
    grounding_box: list[float] | None = None
    mask: dict | None = None
    source: Literal["generated", "original"]
    status: str
    mps_points: list[list[int]] | None = None
    background_point: list[int] | None = None


class SynthesisResponse(BaseModel):
    """Everything but the images (sent as tensors / arrays alongside)."""

    mode: str
    seed: int
    status: str
    items: list[Item]
    occlusion: dict
    settings: dict
    timings_ms: dict[str, float]
    image_size: list[int]


def parse_request(payload: str | bytes | dict) -> SynthesisRequest:
    """Validate a request; raises InvalidArgument naming the field and the problem."""
    return validate(SynthesisRequest, payload)
