"""Triton Python-backend model ``apsam``: one-click annotation over BLS calls to the SAM graphs.

inputs
    ``request`` BYTES ``[1]``: JSON with ``op`` = ``embed`` | ``segment`` | ``generate``
    (see :mod:`xsyn.ensembles.annotation`); ``image`` UINT8 ``[H, W, 3]`` or ``image_bytes``
    BYTES ``[1]`` for ``embed``; ``mask_input`` FP32 ``[1, 1, 4E, 4E]`` optional for ``segment``.
outputs
    ``response`` BYTES ``[1]`` (:class:`~xsyn.ensembles.annotation.AnnotationResponse` JSON);
    ``low_res_mask`` FP32 ``[1, 1, 4E, 4E]`` after ``segment`` (empty otherwise).

One instance holds the embedding cache (LRU, byte budget from the ``cache_bytes`` parameter or
``XSYN_APSAM_CACHE_BYTES``); an unknown or evicted key answers NOT_FOUND.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from xsyn.errors import InvalidArgument
from xsyn.serving.synthesis_model import read_image, triton_error

DEFAULT_CACHE_BYTES = 256 * 1024 * 1024


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        import json

        import triton_python_backend_utils as pb

        from xsyn.ensembles.annotation import Annotator
        from xsyn.ensembles.assets import ANNOTATION_GRAPHS, PipelineAssets
        from xsyn.ensembles.embedding_cache import EmbeddingCache
        from xsyn.ensembles.runner import BlsRunner
        from xsyn.ensembles.synthesis import preload

        self.pb = pb
        preload()
        config = json.loads(args["model_config"])
        budget = config.get("parameters", {}).get("cache_bytes", {}).get("string_value", DEFAULT_CACHE_BYTES)
        budget = int(os.environ.get("XSYN_APSAM_CACHE_BYTES", budget))
        assets = PipelineAssets.load(Path(args["model_repository"]).parent, ANNOTATION_GRAPHS)
        self.annotator = Annotator(BlsRunner(pb, assets.specs), assets, EmbeddingCache(budget))

    def execute(self, requests):
        return [self._one(request) for request in requests]

    def _one(self, request):
        from xsyn.ensembles.annotation import parse_annotation_request

        pb = self.pb
        low = np.zeros((0, 1, 1, 1), np.float32)
        try:
            payload = pb.get_input_tensor_by_name(request, "request")
            if payload is None:
                raise InvalidArgument("request: missing (JSON with op embed / segment / generate)")
            req = parse_annotation_request(bytes(payload.as_numpy().reshape(-1)[0]))
            if req.op == "embed":
                response = self.annotator.embed(read_image(pb, request))
            elif req.op == "segment":
                tensor = pb.get_input_tensor_by_name(request, "mask_input")
                response, low = self.annotator.segment(req, tensor.as_numpy() if tensor is not None else None)
            else:
                response = self.annotator.generate(req)
        except Exception as exc:  # answered per request; the stub stays up
            return pb.InferenceResponse(output_tensors=[], error=triton_error(pb, exc))
        return pb.InferenceResponse(output_tensors=[
            pb.Tensor("response", np.array([response.model_dump_json().encode()], dtype=np.object_)),
            pb.Tensor("low_res_mask", np.ascontiguousarray(low)),
        ])
