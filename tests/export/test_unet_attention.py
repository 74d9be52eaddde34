"""UNet graph vs the unexported diffusers UNet, with maps captured by an independent processor."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from xsyn.export.attention_capture import attention_layers, default_capture_layers, output_name
from xsyn.export.networks import select_networks
from xsyn.export.onnx_export import compare_outputs, onnxruntime_outputs
from xsyn.export.sources import _unet_config, preset_bundle

pytestmark = pytest.mark.slow


class ReferenceProbsProcessor:
    """diffusers' classic attention path (``get_attention_scores``, baddbmm) recording head-mean probs."""

    def __init__(self, store: dict, key: str):
        self.store, self.key = store, key

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kw):
        query = attn.head_to_batch_dim(attn.to_q(hidden_states))
        key = attn.head_to_batch_dim(attn.to_k(encoder_hidden_states))
        value = attn.head_to_batch_dim(attn.to_v(encoder_hidden_states))
        probs = attn.get_attention_scores(query, key, None)  # [B*heads, N, T]
        b = hidden_states.shape[0]
        self.store[self.key] = probs.reshape(b, attn.heads, *probs.shape[1:]).mean(1)
        out = attn.batch_to_head_dim(torch.bmm(probs, value))
        return attn.to_out[1](attn.to_out[0](out))


def test_default_capture_layers_are_the_sd14_16x16_layers():
    from diffusers import UNet2DConditionModel

    with torch.device("meta"):
        sd14 = UNet2DConditionModel(**_unet_config(tiny=False))
    assert default_capture_layers(sd14) == (
        "down_blocks.2.attentions.0", "down_blocks.2.attentions.1",
        "up_blocks.1.attentions.0", "up_blocks.1.attentions.1", "up_blocks.1.attentions.2",
    )
    assert attention_layers(sd14)["up_blocks.3.attentions.0"] == 0


def test_attention_outputs_match_an_independent_processor(tiny_export, tmp_path):
    out, proc, _ = tiny_export
    assert proc.returncode == 0
    export_bundle = preset_bundle("tiny", seed=0, work_dir=tmp_path / "a")
    net = select_networks(export_bundle, only=("unet",))[0]
    inputs = net.sample_inputs(np.random.default_rng(7))
    names = [t.name for t in net.spec.outputs]
    got = dict(zip(names, onnxruntime_outputs(out / "unet" / "1" / "model.onnx", inputs, names)))

    unet = preset_bundle("tiny", seed=0, work_dir=tmp_path / "b").unet  # plain diffusers, never wrapped
    store: dict = {}
    for layer in default_capture_layers(unet):
        for block in unet.get_submodule(layer).transformer_blocks:
            block.attn2.set_processor(ReferenceProbsProcessor(store, layer))
    t = {k: torch.from_numpy(v) for k, v in inputs.items()}
    gligen = {"boxes": t["boxes"], "positive_embeddings": t["phrase_embeddings"], "masks": t["box_masks"]}
    with torch.no_grad():
        noise = unet(t["sample"], t["timestep"], encoder_hidden_states=t["encoder_hidden_states"],
                     cross_attention_kwargs={"gligen": gligen}).sample

    ref_names, ref, cand = ["noise_pred"], [noise.numpy()], [got["noise_pred"]]
    for layer, probs in store.items():
        b, n, tokens = probs.shape
        side = int(round(n ** 0.5))
        ref_names.append(layer)
        ref.append(probs.transpose(1, 2).reshape(b, tokens, side, side).numpy())
        cand.append(got[output_name(layer)])
    report = compare_outputs(ref_names, ref, cand, tolerance=1e-4)
    assert len(store) == 3 and all(v["ok"] for v in report.values()), report
    maps = got[output_name("down_blocks.2.attentions.0")]
    np.testing.assert_allclose(maps.sum(axis=1), 1.0, atol=1e-5)  # a softmax over the 77 tokens


def test_capture_layers_are_configurable(tmp_path):
    from xsyn.errors import InvalidArgument

    bundle = preset_bundle("tiny", seed=0, work_dir=tmp_path)
    net = select_networks(bundle, only=("unet",), capture_layers=("up_blocks.3.attentions.1",))[0]
    assert [t.name for t in net.spec.outputs] == ["noise_pred", "attn_up_blocks_3_attentions_1"]
    assert net.spec.outputs[1].shape == ("batch", 77, 32, 32)
    with pytest.raises(InvalidArgument, match="mid_block"):
        select_networks(bundle, only=("unet",), capture_layers=("mid_block",))
