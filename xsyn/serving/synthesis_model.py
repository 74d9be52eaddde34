"""Triton Python-backend model ``xsyn``: the synthesis pipeline over BLS calls to the leaf graphs.

Tensors: :data:`xsyn.export.pipelines.XSYN`. Errors are answered per request with the status of
the product's error (INVALID_ARGUMENT naming the field, CANCELLED between denoising steps,
INTERNAL otherwise). Several instances run side by side so that concurrent requests' UNet steps
meet in the UNet's dynamic batcher.
"""

from __future__ import annotations

import numpy as np

from xsyn.export.pipelines import XSYN
from xsyn.serving.pipeline_model import PipelineModel, json_output


class TritonPythonModel(PipelineModel):
    spec = XSYN

    def setup(self) -> None:
        from xsyn.ensembles.synthesis import Synthesizer

        self.synthesizer = Synthesizer(self.runner, self.assets, self.settings)

    def handle(self, request) -> dict[str, np.ndarray]:
        from xsyn.api.synthesis import parse_request

        req = parse_request(self.request_json(request))
        image = self.read_image(request)
        cancelled = getattr(request, "is_cancelled", lambda: False)
        out = self.synthesizer.run(req, image, should_stop=cancelled)
        h, w = out.image.shape[:2]
        return {
            "image": out.image,
            "response": json_output(out.response),
            "unoccluded_image": out.unoccluded_image if out.unoccluded_image is not None else np.zeros((0, 0, 3), np.uint8),
            "attention_maps": out.attention_maps if out.attention_maps is not None else np.zeros((0, h, w), np.uint8),
        }
