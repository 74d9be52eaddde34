"""What the two Python-backend pipeline models (``xsyn``, ``apsam``) share: start-up from their
:class:`~xsyn.export.specs.PipelineSpec`, request reading, and per-request error answers.

A subclass names its ``spec``, builds its orchestrator in :meth:`PipelineModel.setup` and turns
one request into output arrays in :meth:`PipelineModel.handle`. Every error is answered on its
own request with the status from :data:`xsyn.errors.ERROR_TABLE`; the stub never dies.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from xsyn.errors import InvalidArgument
from xsyn.export.specs import PipelineSpec
from xsyn.serving.triton_errors import error_response
from xsyn.serving.stub import prepare_stub
from xsyn.settings import ServerSettings


class PipelineModel:
    """Base of a pipeline model's ``TritonPythonModel``."""

    spec: PipelineSpec
    #: whether it runs the synthesis stages (their imports are paid at start-up)
    synthesizes: bool = True

    def initialize(self, args: dict) -> None:
        import triton_python_backend_utils as pb

        from xsyn.ensembles.assets import PipelineAssets
        from xsyn.ensembles.runner import BlsRunner
        from xsyn.ensembles.synthesis import preload

        self.pb = pb
        preload(self.synthesizes)
        self.settings = ServerSettings.for_model(args)
        prepare_stub(self.settings)
        self.assets = PipelineAssets.load(Path(args["model_repository"]).parent, self.spec.needs)
        device = self.settings.device if self.settings.runtime == "torch" else "cpu"
        self.runner = BlsRunner(pb, self.assets.specs, device)
        self.setup()

    def setup(self) -> None:
        """Build the orchestrator from ``self.runner``, ``self.assets`` and ``self.settings``."""
        raise NotImplementedError

    def handle(self, request) -> dict[str, np.ndarray]:
        """One request -> ``{output name: array}`` (BYTES outputs as object arrays)."""
        raise NotImplementedError

    def execute(self, requests):
        return [self._answer(request) for request in requests]

    def _answer(self, request):
        pb = self.pb
        try:
            outputs = self.handle(request)
        except Exception as exc:  # answered per request; the stub stays up
            return error_response(pb, exc)
        return pb.InferenceResponse(output_tensors=[pb.Tensor(name, np.ascontiguousarray(value))
                                                    for name, value in outputs.items()])

    # ------------------------------------------------------------------ request reading

    def request_json(self, request) -> bytes:
        """The ``request`` input's bytes (InvalidArgument when it is missing)."""
        payload = self.pb.get_input_tensor_by_name(request, "request")
        if payload is None:
            raise InvalidArgument(f"request: missing (JSON; see the {self.spec.name} model's request schema)")
        values = payload.as_numpy().reshape(-1)
        if values.size != 1:
            raise InvalidArgument(f"request: {values.size} elements, expected one JSON document")
        return bytes(values[0])

    def read_image(self, request) -> np.ndarray:
        """The request's image from ``image`` (uint8 array) or ``image_bytes`` (encoded), refused
        from its tensor shape or its PNG/JPEG header when over ``max_image_pixels``."""
        from xsyn.ensembles.images import check_image, check_image_shape, decode_image

        array = self.pb.get_input_tensor_by_name(request, "image")
        encoded = self.pb.get_input_tensor_by_name(request, "image_bytes")
        if (array is None) == (encoded is None):
            raise InvalidArgument("image: send exactly one of `image` (uint8 [H, W, 3]) and `image_bytes` (PNG/JPEG)")
        limit = self.settings.max_image_pixels
        if array is not None:
            check_image_shape(array.shape(), "uint8", limit)  # Triton has checked the dtype
            return check_image(array.as_numpy(), limit)
        payload = encoded.as_numpy().reshape(-1)
        if payload.size != 1:
            raise InvalidArgument(f"image_bytes: {payload.size} elements, expected one encoded image")
        return check_image(decode_image(bytes(payload[0]), limit), limit)


def json_output(model) -> np.ndarray:
    """A pydantic model as a BYTES ``[1]`` output."""
    return np.array([model.model_dump_json().encode()], dtype=np.object_)
