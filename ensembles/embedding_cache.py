"""Image embeddings kept on the server between clicks: an LRU cache with a byte budget.

Keys are content hashes of the image (SHA-256 of shape + pixels), so the same image always
maps to the same key and the encoder runs once per image while its entry lives.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

from xsyn.errors import NotFound


def image_key(image: np.ndarray) -> str:
    """Content hash of a uint8 ``[H, W, 3]`` image."""
    h = hashlib.sha256(f"{image.shape}".encode())
    h.update(np.ascontiguousarray(image).data)
    return h.hexdigest()[:32]


@dataclass
class CachedImage:
    """What a click needs: the image itself (for APG), its SAM embedding, and mask tokens."""

    image: np.ndarray
    embedding: np.ndarray
    mask_tokens: np.ndarray
    mode: str

    @property
    def nbytes(self) -> int:
        return self.image.nbytes + self.embedding.nbytes + self.mask_tokens.nbytes


class EmbeddingCache:
    """Thread-safe LRU over :class:`CachedImage` entries whose total ``nbytes`` stays <= ``budget``."""

    def __init__(self, budget_bytes: int) -> None:
        self.budget = int(budget_bytes)
        self._entries: OrderedDict[str, CachedImage] = OrderedDict()
        self._lock = threading.Lock()
        self.bytes = 0
        self.evictions = 0

    def put(self, key: str, entry: CachedImage) -> None:
        with self._lock:
            if key in self._entries:
                self.bytes -= self._entries.pop(key).nbytes
            self._entries[key] = entry
            self.bytes += entry.nbytes
            while self.bytes > self.budget and len(self._entries) > 1:
                _, old = self._entries.popitem(last=False)
                self.bytes -= old.nbytes
                self.evictions += 1

    def get(self, key: str) -> CachedImage:
        """The entry (now most recently used), or NotFound naming the key."""
        with self._lock:
            if key not in self._entries:
                raise NotFound(f"key: {key!r} is not cached (never embedded, or evicted); embed the image again")
            self._entries.move_to_end(key)
            return self._entries[key]

    def __contains__(self, key: str) -> bool:
        with self._lock:
            return key in self._entries

    def __len__(self) -> int:
        return len(self._entries)
