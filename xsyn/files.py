"""File writes that never leave a half-written file under the final name."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path


def write_atomic(path: Path, data: bytes) -> None:
    """Write to a temporary file in the same folder (mode 0644), then rename over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix="." + path.name + ".", dir=path.parent)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def write_json_atomic(path: Path, data) -> None:
    """:func:`write_atomic` of indented, key-sorted JSON."""
    write_atomic(path, json.dumps(data, indent=2, sort_keys=True).encode())
