"""``xsyn train-tiny``: train the tiny preset's VAE, GLIGEN inpainting UNet and APSAM on phantom data.

Five stages, each starting from the tiny-random preset's seeded weights (``decoder`` from ``vae``'s):

``vae``    autoencoding of 128 x 128 crops, most of them around an item (L1 weighted 5x on item
           pixels, whose colours name their class, + a small KL term: SD's recipe without the
           perceptual/GAN losses); afterwards the latent scaling factor is set to ``1 / std`` of
           the training set's latents, so the UNet sees unit-variance latents.
``decoder`` the VAE decoder fine-tuned on noisy latents (encoder frozen; see :func:`train_decoder`).
``unet``   GLIGEN inpainting: the 9-channel input ``concat(z_t, z0 * m, m)`` with ``m`` 0 inside
           the items' boxes (:func:`xsyn.api.diffusion.inpaint_mask`, as served), boxes + class
           phrases as grounding tokens, caption = the phrases joined (as the pipeline prompts),
           epsilon loss weighted 5x inside the boxes and by Min-SNR-5 over timesteps;
           classifier-free dropout drops caption and grounding together (10%) or grounding
           alone (10%); EMA weights. 30% of the steps at the served 32 x 32 latent, the rest on
           16 x 16 crops around an item (4x cheaper a sample, so 3x the batch).
``apsam``  APSAM's adapters, energy CNN, prompt encoder and mask decoder (the whole tiny model)
           on the reference's input pipeline (square resize, BGR 0..1): per item a click and one
           of a click plus two more points (with the first pass's logits as mask input, as the
           served adaptive-points pass does), a box, or a box with foreground points and one
           background point (as CAR prompts); per step two background objects (bag, clutter)
           with a click or a box, so that automatic masks find clutter too. Dice + BCE on the
           single-mask output, the best of the multimask outputs for clicks, MSE of the IoU
           head; and the energy tokens' classifier learns which grid cells lie on an item (so
           its top-k picks item tokens).
``sam``    the annotation baseline: a plain tiny SAM (:data:`~xsyn.export.sam_arch.TINY_SAM`, learned
           mask tokens, SAM's own input pipeline) trained with the same prompts and losses.

Determinism and resume: every batch is drawn from ``(seed, stage, step)`` alone, and a stage
checkpoint (model, EMA, optimiser, step) is written atomically every ``checkpoint_every`` steps,
so a run killed at any point and started again ends with the same weights as one that was not.
The text encoder is the tiny-random preset's (seed 0), frozen: the class phrases stay separable.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from xsyn.api.diffusion import inpaint_mask
from xsyn.api.limits import MAX_OBJECTS
from xsyn.api.sam_input import encoder_input
from xsyn.errors import InvalidArgument
from xsyn.export.training_data import TrainingSet

SIZE = 256  # the tiny preset's generation size
LATENT = SIZE // 8
STAGES = ("vae", "unet", "apsam", "sam", "decoder")  # the index seeds each stage's batches


@dataclass(frozen=True)
class StagePlan:
    """Steps, batch size and peak learning rate of one stage (cosine decay after 5% warm-up)."""

    steps: int
    batch: int
    lr: float


#: the committed weights' plan: 60-79 minutes on the two-core CPU build machine (runs from scratch are
#: deterministic: a second one rebuilt the previous weights exactly)
PLAN = {"vae": StagePlan(3000, 8, 1e-3), "unet": StagePlan(2000, 8, 1e-3), "apsam": StagePlan(700, 8, 5e-4),
        "sam": StagePlan(500, 8, 5e-4), "decoder": StagePlan(1200, 8, 5e-4)}


def scaled_plan(scale: float) -> dict[str, StagePlan]:
    """:data:`PLAN` with ``steps`` multiplied by ``scale`` (at least 2 each), for quick runs."""
    return {k: StagePlan(max(2, round(p.steps * scale)), p.batch, p.lr) for k, p in PLAN.items()}


def _lr_at(step: int, plan: StagePlan) -> float:
    warm = max(1, plan.steps // 20)
    if step < warm:
        return plan.lr * (step + 1) / warm
    return plan.lr * 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, plan.steps - warm)))


def _atomic_torch_save(obj, path: Path) -> None:
    tmp = path.with_name(path.name + ".partial")
    torch.save(obj, tmp)
    os.replace(tmp, path)


class StageRunner:
    """Runs one stage's steps with logging, atomic checkpoints and resume.

    ``step_fn(rng, generator) -> (loss, {name: float})`` computes one batch's loss; ``rng`` and
    ``generator`` are seeded from ``(seed, stage, step)``.
    """

    def __init__(self, name: str, model: nn.Module, plan: StagePlan, work: Path, seed: int,
                 log: Callable[[str], None], checkpoint_every: int = 100, ema: float | None = None) -> None:
        self.name, self.model, self.plan, self.seed, self.log = name, model, plan, seed, log
        self.path = work / f"{name}.ckpt"
        self.losses_path = work / f"{name}_losses.jsonl"
        self.checkpoint_every = checkpoint_every
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.opt = torch.optim.AdamW(self.params, lr=plan.lr, weight_decay=0.0)
        self.ema = copy.deepcopy(model).requires_grad_(False) if ema else None
        self.ema_decay = ema or 0.0
        self.step = 0
        self.done = False
        if self.path.exists():
            self._load()

    def _load(self) -> None:
        try:
            state = torch.load(self.path, map_location="cpu", weights_only=True)
            self.model.load_state_dict(state["model"])
            self.opt.load_state_dict(state["opt"])
            if self.ema is not None:
                self.ema.load_state_dict(state["ema"])
        except Exception as exc:  # a checkpoint from another plan or a damaged file
            raise InvalidArgument(f"{self.path}: cannot resume from this checkpoint ({type(exc).__name__}: "
                                  f"{str(exc)[:200]}); delete it to train the {self.name} stage again") from None
        self.step, self.done = int(state["step"]), bool(state["done"])
        if state.get("plan") != list(self.plan.__dict__.values()):
            raise InvalidArgument(f"{self.path}: written by a run with another plan {state.get('plan')}; "
                                  f"use another --work folder or delete it")
        if self.losses_path.exists():  # lines a killed run logged after its last checkpoint are redone
            lines = self.losses_path.read_text().splitlines()
            self.losses_path.write_text("".join(line + "\n" for line in lines if json.loads(line)["step"] <= self.step))
        self.log(f"{self.name}: {'already trained' if self.done else f'resuming at step {self.step}/{self.plan.steps}'}"
                 f" ({self.path})")

    def _save(self) -> None:
        state = {"model": self.model.state_dict(), "opt": self.opt.state_dict(), "step": self.step,
                 "done": self.done, "plan": list(self.plan.__dict__.values())}
        if self.ema is not None:
            state["ema"] = self.ema.state_dict()
        _atomic_torch_save(state, self.path)

    def run(self, step_fn) -> nn.Module:
        """Train to the end of the plan; returns the trained (EMA where kept) model in eval mode."""
        stage_id = STAGES.index(self.name)
        started, first = time.perf_counter(), self.step
        running: dict[str, float] = {}
        self.model.train()
        while not self.done:
            rng = np.random.default_rng([self.seed, stage_id, self.step])
            gen = torch.Generator().manual_seed(int(rng.integers(2**62)))
            for group in self.opt.param_groups:
                group["lr"] = _lr_at(self.step, self.plan)
            loss, parts = step_fn(rng, gen)
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.params, 1.0)
            self.opt.step()
            if self.ema is not None:
                with torch.no_grad():
                    for e, p in zip(self.ema.parameters(), self.model.parameters()):
                        e.lerp_(p, 1 - self.ema_decay)
            self.step += 1
            for k, v in parts.items():
                running[k] = running.get(k, 0.0) + v
            every = min(25, self.plan.steps)
            if self.step % every == 0 or self.step == self.plan.steps:
                n = (self.step - 1) % every + 1
                means = {k: v / n for k, v in running.items()}
                running = {}
                with self.losses_path.open("a") as f:
                    f.write(json.dumps({"step": self.step, **{k: round(v, 6) for k, v in means.items()}}) + "\n")
                rate = (time.perf_counter() - started) / max(1, self.step - first)
                self.log(f"{self.name} step {self.step}/{self.plan.steps}  "
                         + "  ".join(f"{k} {v:.4f}" for k, v in means.items())
                         + f"  ({rate:.2f} s/step, {rate * (self.plan.steps - self.step) / 60:.1f} min left)")
            self.done = self.step >= self.plan.steps
            if self.done or self.step % self.checkpoint_every == 0:
                self._save()
        trained = self.ema if self.ema is not None else self.model
        return trained.eval()


# ----------------------------------------------------------------------------- data helpers

def _to_unit(images: np.ndarray) -> torch.Tensor:
    """uint8 ``[B, H, W, 3]`` -> float ``[B, 3, H, W]`` in [-1, 1]."""
    return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1.0


def _random_point(rng: np.random.Generator, mask: np.ndarray) -> tuple[float, float]:
    """A uniformly drawn pixel of a bool mask, as continuous xy (pixel centre +- 0.5)."""
    rows, cols = np.nonzero(mask)
    k = int(rng.integers(len(rows)))
    return float(cols[k] + rng.uniform(0.05, 0.95)), float(rows[k] + rng.uniform(0.05, 0.95))


def _downsize_mask(mask: np.ndarray, side: int) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).resize((side, side), Image.BILINEAR)) > 127


# ----------------------------------------------------------------------------- VAE

class ItemCrops:
    """Batches of 128 x 128 crops for the VAE stages, most of them around an item (its colour
    must survive), with per-pixel loss weights 5 on item pixels and 1 elsewhere."""

    def __init__(self, data: TrainingSet) -> None:
        self.data = data
        self.item_pixels = np.stack([np.any([it.mask for it in items], axis=0) if items else
                                     np.zeros((SIZE, SIZE), bool) for items in data.items])

    def __call__(self, rng: np.random.Generator, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Images ``[B, 3, 128, 128]`` in [-1, 1] and weights ``[B, 1, 128, 128]``."""
        data = self.data
        idx = rng.integers(len(data), size=batch)
        crops, weights = [], []
        for i in idx:
            y, x = rng.integers(0, SIZE - 128 + 1, size=2)
            if data.items[i] and rng.random() < 0.75:
                x0, y0, x1, y1 = data.items[i][int(rng.integers(len(data.items[i])))].box
                cx, cy = (x0 + x1) // 2 + int(rng.integers(-32, 33)), (y0 + y1) // 2 + int(rng.integers(-32, 33))
                x, y = min(max(cx - 64, 0), SIZE - 128), min(max(cy - 64, 0), SIZE - 128)
            crops.append(data.images[i, y:y + 128, x:x + 128])
            weights.append(1.0 + 4.0 * self.item_pixels[i, y:y + 128, x:x + 128])
        crops, weights = np.stack(crops), np.stack(weights).astype(np.float32)
        flips = rng.random(batch) < 0.5
        crops[flips], weights[flips] = crops[flips, :, ::-1], weights[flips, :, ::-1]
        return _to_unit(np.ascontiguousarray(crops)), torch.from_numpy(np.ascontiguousarray(weights))[:, None]


def _weighted_l1(rec: torch.Tensor, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    return ((rec - x).abs() * w).sum() / (w.sum() * 3)


def train_vae(vae, data: TrainingSet, runner_args: dict) -> tuple[nn.Module, float]:
    """Autoencoding on 128 x 128 crops; returns the trained VAE and its latent scaling factor."""
    plan: StagePlan = runner_args["plan"]
    crops = ItemCrops(data)

    def step(rng, gen):
        x, w = crops(rng, plan.batch)
        posterior = vae.encode(x).latent_dist
        rec = vae.decode(posterior.sample(generator=gen)).sample
        l1 = _weighted_l1(rec, x, w)
        kl = posterior.kl().mean() / x[0].numel()
        return l1 + 1e-4 * kl, {"l1_weighted": l1.item(), "kl": kl.item()}

    runner = StageRunner("vae", vae, plan, **runner_args["common"])
    trained = runner.run(step)
    means = encode_latents(trained, data, scale=1.0)[0]
    return trained, float(1.0 / means.std())


def train_decoder(vae, data: TrainingSet, scaling: float, runner_args: dict) -> nn.Module:
    """Fine-tune the VAE decoder (encoder frozen, so the UNet's latents do not move) to decode
    noisy latents ``mean + sigma * eps``, ``sigma ~ U(0, 0.5)`` in the UNet's scaled units, into
    the clean crop: a sampled latent is never exactly on the encoder's manifold, and a decoder
    that saw only exact latents turns the difference into speckle."""
    plan: StagePlan = runner_args["plan"]
    crops = ItemCrops(data)
    for module in (vae.encoder, vae.quant_conv):
        module.requires_grad_(False)

    def step(rng, gen):
        x, w = crops(rng, plan.batch)
        with torch.no_grad():
            mean = vae.encode(x).latent_dist.mean * scaling
        sigma = torch.rand(plan.batch, 1, 1, 1, generator=gen) * 0.5
        rec = vae.decode((mean + sigma * torch.randn(mean.shape, generator=gen)) / scaling).sample
        l1 = _weighted_l1(rec, x, w)
        return l1, {"l1_weighted_noisy": l1.item()}

    runner = StageRunner("decoder", vae, plan, **runner_args["common"])
    trained = runner.run(step)
    trained.requires_grad_(True)
    return trained


@torch.no_grad()
def encode_latents(vae, data: TrainingSet, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """Posterior means and stds ``[N, 4, 32, 32]`` of every image, times ``scale``."""
    vae.eval()
    means, stds = [], []
    for start in range(0, len(data), 16):
        dist = vae.encode(_to_unit(data.images[start:start + 16])).latent_dist
        means.append(dist.mean * scale)
        stds.append(dist.std * scale)
    return torch.cat(means).numpy(), torch.cat(stds).numpy()


# ----------------------------------------------------------------------------- GLIGEN UNet

class PhraseEncoder:
    """The frozen text encoder's caption states ``[77, D]`` and phrase features ``[D]``, cached by text."""

    def __init__(self, text_encoder, tokenizer) -> None:
        self.text_encoder, self.tokenizer = text_encoder.eval(), tokenizer
        self.cache: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    @torch.no_grad()
    def __call__(self, text: str) -> tuple[torch.Tensor, torch.Tensor]:
        if text not in self.cache:
            ids = self.tokenizer([text], padding="max_length", max_length=77, truncation=True,
                                 return_tensors="pt").input_ids
            out = self.text_encoder(ids)
            self.cache[text] = (out.last_hidden_state[0], out.pooler_output[0])
        return self.cache[text]


CROP = 16  # latent side of a crop step (128 px)
FULL_SHARE = 0.3  # steps at the served 32 x 32 latent; the others on 16 x 16 crops, 3x the batch


def _unet_sample(rng, data: TrainingSet, i: int, side: int) -> tuple[int, int, list, np.ndarray]:
    """One training sample's window and grounding: ``(ox, oy)`` latent offset of a ``side``
    window, the (class, normalised box in the window) pairs to paint, and the window's keep mask.

    70% of samples paint every item, the others a random subset (the rest stay visible). A crop
    is placed around one of the painted items; items mostly outside it are left unpainted."""
    items = data.items[i]
    chosen = items if rng.random() < 0.7 else [items[k] for k in sorted(
        rng.choice(len(items), int(rng.integers(1, len(items) + 1)), replace=False))]
    ox = oy = 0
    anchor = None
    if side < LATENT:
        anchor = chosen[int(rng.integers(len(chosen)))]
        x0, y0, x1, y1 = anchor.box
        ox = int(np.clip((x0 + x1) / 16 - side / 2 + rng.integers(-3, 4), 0, LATENT - side))
        oy = int(np.clip((y0 + y1) / 16 - side / 2 + rng.integers(-3, 4), 0, LATENT - side))
    span = side * 8
    grounding = []
    for it in chosen:
        x0, y0, x1, y1 = it.box
        cx0, cy0 = max(x0 - ox * 8, 0), max(y0 - oy * 8, 0)
        cx1, cy1 = min(x1 - ox * 8, span), min(y1 - oy * 8, span)
        inside = max(0, cx1 - cx0) * max(0, cy1 - cy0)
        if it is anchor or inside >= 0.3 * (x1 - x0) * (y1 - y0):
            grounding.append((it.class_name, np.array([cx0, cy0, cx1, cy1], np.float32) / span))
    keep = inpaint_mask(np.array([b for _, b in grounding], np.float32).reshape(-1, 4), side)
    return ox, oy, grounding, keep


def train_unet(unet, data: TrainingSet, latents: tuple[np.ndarray, np.ndarray], phrases: PhraseEncoder,
               runner_args: dict) -> nn.Module:
    """GLIGEN inpainting training (see the module docstring): 30% of the steps at the served
    latent size, the others on 16 x 16 latent crops around an item with three times the batch
    (the mask channel places the item, the box is normalised to the window); Min-SNR-5
    timestep weighting."""
    from diffusers import DDIMScheduler

    from xsyn.api.diffusion import SD14_SCHEDULER

    plan: StagePlan = runner_args["plan"]
    alphas = DDIMScheduler(**SD14_SCHEDULER).alphas_cumprod.float()
    means, stds = (torch.from_numpy(a) for a in latents)
    usable = [i for i, items in enumerate(data.items) if items]
    dim = phrases("")[1].shape[0]

    def step(rng, gen):
        side = LATENT if rng.random() < FULL_SHARE else CROP
        b = plan.batch if side == LATENT else 3 * plan.batch
        idx = [usable[int(k)] for k in rng.integers(len(usable), size=b)]
        states, keep, z_mean, z_std = [], [], [], []
        boxes, feats, present = torch.zeros(b, MAX_OBJECTS, 4), torch.zeros(b, MAX_OBJECTS, dim), torch.zeros(b, MAX_OBJECTS)
        for row, i in enumerate(idx):
            ox, oy, grounding, window_keep = _unet_sample(rng, data, i, side)
            keep.append(window_keep)
            z_mean.append(means[i, :, oy:oy + side, ox:ox + side])
            z_std.append(stds[i, :, oy:oy + side, ox:ox + side])
            drop = rng.random()
            states.append(phrases("" if drop < 0.1 else " ".join(c for c, _ in grounding))[0])
            if drop >= 0.2:  # 0..0.1: unconditional, 0.1..0.2: caption without grounding
                for k, (cls, box) in enumerate(grounding):
                    boxes[row, k], feats[row, k], present[row, k] = torch.from_numpy(box), phrases(cls)[1], 1
        keep_t = torch.from_numpy(np.stack(keep))[:, None]
        z_mean, z_std = torch.stack(z_mean), torch.stack(z_std)
        z0 = z_mean + z_std * torch.randn(z_mean.shape, generator=gen)
        noise = torch.randn(z0.shape, generator=gen)
        t = torch.randint(0, 1000, (b,), generator=gen)
        a = alphas[t].view(-1, 1, 1, 1)
        zt = a.sqrt() * z0 + (1 - a).sqrt() * noise
        gligen = {"boxes": boxes, "positive_embeddings": feats, "masks": present}
        pred = unet(torch.cat([zt, z0 * keep_t, keep_t], dim=1), t, torch.stack(states),
                    cross_attention_kwargs={"gligen": gligen}).sample
        snr = a / (1 - a)
        spatial = 1 + 4 * (1 - keep_t)
        err = (pred - noise).pow(2)
        loss = (err * spatial * (snr.clamp(max=5.0) / snr)).sum() / (spatial.sum() * 4)
        inside = ((err.detach() * (1 - keep_t)).sum() / ((1 - keep_t).sum() * 4 + 1e-6)).item()
        return loss, {"loss": loss.item(), "eps_mse_in_boxes": inside}

    runner = StageRunner("unet", unet, plan, **runner_args["common"], ema=0.995)
    return runner.run(step)


# ----------------------------------------------------------------------------- APSAM

def _dice_bce(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-mask Dice + BCE, ``logits``/``target`` ``[P, H, W]`` -> ``[P]``."""
    prob = logits.sigmoid()
    inter = (prob * target).sum((1, 2))
    dice = 1 - (2 * inter + 1) / (prob.sum((1, 2)) + target.sum((1, 2)) + 1)
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none").mean((1, 2))
    return dice + bce


def _hard_iou(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    pred = logits.detach() > 0
    tgt = target > 0.5
    inter = (pred & tgt).sum((-2, -1)).float()
    union = (pred | tgt).sum((-2, -1)).float()
    return inter / union.clamp(min=1)


def _prompt_sets(rng, objects, items: int, scale: float):
    """Prompt sets for one image's objects in the encoder frame (``scale`` = S_enc / S).

    The first ``items`` objects are items: each gets a click and one of a refinement (the click
    plus two more points), a box, or CAR's prompt (foreground points, one background point
    inside the box, the box). Background objects get a click or a box. (Every kind for every
    object would cost a decoder pass each; one drawn per step covers them over the run.)

    Returns ``coords [P, 18, 2]``, ``labels [P, 18]`` (-1 padding), the object index per set,
    the kind per set (``click``, ``refine``, ``box``, ``car``).
    """
    coords, labels, owner, kind = [], [], [], []

    def add(points, labs, item, what):
        pad = 18 - len(points)
        coords.append(list(points) + [(0.0, 0.0)] * pad)
        labels.append(list(labs) + [-1.0] * pad)
        owner.append(item)
        kind.append(what)

    for k, it in enumerate(objects):
        click = _random_point(rng, it.mask)
        x0, y0, x1, y1 = it.box
        w, h = x1 - x0, y1 - y0
        jit = rng.normal(0, 0.06, 4) * np.array([w, h, w, h])
        box = [(x0 + jit[0], y0 + jit[1]), (x1 + jit[2], y1 + jit[3])]
        if k >= items:
            if rng.random() < 0.5:
                add([click], [1.0], k, "click")
            else:
                add(box, [2.0, 3.0], k, "box")
            continue
        add([click], [1.0], k, "click")
        second = ("refine", "box", "car")[int(rng.integers(3))]
        if second == "refine":
            add([click, _random_point(rng, it.mask), _random_point(rng, it.mask)], [1.0, 1.0, 1.0], k, "refine")
        elif second == "box":
            add(box, [2.0, 3.0], k, "box")
        else:
            fg = [_random_point(rng, it.mask) for _ in range(int(rng.integers(1, 16)))]  # MPS n <= 4: <= 15
            outside = np.zeros_like(it.mask)
            outside[y0:y1, x0:x1] = True
            outside &= ~it.mask
            bg = [_random_point(rng, outside)] if outside.any() else []
            add(fg + bg + box, [1.0] * len(fg) + [0.0] * len(bg) + [2.0, 3.0], k, "car")
    xy = np.asarray(coords, np.float32) * scale
    return torch.from_numpy(xy), torch.tensor(labels, dtype=torch.float32), owner, kind


def train_segmenter(model, kind: str, data: TrainingSet, runner_args: dict) -> nn.Module:
    """APSAM (``kind`` ``apsam``) or the plain-SAM baseline (``sam``) on clicks, refinement
    clicks, boxes and CAR-style prompts (see the module docstring)."""
    from xsyn.export.apsam_arch import GRID
    from xsyn.export.wrappers import SamDecoderExport, predict_masks_with_tokens

    plan: StagePlan = runner_args["plan"]
    enc = model.image_encoder.img_size
    grid = GRID if kind == "apsam" else enc // 16
    low = 4 * grid
    prompts = SamDecoderExport(model, square=kind == "apsam")  # its prompt and mask embedding, trained through
    inputs = np.stack([encoder_input(im, enc, kind) for im in data.images])  # as the served pipeline
    targets = [[torch.from_numpy(_downsize_mask(it.mask, low)).float() for it in items] for items in data.items]
    cells = [torch.from_numpy(_downsize_mask(np.any([it.mask for it in items], axis=0), grid).reshape(-1)).long()
             if items else torch.zeros(grid * grid, dtype=torch.long) for items in data.items]
    usable = [i for i, items in enumerate(data.items) if items]
    decoder = model.mask_decoder

    def step(rng, gen):
        idx = [usable[int(k)] for k in rng.integers(len(usable), size=plan.batch)]
        image = torch.from_numpy(inputs[idx])
        extra = {}
        if kind == "apsam":
            embedding, energy = model.image_encoder(image)
            tokens = decoder.select_mask_tokens(energy)
            cell_loss = F.cross_entropy(decoder.classifier(energy).flatten(0, 1), torch.cat([cells[i] for i in idx]))
            extra["cells_ce"] = cell_loss
        else:
            embedding = model.image_encoder(image)
            tokens = decoder.mask_tokens.weight[None].expand(len(idx), -1, -1)
        pe = model.prompt_encoder.get_dense_pe()
        mask_losses, iou_losses = [], []
        no_mask = prompts._embed_masks(torch.zeros(1, 1, low, low), torch.zeros(1))
        for row, i in enumerate(idx):
            objects = list(data.items[i])
            if data.background[i]:  # two background objects too: SAM segments everything
                picks = rng.choice(len(data.background[i]), min(2, len(data.background[i])), replace=False)
                objects += [data.background[i][int(k)] for k in sorted(picks)]
            coords, labels, owner, what = _prompt_sets(rng, objects, len(data.items[i]), enc / SIZE)
            target = torch.stack([targets[i][k] if k < len(targets[i]) else
                                  torch.from_numpy(_downsize_mask(objects[k].mask, low)).float() for k in owner])
            masks, iou = predict_masks_with_tokens(decoder, embedding[row:row + 1], pe,
                                                   prompts._embed_points(coords, labels), no_mask, tokens[row:row + 1])
            refine = [p for p, w in enumerate(what) if w == "refine"]
            if refine and rng.random() < 0.5:  # the served second pass: the click's logits as mask input
                click_of = {owner[p]: p for p, w in enumerate(what) if w == "click"}
                clicks = [click_of[owner[p]] for p in refine]
                dense = prompts._embed_masks(masks[clicks, :1].detach(), torch.ones(1))
                again, again_iou = predict_masks_with_tokens(
                    decoder, embedding[row:row + 1], pe, prompts._embed_points(coords[refine], labels[refine]), dense,
                    tokens[row:row + 1])
                masks, iou = masks.clone(), iou.clone()
                masks[refine], iou[refine] = again, again_iou
            single = _dice_bce(masks[:, 0], target)
            multi = torch.stack([_dice_bce(masks[:, m], target) for m in range(1, masks.shape[1])], dim=1)
            is_click = torch.tensor([w == "click" for w in what])
            mask_losses.append(single + torch.where(is_click, multi.min(dim=1).values, torch.zeros_like(single)))
            actual = torch.stack([_hard_iou(masks[:, m], target) for m in range(masks.shape[1])], dim=1)
            iou_losses.append((iou - actual).pow(2).mean(dim=1))
        mask_loss = torch.cat(mask_losses).mean()
        iou_loss = torch.cat(iou_losses).mean()
        loss = mask_loss + iou_loss + 0.1 * sum(extra.values(), torch.zeros(()))
        return loss, {"dice_bce": mask_loss.item(), "iou_mse": iou_loss.item(), **{k: v.item() for k, v in extra.items()}}

    runner = StageRunner(kind, model, plan, **runner_args["common"])
    return runner.run(step)


# ----------------------------------------------------------------------------- the whole run

def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def train_tiny(data: TrainingSet, out: Path, work: Path, seed: int = 0, plan: dict[str, StagePlan] | None = None,
               checkpoint_every: int = 100, log: Callable[[str], None] = print, command: str = "") -> Path:
    """Train every stage and write the preset folder ``out`` (``{vae,unet,sam}.safetensors`` in
    float16, ``sam_baseline.safetensors``: a plain tiny SAM trained the same way, the annotation
    baseline, and ``manifest.json`` with their sha256); ``work`` keeps checkpoints and loss logs.

    ``out`` is replaced only when everything is trained and written (a staging folder is renamed).
    Returns ``out``.
    """
    from safetensors.torch import save_file
    from transformers import CLIPTokenizer

    from xsyn.export.sam_arch import TINY_SAM, build_sam
    from xsyn.export.sources import _seeded, preset_bundle

    plan = plan or PLAN
    work.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    start = time.perf_counter()
    base = preset_bundle("tiny-random", seed=0, work_dir=work)
    common = {"work": work, "seed": seed, "log": log, "checkpoint_every": checkpoint_every}
    log(f"train-tiny: {len(data)} images, {sum(map(len, data.items))} objects from {data.folder}; "
        + ", ".join(f"{k} {p.steps} steps x {p.batch}" for k, p in plan.items()))
    vae, scaling = train_vae(base.vae, data, {"plan": plan["vae"], "common": common})
    log(f"vae: latent scaling factor {scaling:.5f}")
    latents = encode_latents(vae, data, scaling)
    tokenizer = CLIPTokenizer(str(base.tokenizer_dir / "vocab.json"), str(base.tokenizer_dir / "merges.txt"))
    unet = train_unet(base.unet, data, latents, PhraseEncoder(base.text_encoder, tokenizer),
                      {"plan": plan["unet"], "common": common})
    vae = train_decoder(vae, data, scaling, {"plan": plan["decoder"], "common": common})
    apsam = train_segmenter(base.sam, "apsam", data, {"plan": plan["apsam"], "common": common})
    sam = train_segmenter(_seeded(3, lambda: build_sam(TINY_SAM)), "sam", data, {"plan": plan["sam"], "common": common})

    staging = out.with_name(out.name + ".staging")
    if staging.exists():
        import shutil

        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    files = {}
    for name, module in (("vae", vae), ("unet", unet), ("sam", apsam), ("sam_baseline", sam)):
        state = {k: v.detach().to(torch.float16).contiguous() for k, v in module.state_dict().items()}
        save_file(state, str(staging / f"{name}.safetensors"), metadata={"part": name, "preset": "tiny"})
        files[f"{name}.safetensors"] = file_sha256(staging / f"{name}.safetensors")
    final_losses = {}
    for stage in STAGES:
        lines = (work / f"{stage}_losses.jsonl").read_text().splitlines()
        final_losses[stage] = json.loads(lines[-1]) if lines else {}
    manifest = {
        "format": 1, "preset": "tiny", "seed": seed, "command": command,
        "plan": {k: p.__dict__ for k, p in plan.items()}, "vae_scaling_factor": scaling,
        "text_encoder": "tiny-random preset seed 0 (frozen)",
        "data": {"folder": str(data.folder), "images": len(data), "objects": sum(map(len, data.items))},
        "final_losses": final_losses, "files": files, "dtype": "float16",
        "torch": torch.__version__, "train_seconds": round(time.perf_counter() - start, 1),
    }
    (staging / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    if out.exists():
        import shutil

        old = out.with_name(out.name + ".old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(out, old)
        os.replace(staging, out)
        shutil.rmtree(old)
    else:
        os.replace(staging, out)
    log(f"train-tiny: wrote {out} ({sum((out / f).stat().st_size for f in files) / 1e6:.1f} MB) in "
        f"{(time.perf_counter() - start) / 60:.1f} min")
    return out
