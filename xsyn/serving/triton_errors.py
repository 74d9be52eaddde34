"""Product errors as Triton Python-backend answers, through :data:`xsyn.errors.ERROR_TABLE`."""

from __future__ import annotations

from xsyn.errors import wire_message


def triton_error(pb, exc: BaseException):
    """``pb_utils.TritonError`` for any exception, with the code and message of the error table."""
    code, message = wire_message(exc)
    return pb.TritonError(message, getattr(pb.TritonError, code))


def error_response(pb, exc: BaseException):
    """An ``InferenceResponse`` that answers one request with ``exc``."""
    return pb.InferenceResponse(output_tensors=[], error=triton_error(pb, exc))
