"""The two pipeline models' contracts: ``xsyn`` (synthesis) and ``apsam`` (annotation).

Tensors (one request per execution, ``max_batch_size 0``):

``xsyn``
    in: ``request`` BYTES ``[1]`` (:class:`~xsyn.api.synthesis.SynthesisRequest` JSON), and one
    of ``image`` UINT8 ``[H, W, 3]`` RGB or ``image_bytes`` BYTES ``[1]`` (PNG/JPEG).
    out: ``image`` UINT8 ``[H, W, 3]`` final (occluded) image; ``response`` BYTES ``[1]``
    (:class:`~xsyn.api.synthesis.SynthesisResponse` JSON); ``unoccluded_image`` UINT8
    ``[H, W, 3]`` and ``attention_maps`` UINT8 ``[N, H, W]``, empty unless asked for.
``apsam``
    in: ``request`` BYTES ``[1]`` (embed / segment / generate JSON, :mod:`xsyn.api.annotation`);
    ``image`` / ``image_bytes`` for ``embed``; ``mask_input`` FP32 ``[1, 1, 4E, 4E]`` optional
    for ``segment``. out: ``response`` BYTES ``[1]``; ``low_res_mask`` FP32 ``[1, 1, 4E, 4E]``
    after ``segment`` (empty otherwise).
"""

from __future__ import annotations

from xsyn.export.specs import PipelineSpec, TensorSpec
from xsyn.settings import ServerSettings

SYNTHESIS_GRAPHS = ("text_encoder", "unet", "vae_encoder", "vae_decoder", "sam_image_encoder", "sam_decoder")
ANNOTATION_GRAPHS = ("sam_image_encoder", "sam_decoder")

_REQUEST = TensorSpec("request", "bytes", (1,), "the request as JSON")
_IMAGE = TensorSpec("image", "uint8", ("height", "width", 3), "RGB image, row-major")
_IMAGE_BYTES = TensorSpec("image_bytes", "bytes", (1,), "PNG or JPEG file contents")

XSYN = PipelineSpec(
    name="xsyn", module="xsyn.serving.synthesis_model",
    inputs=(_REQUEST, _IMAGE, _IMAGE_BYTES),
    outputs=(TensorSpec("image", "uint8", ("height", "width", 3), "final (occluded) image"),
             TensorSpec("response", "bytes", (1,), "SynthesisResponse JSON"),
             TensorSpec("unoccluded_image", "uint8", ("height", "width", 3), "before occlusion; empty unless asked"),
             TensorSpec("attention_maps", "uint8", ("items", "height", "width"), "per item; empty unless asked")),
    optional_inputs=("image", "image_bytes"),
    needs=SYNTHESIS_GRAPHS,
    instance_count=4,  # concurrent requests' UNet steps meet in its dynamic batcher
    instances_setting="synthesis_instances",
    description="Xsyn synthesis: GLIGEN inpainting, CAR, BOM over BLS calls to the leaf graphs",
)

APSAM = PipelineSpec(
    name="apsam", module="xsyn.serving.annotation_model",
    inputs=(_REQUEST, _IMAGE, _IMAGE_BYTES,
            TensorSpec("mask_input", "float32", (1, 1, "low_h", "low_w"), "previous low_res_mask (segment)")),
    outputs=(TensorSpec("response", "bytes", (1,), "AnnotationResponse JSON"),
             TensorSpec("low_res_mask", "float32", ("masks", 1, "low_h", "low_w"), "logits of the returned mask")),
    optional_inputs=("image", "image_bytes", "mask_input"),
    needs=ANNOTATION_GRAPHS,
    interactive=True,
    instance_count=1,  # one process owns the embedding cache
    parameters=(("apsam_cache_bytes", str(ServerSettings().apsam_cache_bytes)),),
    description="APSAM annotation: embed once, click many, automatic masks",
)

PIPELINES = (XSYN, APSAM)


def interactive_graphs() -> set[str]:
    """Leaf graphs an interactive pipeline calls: they keep the normal CPU priority."""
    return {g for p in PIPELINES if p.interactive for g in (*p.needs, *p.optional_graphs)}
