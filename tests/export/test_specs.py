import json

import pytest

from xsyn.export.specs import NetworkSpec, TensorSpec


def _spec(**kw):
    base = dict(
        name="n",
        inputs=(TensorSpec("x", "float32", ("batch", 3, "h")),),
        outputs=(TensorSpec("y", "float32", ("batch", 3, "h")),),
        profile=(("batch", 1, 2, 4), ("h", 8, 16, 32)),
        max_batch_size=4,
    )
    base.update(kw)
    return NetworkSpec(**base)


def test_concrete_shapes_follow_the_profile():
    spec = _spec()
    assert spec.concrete_shape(spec.inputs[0], "min") == (1, 3, 8)
    assert spec.concrete_shape(spec.inputs[0], "opt") == (2, 3, 16)
    assert spec.concrete_shape(spec.inputs[0], "max") == (4, 3, 32)
    assert spec.inputs[0].dynamic_axes == {0: "batch", 2: "h"}


def test_symbolic_input_dim_without_profile_is_rejected():
    with pytest.raises(ValueError, match="has no profile"):
        _spec(profile=(("batch", 1, 2, 4),))


def test_profile_must_be_ordered():
    with pytest.raises(ValueError, match="min <= opt <= max"):
        _spec(profile=(("batch", 1, 2, 4), ("h", 16, 8, 32)))


def test_batched_tensors_start_with_batch():
    with pytest.raises(ValueError, match="must start with 'batch'"):
        _spec(outputs=(TensorSpec("y", "float32", (3, "batch")),))


def test_unknown_dtype_is_rejected():
    with pytest.raises(ValueError, match="dtype"):
        TensorSpec("x", "float64", (1,))


def test_json_is_canonical():
    assert _spec().to_json() == _spec().to_json()
    assert _spec().to_json() != _spec(tolerance=1e-3).to_json()


def test_dict_roundtrip():
    import json

    from xsyn.export.specs import DynamicBatching

    spec = _spec(dynamic_batching=DynamicBatching((2, 4), 100), extra=(("k", "v"),))
    assert NetworkSpec.from_dict(json.loads(spec.to_json())) == spec


def test_the_served_model_names_clients_ask_about_are_the_specs():
    from xsyn.api.models import LEAF_MODELS, PIPELINE_MODELS
    from xsyn.export.networks import NETWORK_NAMES
    from xsyn.export.pipelines import PIPELINES

    assert set(LEAF_MODELS) == set(NETWORK_NAMES)
    assert PIPELINE_MODELS == tuple(p.name for p in PIPELINES)


def test_value_contracts_survive_the_json_round_trip(tiny_bundle):
    from xsyn.export.networks import select_networks
    from xsyn.export.specs import NetworkSpec

    for net in select_networks(tiny_bundle):
        assert NetworkSpec.from_dict(json.loads(net.spec.to_json())) == net.spec
    decoder = select_networks(tiny_bundle, only=("sam_decoder",))[0].spec
    labels = next(t for t in decoder.inputs if t.name == "point_labels")
    assert labels.choices == (-1, 0, 1, 2, 3) and decoder.value_dims[0] == ("orig_h", "orig_im_size", 0)
