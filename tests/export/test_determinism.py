"""The tiny-random preset is a pure function of its seed: weights, graphs and cache keys."""

import torch

from xsyn.export.build import module_fingerprint
from xsyn.export.networks import select_networks
from xsyn.export.onnx_export import export_onnx
from xsyn.export.sources import preset_bundle


def _state(bundle):
    return {part: getattr(bundle, part).state_dict()
            for part in ("text_encoder", "unet", "vae", "sam")}


def test_same_seed_same_weights_and_graphs(tmp_path):
    a = preset_bundle("tiny-random", seed=0, work_dir=tmp_path / "a")
    b = preset_bundle("tiny-random", seed=0, work_dir=tmp_path / "b")
    sa, sb = _state(a), _state(b)
    for part in sa:
        assert sa[part].keys() == sb[part].keys()
        assert all(torch.equal(sa[part][k], sb[part][k]) for k in sa[part]), part
    net_a = select_networks(a, only=("sam_decoder",))[0]
    net_b = select_networks(b, only=("sam_decoder",))[0]
    assert module_fingerprint(net_a) == module_fingerprint(net_b)
    ga = export_onnx(net_a, tmp_path / "ga").read_bytes()
    gb = export_onnx(net_b, tmp_path / "gb").read_bytes()
    assert ga == gb


def test_other_seed_other_weights(tmp_path):
    a = preset_bundle("tiny-random", seed=0, work_dir=tmp_path)
    c = preset_bundle("tiny-random", seed=1, work_dir=tmp_path)
    assert not torch.equal(a.unet.conv_in.weight, c.unet.conv_in.weight)


def test_zero_initialised_parameters_are_filled(tmp_path):
    bundle = preset_bundle("tiny-random", seed=0, work_dir=tmp_path)
    gates = [m.alpha_attn for m in bundle.unet.modules() if hasattr(m, "alpha_attn")]
    assert gates and all(float(g.detach()) != 0.0 for g in gates)  # GLIGEN fuser is not a no-op
