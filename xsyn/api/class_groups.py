"""Class groups for Xsyn-A: classes grouped by mean annotated area (paper Table I), as data.

A group file (``xsyn/data/class_groups/<name>.json`` or user-supplied, same schema)::

    {"dataset": "PIDray", "area_reference_size": 512, "min_box_ratio": 0.001,
     "groups": [{"min_area": 0, "max_area": 10000, "classes": ["Lighter", "Bullet"]}, ...]}

Areas are box areas in pixels at ``area_reference_size`` x ``area_reference_size``;
``max_area: null`` means unbounded; a group covers ``[min_area, max_area)``.
"""

from __future__ import annotations

import json
from importlib import resources

import numpy as np
from pydantic import BaseModel, Field, field_validator

from xsyn.errors import InvalidArgument


class AreaGroup(BaseModel):
    min_area: float = Field(ge=0)
    max_area: float | None = None
    classes: list[str] = Field(min_length=1)


class ClassGroups(BaseModel):
    dataset: str
    area_reference_size: int = Field(512, gt=0)
    min_box_ratio: float = Field(0.0, ge=0, lt=1)
    groups: list[AreaGroup] = Field(min_length=1)
    source: str = ""

    @field_validator("groups")
    @classmethod
    def _ordered(cls, groups):
        for a, b in zip(groups, groups[1:]):
            if a.max_area is None or a.max_area > b.min_area:
                raise ValueError("groups must be ordered by area and not overlap")
        return groups

    @property
    def classes(self) -> list[str]:
        return [c for g in self.groups for c in g.classes]

    def group_for_area(self, area: float, image_size: int) -> AreaGroup | None:
        """The group whose range holds ``area`` (pixels at ``image_size``), rescaled to the reference size."""
        ref = area * (self.area_reference_size / image_size) ** 2
        for g in self.groups:
            if g.min_area <= ref and (g.max_area is None or ref < g.max_area):
                return g
        return None

    def pick_class(self, area: float, image_size: int, rng: np.random.Generator) -> str | None:
        group = self.group_for_area(area, image_size)
        return None if group is None else group.classes[int(rng.integers(len(group.classes)))]


def shipped_names() -> list[str]:
    folder = resources.files("xsyn") / "data" / "class_groups"
    return sorted(e.name[:-5] for e in folder.iterdir() if e.name.endswith(".json"))


def load_class_groups(name: str) -> ClassGroups:
    """A shipped group file by name (``pidray``, ``opixray``, ``hixray``, ``phantom``)."""
    if name not in shipped_names():
        raise InvalidArgument(f"class_groups: unknown {name!r}; shipped: {shipped_names()} (or send class_groups_data)")
    text = (resources.files("xsyn") / "data" / "class_groups" / f"{name}.json").read_text()
    return ClassGroups(**json.loads(text))
