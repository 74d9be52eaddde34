"""numpy arrays <-> Triton gRPC tensors, for the SDK and the server's own raw clients.

Triton types come from ``tritonclient.utils.np_to_triton_dtype``; a dtype Triton has no type for
is refused (InvalidArgument), never relabelled.
"""

from __future__ import annotations

import numpy as np

from xsyn.errors import InvalidArgument


def bytes_input(name: str, data: bytes):
    """A BYTES ``[1]`` gRPC input."""
    import tritonclient.grpc as grpcclient

    tensor = grpcclient.InferInput(name, [1], "BYTES")
    tensor.set_data_from_numpy(np.array([data], dtype=np.object_))
    return tensor


def array_input(name: str, array: np.ndarray):
    """A gRPC input from a numpy array; its dtype decides the Triton type."""
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import np_to_triton_dtype

    array = np.ascontiguousarray(array)
    triton_type = np_to_triton_dtype(array.dtype)
    if triton_type is None:
        raise InvalidArgument(f"{name}: numpy dtype {array.dtype} has no Triton type")
    tensor = grpcclient.InferInput(name, list(array.shape), triton_type)
    tensor.set_data_from_numpy(array)
    return tensor


def image_input(image: np.ndarray | bytes):
    """``image_bytes`` for encoded images (PNG/JPEG bytes), ``image`` for uint8 ``[H, W, 3]`` arrays."""
    if isinstance(image, (bytes, bytearray)):
        return bytes_input("image_bytes", bytes(image))
    return array_input("image", image)


def output_arrays(result) -> dict[str, np.ndarray]:
    """Every output of a ``tritonclient`` result, by name."""
    return {out["name"]: result.as_numpy(out["name"]) for out in result.get_response(as_json=True)["outputs"]}
