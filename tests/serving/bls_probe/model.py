"""Test-only Python-backend model: raises product errors and makes failing BLS calls on request.

Input ``case`` BYTES [1]: ``leaf_nan`` (BLS call to ``vae_decoder`` with a NaN latent, which the
leaf answers INVALID_ARGUMENT), ``exhausted`` / ``precondition`` / ``deadline`` (raise that
product error), anything else answers ``ok`` = 1.
"""

from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb

from xsyn.ensembles.runner import BlsRunner
from xsyn.errors import DeadlineExceeded, FailedPrecondition, ResourceExhausted
from xsyn.export.specs import exported_specs
from xsyn.serving.triton_errors import error_response

RAISES = {"exhausted": ResourceExhausted("probe: no room on the device"),
          "precondition": FailedPrecondition("probe: runtime not installed"),
          "deadline": DeadlineExceeded("probe: past the request's deadline")}


class TritonPythonModel:
    def initialize(self, args):
        self.specs = exported_specs(Path(args["model_repository"]).parent)
        self.runner = BlsRunner(pb, self.specs)

    def execute(self, requests):
        responses = []
        for request in requests:
            case = bytes(pb.get_input_tensor_by_name(request, "case").as_numpy().reshape(-1)[0]).decode()
            try:
                if case == "leaf_nan":
                    spec = self.specs["vae_decoder"]
                    latent = np.full(spec.concrete_shape(spec.inputs[0], "min"), np.nan, np.float32)
                    self.runner.infer("vae_decoder", {"latent": latent})
                if case in RAISES:
                    raise RAISES[case]
                responses.append(pb.InferenceResponse(output_tensors=[pb.Tensor("ok", np.array([1], np.int32))]))
            except Exception as exc:
                responses.append(error_response(pb, exc))
        return responses
