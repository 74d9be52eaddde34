"""One error model for the whole product, and the one table that maps it onto the wire.

Every error the product raises on purpose derives from :class:`XsynError` and carries a gRPC
status name. Messages name the field or file and the bad value, and say what was expected.

:data:`ERROR_TABLE` is the only place where a product error meets a status code. Each row:
the exception class, the gRPC status a client sees (and the SDK raises the class for), and the
Triton error code a Python-backend model answers with. Triton's Python backend can send only
eight codes (UNKNOWN, INTERNAL, NOT_FOUND, INVALID_ARG, UNAVAILABLE, UNSUPPORTED,
ALREADY_EXISTS, CANCELLED), so a status it cannot carry (RESOURCE_EXHAUSTED,
FAILED_PRECONDITION, DEADLINE_EXCEEDED) travels as the nearest code that keeps a client's retry
decision right. Every product error's message also starts with the tag ``[xsyn:STATUS]``: a BLS
caller sees every failed response as INTERNAL (the Python backend of Triton 2.51 drops the
code on BLS responses; ``tests/serving/test_error_table.py`` shows it), so the SDK and
:class:`~xsyn.ensembles.runner.BlsRunner` restore the exact status from the tag.

==========================  ===================  ==============
class                       gRPC status          Triton code
==========================  ===================  ==============
InvalidArgument             INVALID_ARGUMENT     INVALID_ARG
NotFound                    NOT_FOUND            NOT_FOUND
Unavailable                 UNAVAILABLE          UNAVAILABLE      (retried by the SDK)
Cancelled                   CANCELLED            CANCELLED
InternalError               INTERNAL             INTERNAL
ResourceExhausted           RESOURCE_EXHAUSTED   UNAVAILABLE      (tag: not retried)
FailedPrecondition          FAILED_PRECONDITION  UNSUPPORTED
DeadlineExceeded            DEADLINE_EXCEEDED    UNAVAILABLE      (tag: not retried)
==========================  ===================  ==============
"""

from __future__ import annotations

import re
from dataclasses import dataclass


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


class FailedPrecondition(XsynError):
    """The system is not in a state to run this (a runtime or device missing, a model not exported)."""

    status = "FAILED_PRECONDITION"


class MissingDependency(FailedPrecondition):
    """An optional runtime or package (TensorRT, CUDA, the ``server`` extra, ...) is not installed."""


class ResourceExhausted(XsynError):
    """The request does not fit the server's budget now (device memory, queue); not retried blindly."""

    status = "RESOURCE_EXHAUSTED"


class Unavailable(XsynError):
    """The server or a model is not reachable or not ready (retryable)."""

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


class ParityError(InternalError):
    """An exported graph disagrees with its PyTorch module beyond tolerance."""


@dataclass(frozen=True)
class StatusRow:
    """How one product status travels: the class and the Triton code name it is answered with."""

    error: type[XsynError]
    triton_code: str


#: gRPC status name -> how it is raised and carried. The one table (see the module docstring).
ERROR_TABLE: dict[str, StatusRow] = {
    "INVALID_ARGUMENT": StatusRow(InvalidArgument, "INVALID_ARG"),
    "NOT_FOUND": StatusRow(NotFound, "NOT_FOUND"),
    "UNAVAILABLE": StatusRow(Unavailable, "UNAVAILABLE"),
    "CANCELLED": StatusRow(Cancelled, "CANCELLED"),
    "INTERNAL": StatusRow(InternalError, "INTERNAL"),
    "RESOURCE_EXHAUSTED": StatusRow(ResourceExhausted, "UNAVAILABLE"),
    "FAILED_PRECONDITION": StatusRow(FailedPrecondition, "UNSUPPORTED"),
    "DEADLINE_EXCEEDED": StatusRow(DeadlineExceeded, "UNAVAILABLE"),
}

#: gRPC status name -> product exception class (clients map answers with it).
BY_STATUS: dict[str, type[XsynError]] = {status: row.error for status, row in ERROR_TABLE.items()}

#: Triton error code names as gRPC reports them (Triton's front end maps UNSUPPORTED to UNIMPLEMENTED).
_GRPC_OF_TRITON = {"INVALID_ARG": "INVALID_ARGUMENT", "UNSUPPORTED": "UNIMPLEMENTED"}
_TAG = re.compile(r"\[xsyn:([A-Z_]+)\] ?")
#: Triton's own answers while a model is restarting or the server is stopping. Triton sends them
#: as INTERNAL or NOT_FOUND, but each says "try again shortly": they map to UNAVAILABLE, which
#: the SDK retries (a stub that died and is being reloaded by the supervisor; a model unloading
#: for a drain or a heal; a scheduler that stopped because the server is exiting).
TRANSIENT_TRITON = re.compile(r"Stub process .*is not healthy|has no available versions|is not at ready state|"
                              r"Model '[^']+' is not ready|Server is stopping|Server not ready|Server exiting")


def wire_message(exc: BaseException) -> tuple[str, str]:
    """(Triton code name, message) for answering ``exc`` from a Python-backend model.

    A product error keeps its message behind its ``[xsyn:STATUS]`` tag; anything else is an
    internal error whose message names the exception type.
    """
    if not isinstance(exc, XsynError):
        return "INTERNAL", f"internal error: {type(exc).__name__}: {exc}"
    status = exc.status if exc.status in ERROR_TABLE else "INTERNAL"
    return ERROR_TABLE[status].triton_code, f"[xsyn:{status}] {_TAG.sub('', str(exc))}"


def error_from_wire(status: str, message: str) -> XsynError:
    """The product exception for an answer: a ``[xsyn:STATUS]`` tag wins over the code it travelled as.

    ``status``: a gRPC status name (``INVALID_ARGUMENT``, ``StatusCode.NOT_FOUND``) or a Triton
    code name (``INVALID_ARG``); unknown ones give :class:`InternalError`.
    """
    status = status.replace("StatusCode.", "")
    status = _GRPC_OF_TRITON.get(status, status)
    tag = _TAG.search(message)
    if tag and tag.group(1) in ERROR_TABLE:
        status = tag.group(1)
        message = _TAG.sub("", message, count=1)
    elif TRANSIENT_TRITON.search(message):
        status = "UNAVAILABLE"
    return BY_STATUS.get(status, InternalError)(message)
