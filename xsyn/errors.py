"""One error model for the whole product.

Every error the product raises on purpose derives from :class:`XsynError` and carries a gRPC
status name. Messages name the field or file and the bad value, and say what was expected.
"""

from __future__ import annotations


class XsynError(Exception):
    """Root of the product's errors. ``status`` is the gRPC status code name."""

    status = "INTERNAL"


class InvalidArgument(XsynError):
    """A request or command-line value is malformed or out of range."""

    status = "INVALID_ARGUMENT"


class NotFound(XsynError):
    """A referenced object (file, cached embedding key, model) does not exist."""

    status = "NOT_FOUND"


class CheckpointError(InvalidArgument):
    """A checkpoint file or folder is missing, partial, truncated or of another variant."""


class MissingDependency(XsynError):
    """An optional runtime (TensorRT, CUDA provider, ...) is not installed."""

    status = "FAILED_PRECONDITION"


class ParityError(XsynError):
    """An exported graph disagrees with its PyTorch module beyond tolerance."""

    status = "INTERNAL"


class Unavailable(XsynError):
    """The server or a model is not reachable or not ready."""

    status = "UNAVAILABLE"


#: gRPC status code name -> numeric code (grpc.StatusCode values), the one mapping table.
GRPC_CODES = {
    "OK": 0,
    "CANCELLED": 1,
    "INVALID_ARGUMENT": 3,
    "DEADLINE_EXCEEDED": 4,
    "NOT_FOUND": 5,
    "FAILED_PRECONDITION": 9,
    "INTERNAL": 13,
    "UNAVAILABLE": 14,
}
