"""The Xsyn synthesis orchestrator (methods.md section 2): image + annotations in, synthetic
image + refined annotations out. Plain Python over a :class:`~xsyn.ensembles.runner.Runner`,
so the same code runs inside Triton (BLS) and in-process.

Frames: the request image is resized to the generation size ``S x S`` (boxes scaled with it);
every stage works at ``S``; outputs are mapped back to the request image's size.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

from xsyn.api.class_groups import ClassGroups, load_class_groups
from xsyn.api.masks import rle_encode
from xsyn.api.synthesis import Item, SynthesisRequest, SynthesisResponse
from xsyn.api.validation import outside
from xsyn.errors import InvalidArgument
from xsyn.settings import ServerSettings
from xsyn.ensembles import bom, car, images
from xsyn.ensembles.assets import PipelineAssets
from xsyn.ensembles.denoise import TorchNoise, denoise
from xsyn.ensembles.idle_regions import IdleRules, box_area, pick_idle_box
from xsyn.ensembles.prompts import encode_phrases, encode_prompts, phrase_token_positions
from xsyn.ensembles.runner import Runner
from xsyn.ensembles.sam_ops import AmgSettings, SamImage, embed_images, generate_masks

#: Defaults per repository profile; real checkpoints use the paper's / reference code's values.
#: ``tiny`` (trained on phantom bags, 256 px): a 16 x 16 point grid; the tiny APSAM's IoU head
#: predicts 0.1..0.3, so its filters keep every mask and split masks into components, or idle
#: regions (``add`` mode, BOM occluders) are rarely found (docs/measurements.md). ``tiny-random``: untrained SAM makes
#: the default filters reject every mask, so they are relaxed (and the idle-area range widened)
#: so that every stage still runs. The tiny profiles pick ``add`` classes from the phantom
#: classes (``xsyn/data/class_groups/phantom.json``), the only ones their weights were trained
#: on. Both paste the input back outside the generated boxes: the tiny VAE's reconstruction is
#: lossy.
PROFILE_DEFAULTS = {
    "standard": {"amg": AmgSettings(), "idle_area_range": (500.0, 30000.0), "composite_background": False,
                 "class_groups": "pidray"},
    "tiny": {"amg": AmgSettings(points_per_side=16, pred_iou_thresh=0.0, stability_score_thresh=0.0,
                                box_nms_thresh=0.7, split_components=True, min_component_area=64),
             "idle_area_range": (200.0, 60000.0), "composite_background": True, "class_groups": "phantom"},
    "tiny-random": {"amg": AmgSettings(points_per_side=8, pred_iou_thresh=0.0, stability_score_thresh=0.0,
                                       box_nms_thresh=0.7, split_components=True, min_component_area=64,
                                       binarize_quantile=0.9),
                    "idle_area_range": (200.0, 60000.0), "composite_background": True,
                    "class_groups": "phantom"},
}
AREA_REFERENCE = 512


@dataclass
class SynthesisOutput:
    """Final (occluded) image uint8 ``[H, W, 3]``, the response, and optional extras at ``[H, W]``."""

    image: np.ndarray
    response: SynthesisResponse
    unoccluded_image: np.ndarray | None = None
    attention_maps: np.ndarray | None = None  # uint8 [N, H, W], one per generated item


class _Timer:
    def __init__(self) -> None:
        self.ms: dict[str, float] = {}

    @contextmanager
    def stage(self, name: str):
        start = time.perf_counter()
        yield
        self.ms[name] = self.ms.get(name, 0.0) + 1000 * (time.perf_counter() - start)


@dataclass
class _Job:
    """One request in flight: the request, its image at both sizes, the resolved settings, and
    what the stages found. Boxes in ``originals`` are ``(class, box at S, box at the request size)``;
    ``scale`` is ``(S / W, S / H)``."""

    req: SynthesisRequest
    image: np.ndarray
    img_s: np.ndarray
    scale: tuple[float, float]
    groups: ClassGroups
    amg: AmgSettings
    rules: IdleRules
    record: dict
    rng: np.random.Generator
    originals: list
    too_small: list[bool]
    timer: _Timer = field(default_factory=_Timer)
    mask_boxes: list = field(default_factory=list)
    mask_areas: list = field(default_factory=list)


class Synthesizer:
    """Runs synthesis requests against one exported repository."""

    def __init__(self, runner: Runner, assets: PipelineAssets, settings: ServerSettings | None = None) -> None:
        """``settings``: the per-request budgets (steps, image pixels, AMG memory), defaults if None."""
        self.runner = runner
        self.assets = assets
        self.settings = settings or ServerSettings()

    # ------------------------------------------------------------------ settings and checks

    def resolve(self, req: SynthesisRequest) -> tuple[ClassGroups, AmgSettings, IdleRules, dict]:
        """Class groups, AMG settings and idle rules for a request, plus the record of what was used."""
        profile = PROFILE_DEFAULTS[self.assets.profile]
        groups = req.class_groups_data or load_class_groups(req.class_groups or profile["class_groups"])
        amg = profile["amg"].for_request(self.settings, req.amg.model_dump())
        lo, hi = req.idle_area_range or profile["idle_area_range"]
        scale = (self.assets.image_size / AREA_REFERENCE) ** 2
        ratio = req.min_box_ratio if req.min_box_ratio is not None else groups.min_box_ratio
        rules = IdleRules(iou_threshold=req.iou_threshold, min_area=lo * scale, max_area=hi * scale, min_box_ratio=ratio)
        composite = req.composite_background if req.composite_background is not None else profile["composite_background"]
        record = {"profile": self.assets.profile, "composite_background": composite,
                  "generation_size": self.assets.image_size, "amg": amg.as_dict(),
                  "idle_area_range_at_512": [lo, hi], "min_box_ratio": ratio, "class_groups": groups.dataset,
                  "iou_threshold": req.iou_threshold, "steps": req.steps, "guidance": req.guidance, "eta": req.eta,
                  "bom_alpha": req.bom_alpha, "car": req.car, "mps_divisions": req.mps_divisions}
        return groups, amg, rules, record

    def check(self, req: SynthesisRequest, groups: ClassGroups, width: int, height: int) -> None:
        """Request checks that need the image, the class groups or the server's budget
        (InvalidArgument naming the field)."""
        if req.steps > self.settings.max_steps:
            raise InvalidArgument(f"steps: {req.steps} is over this server's budget of {self.settings.max_steps} "
                                  f"(XSYN_MAX_STEPS)")
        if not req.allow_unknown_classes:
            for i, name in enumerate(req.class_names):
                if name not in groups.classes:
                    raise InvalidArgument(f"class_names.{i}: unknown class {name!r} for {groups.dataset}; "
                                          f"expected one of {groups.classes} (or allow_unknown_classes)")
        for i, box in enumerate(req.boxes):
            if outside(box, width, height):
                raise InvalidArgument(f"boxes.{i}: {box} lies outside the {width}x{height} image")

    # ------------------------------------------------------------------ the pipeline

    def run(self, req: SynthesisRequest, image: np.ndarray, should_stop: Callable[[], bool] | None = None
            ) -> SynthesisOutput:
        """One synthesis: automatic masks (idle regions, occluders), grounding, denoising, BOM, CAR.

        ``image``: uint8 ``[H, W, 3]`` RGB; ``should_stop`` is polled between denoising steps.
        """
        job = self._start(req, image)
        self._auto_masks(job)
        grounding, why = self._grounding(job)
        if grounding is None:
            return self._unchanged(req, job.image, job.originals, why, job.record, job.timer)
        latent, maps = self._generate(job, grounding, should_stop)
        return self._finish(job, grounding, latent, maps)

    # ------------------------------------------------------------------ the pipeline's steps

    def _start(self, req: SynthesisRequest, image: np.ndarray) -> "_Job":
        image = images.check_image(image, self.settings.max_image_pixels)
        h, w = image.shape[:2]
        groups, amg, rules, record = self.resolve(req)
        self.check(req, groups, w, h)
        s = self.assets.image_size
        sx, sy = s / w, s / h
        originals = [(c, [b[0] * sx, b[1] * sy, b[2] * sx, b[3] * sy], list(b)) for c, b in zip(req.class_names, req.boxes)]
        return _Job(req=req, image=image, img_s=images.resize(image, s, s), scale=(sx, sy), groups=groups, amg=amg,
                    rules=rules, record=record, rng=np.random.default_rng(req.seed), originals=originals,
                    too_small=[box_area(b) < rules.min_box_ratio * s * s for _, b, _ in originals])

    def _auto_masks(self, job: "_Job") -> None:
        """SAM's automatic masks on the input (needed for idle regions and occluders)."""
        auto = []
        if job.req.mode == "add" or job.req.bom_alpha > 0:
            with job.timer.stage("sam_embed"):
                sam_input = self._sam_image(*self._embed([job.img_s]))
            with job.timer.stage("amg"):
                auto = generate_masks(sam_input, job.amg)
        job.mask_boxes = [m.box for m in auto]
        job.mask_areas = [m.area for m in auto]
        job.record["auto_masks"] = len(auto)

    def _grounding(self, job: "_Job") -> tuple[list | None, str]:
        """``[(class, box at S)]`` to paint, or ``(None, why nothing is painted)``."""
        s = self.assets.image_size
        if job.req.mode == "add":
            idle = pick_idle_box(job.mask_boxes, job.mask_areas, [b for _, b, _ in job.originals], job.rules, s, job.rng)
            cls = job.groups.pick_class(box_area(idle), s, job.rng) if idle else None
            if idle is None or cls is None:
                return None, "no idle region found" if idle is None else "no class group for the idle region's area"
            return [(cls, list(idle))], ""
        grounding = [(c, b) for (c, b, _), small in zip(job.originals, job.too_small) if not small]
        return (grounding, "") if grounding else (None, "every box is below the minimum box ratio")

    def _generate(self, job: "_Job", grounding, should_stop) -> tuple[np.ndarray, list[np.ndarray]]:
        """Encode, denoise; the final latent ``[1, 4, s, s]`` and per item its attention map ``[S, S]``."""
        req, s, timer = job.req, self.assets.image_size, job.timer
        phrases = [c for c, _ in grounding]
        norm_boxes = np.array([[b[0] / s, b[1] / s, b[2] / s, b[3] / s] for _, b in grounding], np.float32)
        noise = TorchNoise(req.seed)
        with timer.stage("encode"):
            prompt_emb = encode_prompts(self.runner, self.assets.tokenizer, " ".join(phrases), req.negative_prompt)
            phrase_emb = encode_phrases(self.runner, self.assets.tokenizer, phrases)
            post = self.runner.infer("vae_encoder", {"image": images.to_model_range(job.img_s)})
            z_input = (post["latent_mean"] + post["latent_std"] * noise.draw(post["latent_mean"].shape).numpy())
        with timer.stage("denoise"):
            result = denoise(self.runner, prompt_emb, phrase_emb, norm_boxes, z_input.astype(np.float32), noise,
                             req.steps, req.guidance, req.eta, self.assets.max_objects,
                             tuple(self.assets.capture_outputs), should_stop)
        timer.ms["per_step"] = timer.ms["denoise"] / req.steps
        return result.latent, self._attention_maps(result, phrase_token_positions(self.assets.tokenizer, phrases))

    def _finish(self, job: "_Job", grounding, latent: np.ndarray, maps: list[np.ndarray]) -> SynthesisOutput:
        """BOM, decode, CAR, and the output at the request image's size."""
        req, timer, img_s = job.req, job.timer, job.img_s
        h, w = job.image.shape[:2]
        with timer.stage("bom"):
            latent_occ, occlusion = self._occlude(req, latent, grounding, job.originals, job.mask_boxes,
                                                  job.mask_areas, job.rules, job.rng, job.scale)
        with timer.stage("decode"):
            decoded = self.runner.infer("vae_decoder", {"latent": np.concatenate([latent, latent_occ])})["image"]
        unoccluded, final = images.from_model_range(decoded[0]), images.from_model_range(decoded[1])
        if job.record["composite_background"]:
            unoccluded = np.where(self._background_mask(grounding, {})[..., None], img_s, unoccluded)
            final = np.where(self._background_mask(grounding, occlusion)[..., None], img_s, final)
        with timer.stage("car"):
            refined = self._refine(req, unoccluded, maps, grounding)
        items = self._items(req, job.originals, job.too_small, grounding, refined, job.scale, (w, h))
        response = SynthesisResponse(mode=req.mode, seed=req.seed, status="ok", items=items, occlusion=occlusion,
                                     settings=job.record, timings_ms={k: round(v, 2) for k, v in timer.ms.items()},
                                     image_size=[w, h])
        out = SynthesisOutput(images.resize(final, w, h), response)
        if req.return_unoccluded_image:
            out.unoccluded_image = images.resize(unoccluded, w, h)
        if req.return_attention_maps:
            out.attention_maps = np.stack([images.resize(m.astype(np.uint8), w, h) for m in maps])
        return out

    # ------------------------------------------------------------------ stages

    def _embed(self, imgs: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """Embeddings ``[N, C, E, E]`` and mask tokens ``[N, M, C]`` (:func:`embed_images`)."""
        return embed_images(self.runner, imgs, self.assets)

    def _sam_image(self, embeddings: np.ndarray, tokens: np.ndarray, index: int = 0) -> SamImage:
        s = self.assets.image_size
        return SamImage.from_embedding(self.runner, embeddings[index], (s, s), self.assets, tokens[index])

    def _attention_maps(self, result, positions: list[list[int]]) -> list[np.ndarray]:
        """Per item: mean over steps, capture layers and the phrase's tokens, scaled to 0..255 at ``S x S``."""
        s = self.assets.image_size
        side = max(self.assets.capture_outputs.values())
        layers = []
        for name in self.assets.capture_outputs:
            mean = torch.from_numpy(result.attention_sum[name] / result.steps)[None]  # [1, 77, h, w]
            layers.append(torch.nn.functional.interpolate(mean, size=(side, side), mode="bilinear", align_corners=False))
        avg = torch.cat(layers).mean(0)  # [77, side, side]
        maps = []
        for pos in positions:
            m = avg[pos].mean(0) if pos else torch.zeros(side, side)
            m = m / m.max() * 255 if float(m.max()) > 0 else m
            up = torch.nn.functional.interpolate(m[None, None], size=(s, s), mode="bilinear", align_corners=False)
            maps.append(up[0, 0].clamp(0, 255).numpy())
        return maps

    def _occlude(self, req, latent, grounding, originals, mask_boxes, mask_areas, rules, rng, scale):
        if req.bom_alpha <= 0:
            return latent, {"applied": False, "status": "off (bom_alpha = 0)"}
        s, ls = self.assets.image_size, self.assets.latent_size
        foreground = [b for _, b, _ in originals] + ([grounding[0][1]] if req.mode == "add" else [])
        occluder = pick_idle_box(mask_boxes, mask_areas, foreground, rules, s, rng)
        if occluder is None:
            return latent, {"applied": False, "status": "no occluder found"}
        occ_lat = bom.to_latent_box(occluder, s, ls)
        targets = [bom.to_latent_box(b, s, ls) for b in foreground]
        occluded, placements = bom.occlude(latent, occ_lat, targets, req.bom_alpha, rng)
        sx, sy = scale
        return occluded, {"applied": True, "status": "ok", "alpha": req.bom_alpha,
                          "occluder_box": [occluder[0] / sx, occluder[1] / sy, occluder[2] / sx, occluder[3] / sy],
                          "occluder_latent_box": list(occ_lat), "placements_latent": [list(p) for p in placements]}

    def _background_mask(self, grounding, occlusion) -> np.ndarray:
        """bool ``[S, S]``: pixels outside every generated box and every occluded latent cell."""
        from xsyn.ensembles.mps import box_mask

        s, f = self.assets.image_size, self.assets.image_size // self.assets.latent_size
        changed = np.zeros((s, s), bool)
        for _, box in grounding:
            changed |= box_mask((s, s), box)
        for x1, y1, x2, y2 in occlusion.get("placements_latent", []):
            changed[y1 * f:y2 * f, x1 * f:x2 * f] = True
        return ~changed

    def _refine(self, req, unoccluded, maps, grounding) -> list[car.CarResult | None]:
        if not req.car:
            return [None] * len(grounding)
        embeddings, tokens = self._embed([unoccluded] + [np.repeat(m.astype(np.uint8)[..., None], 3, axis=2) for m in maps])
        generated = self._sam_image(embeddings, tokens)
        return [car.refine(generated, self._sam_image(embeddings, tokens, k + 1), maps[k], box, req.mps_divisions)
                for k, (_, box) in enumerate(grounding)]

    def _items(self, req, originals, too_small, grounding, refined, scale, size) -> list[Item]:
        sx, sy = scale
        w, h = size

        def back(b):
            return [b[0] / sx, b[1] / sy, b[2] / sx, b[3] / sy]

        generated = []
        for (cls, box), res in zip(grounding, refined):
            item = Item(class_name=cls, box=back(res.box if res else box), grounding_box=back(box), source="generated",
                        status="generated" + (", CAR kept the grounding box" if res and res.kept_grounding_box else "")
                        + (", CAR region fallback" if res and res.region_fallback else ""))
            if res is not None:
                item.mask = rle_encode(images.resize(res.mask, w, h, nearest=True))
                if req.return_mps_points:
                    item.mps_points = [[int(round(x / sx)), int(round(y / sy))] for x, y in res.foreground_points]
                    bg = res.background_point
                    item.background_point = [int(round(bg[0] / sx)), int(round(bg[1] / sy))] if bg else None
            generated.append(item)
        if req.mode == "add":
            return [Item(class_name=c, box=orig, source="original", status="original") for c, _, orig in originals] + generated
        items, it = [], iter(generated)
        for (c, _, orig), small in zip(originals, too_small):
            items.append(Item(class_name=c, box=orig, source="original", status="kept: below the minimum box ratio")
                         if small else next(it))
        return items

    def _unchanged(self, req, image, originals, why, record, timer) -> SynthesisOutput:
        items = [Item(class_name=c, box=orig, source="original", status="original") for c, _, orig in originals]
        h, w = image.shape[:2]
        response = SynthesisResponse(mode=req.mode, seed=req.seed, status=why, items=items,
                                     occlusion={"applied": False, "status": "not run"}, settings=record,
                                     timings_ms={k: round(v, 2) for k, v in timer.ms.items()}, image_size=[w, h])
        out = SynthesisOutput(image.copy(), response)
        if req.return_unoccluded_image:
            out.unoccluded_image = image.copy()
        if req.return_attention_maps:
            out.attention_maps = np.zeros((0, h, w), np.uint8)
        return out


def preload(synthesis: bool = True) -> None:
    """Import what the stages import lazily, so a model instance pays for it at start-up, not on
    its first request (with 4 instances that was 1.6 s on each instance's first request), and
    in-process jobs do not race lazy imports across their threads. ``synthesis=False``: only
    what annotation needs (SAM's mask tools), not the scheduler and the tokenizer's stack."""
    if synthesis:
        from diffusers import DDIMScheduler  # noqa: F401  (resolving diffusers' lazy attribute races across threads)
    import pycocotools.mask  # noqa: F401
    import scipy.ndimage  # noqa: F401
    import segment_anything.utils.amg  # noqa: F401
    import segment_anything.utils.transforms  # noqa: F401
    import skimage.measure  # noqa: F401
    import torchvision.ops  # noqa: F401

