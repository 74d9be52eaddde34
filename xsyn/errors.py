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


class DeadlineExceeded(XsynError):
    """The call did not finish within its timeout."""

    status = "DEADLINE_EXCEEDED"


class Cancelled(XsynError):
    """The client cancelled the request (synthesis stops between denoising steps)."""

    status = "CANCELLED"


class InternalError(XsynError):
    """The server failed for a reason that is not the request's fault."""

    status = "INTERNAL"


#: The one table from gRPC status code names to the product's exceptions (clients map answers
#: with it; the server answers each exception with its ``status``).
BY_STATUS: dict[str, type[XsynError]] = {
    cls.status: cls for cls in (InvalidArgument, NotFound, Unavailable, DeadlineExceeded, Cancelled, InternalError)
}
