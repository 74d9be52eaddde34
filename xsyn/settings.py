"""Server settings: one documented object instead of bare environment variables.

Each field can be set, from lowest to highest precedence, by its default here, by a Triton
config parameter of the same name (the pipeline specs write some), and by the environment
variable ``XSYN_<FIELD>`` (upper case) of the server process, which Triton's Python stubs inherit.

==========================  ===========================  =======================================
field                       environment variable         meaning
==========================  ===========================  =======================================
``ort_threads``             ``XSYN_ORT_THREADS``         ONNX Runtime intra-op threads per
                                                         session; 0 = one per core (idle
                                                         threads sleep, so sessions that share
                                                         the cores do not starve each other)
``apsam_cache_bytes``       ``XSYN_APSAM_CACHE_BYTES``   byte budget of the ``apsam`` model's
                                                         embedding LRU cache
``runtime``                 ``XSYN_RUNTIME``             leaf graphs: ``auto`` (TensorRT plan if
                                                         built, else ONNX Runtime),
                                                         ``onnxruntime``, ``tensorrt``, ``torch``
                                                         (the exported ``model.pt2``)
``device``                  ``XSYN_DEVICE``              ``torch`` runtime: ``cpu``, ``cuda``,
                                                         ``cuda:N``
``precision``               ``XSYN_PRECISION``           ``torch`` runtime: ``auto`` (fp16 on
                                                         CUDA, fp32 on the CPU), ``fp32``,
                                                         ``fp16``, ``bf16``
``torch_compile``           ``XSYN_TORCH_COMPILE``       ``torch`` runtime: ``torch.compile``
                                                         the program at load (default off)
``batch_nice``              ``XSYN_BATCH_NICE``          CPU niceness (0..19, default 10) of the
                                                         models no person waits on (synthesis
                                                         and its UNet / VAE / text encoder), so
                                                         clicks keep their latency under load
``priority``                (config parameter)           per model: ``interactive`` or ``batch``
                                                         (written by ``xsyn repository``)
``synthesis_instances``     ``XSYN_SYNTHESIS_INSTANCES`` instances of the ``xsyn`` pipeline (read
                                                         by ``xsyn serve`` / ``xsyn repository``);
                                                         0 = the spec's 4; each is a stub of
                                                         ~0.4 GB PSS (docs/measurements.md)
``max_steps``               ``XSYN_MAX_STEPS``           per-request budget: denoising steps of
                                                         one synthesis (default 200)
``max_output_bytes``        ``XSYN_MAX_OUTPUT_BYTES``    per-request budget: bytes of outputs a
                                                         leaf graph may produce (default 512 MiB;
                                                         the SAM decoder's full-size masks)
``max_image_pixels``        ``XSYN_MAX_IMAGE_PIXELS``    per-request budget: pixels of a request
                                                         image (default and ceiling 16 MP),
                                                         checked from the tensor's shape or the
                                                         PNG/JPEG header before pixels are read
``amg_batch_bytes``         ``XSYN_AMG_BATCH_BYTES``     automatic masks: bytes of full-size mask
                                                         logits held at once (default 256 MiB);
                                                         large images take more, smaller batches
``max_masks``               ``XSYN_MAX_MASKS``           automatic masks: most masks one request
                                                         returns (best predicted IoU first;
                                                         default 256)
==========================  ===========================  =======================================
"""

from __future__ import annotations

import os
from typing import Literal, Mapping

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from xsyn.api.limits import MAX_PIXELS, MAX_STEPS, MIN_SIDE
from xsyn.errors import InvalidArgument


class ServerSettings(BaseModel):
    """Settings read by the models inside the server (see the module docstring)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    ort_threads: int = Field(0, ge=0, le=1024, description="ONNX Runtime intra-op threads; 0 = one per core")
    apsam_cache_bytes: int = Field(256 * 1024 * 1024, ge=0, description="apsam embedding cache budget, bytes")
    runtime: Literal["auto", "onnxruntime", "tensorrt", "torch"] = Field("auto", description="leaf-graph runtime")
    device: str = Field("cpu", pattern=r"^(cpu|cuda(:\d+)?)$", description="torch runtime device")
    precision: Literal["auto", "fp32", "fp16", "bf16"] = Field("auto", description="torch runtime precision")
    torch_compile: bool = Field(False, description="torch.compile the exported program at load")
    batch_nice: int = Field(10, ge=0, le=19, description="CPU niceness of batch (non-interactive) models")
    priority: Literal["interactive", "batch"] = Field("interactive", description="this model's class")
    synthesis_instances: int = Field(0, ge=0, le=64, description="xsyn pipeline instances; 0 = the spec's")
    max_steps: int = Field(200, ge=1, le=MAX_STEPS, description="denoising steps a synthesis may ask for")
    max_output_bytes: int = Field(512 * 2**20, ge=2**20, description="output bytes a leaf request may produce")
    max_image_pixels: int = Field(MAX_PIXELS, ge=MIN_SIDE**2, le=MAX_PIXELS, description="pixels of a request image")
    amg_batch_bytes: int = Field(256 * 2**20, ge=2**20, description="AMG: full-size mask logits held at once")
    max_masks: int = Field(256, ge=1, description="AMG: most masks one request returns")

    @classmethod
    def load(cls, parameters: Mapping[str, str] | None = None,
             environ: Mapping[str, str] | None = None) -> "ServerSettings":
        """Defaults, overridden by config ``parameters``, overridden by ``XSYN_*`` variables.

        Raises InvalidArgument naming the variable or parameter when a value does not parse.
        """
        environ = os.environ if environ is None else environ
        values: dict[str, str] = {}
        where: dict[str, str] = {}
        for name in cls.model_fields:
            if parameters and name in parameters:
                values[name], where[name] = parameters[name], f"config parameter {name}"
            variable = f"XSYN_{name.upper()}"
            if variable in environ:
                values[name], where[name] = environ[variable], variable
        try:
            return cls(**values)
        except ValidationError as exc:
            first = exc.errors()[0]
            field = str(first["loc"][0]) if first["loc"] else ""
            raise InvalidArgument(f"{where.get(field, field)}={values.get(field)!r}: {first['msg']}") from None

    @classmethod
    def for_model(cls, args: dict) -> "ServerSettings":
        """The settings of a Python-backend model: its config ``parameters`` (from the
        ``initialize`` args' ``model_config`` JSON), overridden by ``XSYN_*`` variables."""
        import json

        config = json.loads(args["model_config"])
        return cls.load({k: v.get("string_value", "") for k, v in config.get("parameters", {}).items()})

    def model_parameters(self) -> dict[str, str]:
        """The runtime fields as Triton config parameters (what ``xsyn serve`` writes per leaf model)."""
        return {"runtime": self.runtime, "device": self.device, "precision": self.precision,
                "torch_compile": str(self.torch_compile).lower()}

    def apply_priority(self) -> None:
        """Lower this process's CPU priority by ``batch_nice`` when it serves a batch model."""
        if self.priority == "batch" and self.batch_nice:
            os.nice(self.batch_nice)

    @property
    def threads(self) -> int:
        """ONNX Runtime threads to use: ``ort_threads``, or one per core when 0."""
        return self.ort_threads or (os.cpu_count() or 1)
