"""Triton Python-backend model ``apsam``: one-click annotation over BLS calls to the SAM graphs.

Tensors: :data:`xsyn.export.pipelines.APSAM`; requests: :mod:`xsyn.api.annotation`.
One instance holds the embedding cache (LRU, byte budget ``apsam_cache_bytes`` of
:class:`~xsyn.settings.ServerSettings`); an unknown or evicted key answers NOT_FOUND.
"""

from __future__ import annotations

import numpy as np

from xsyn.export.pipelines import APSAM
from xsyn.serving.pipeline_model import PipelineModel, json_output


class TritonPythonModel(PipelineModel):
    spec = APSAM
    synthesizes = False

    def setup(self) -> None:
        from xsyn.ensembles.annotation import Annotator
        from xsyn.ensembles.embedding_cache import EmbeddingCache

        self.annotator = Annotator(self.runner, self.assets, EmbeddingCache(self.settings.apsam_cache_bytes),
                                  self.settings)

    def handle(self, request) -> dict[str, np.ndarray]:
        from xsyn.api.annotation import parse_annotation_request

        req = parse_annotation_request(self.request_json(request))
        low = np.zeros((0, 1, 1, 1), np.float32)
        if req.op == "embed":
            response = self.annotator.embed(self.read_image(request))
        elif req.op == "segment":
            tensor = self.pb.get_input_tensor_by_name(request, "mask_input")
            response, low = self.annotator.segment(req, tensor.as_numpy() if tensor is not None else None)
        else:
            response = self.annotator.generate(req)
        return {"response": json_output(response), "low_res_mask": low}
