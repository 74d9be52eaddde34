"""Generated model configuration: committed files in sync, both targets valid."""

from __future__ import annotations

from pathlib import Path

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from xsyn.export.networks import NETWORK_NAMES, select_networks
from xsyn.serving.repository import LEAF_SHIM, config_text, leaf_config

ROOT = Path(__file__).resolve().parents[2]


def test_committed_repository_matches_the_tiny_specs(tiny_bundle):
    for net in select_networks(tiny_bundle):
        folder = ROOT / "model_repository" / net.spec.name
        assert (folder / "config.pbtxt").read_text() == config_text(leaf_config(net.spec)), net.spec.name
        assert (folder / "1" / "model.py").read_text() == LEAF_SHIM
    assert sorted(p.name for p in (ROOT / "model_repository").iterdir() if p.is_dir()) == sorted([*NETWORK_NAMES, "xsyn", "apsam"])


def test_container_target_uses_native_backends(tiny_bundle):
    unet = select_networks(tiny_bundle, only=("unet",))[0].spec
    onnx = text_format.Parse(config_text(leaf_config(unet, "container", "onnx")), mc.ModelConfig())
    plan = leaf_config(unet, "container", "tensorrt")
    assert onnx.platform == "onnxruntime_onnx" and onnx.default_model_filename == "model.onnx"
    assert plan.platform == "tensorrt_plan" and plan.instance_group[0].kind == mc.ModelInstanceGroup.KIND_GPU
    assert onnx.max_batch_size == 8 and list(onnx.dynamic_batching.preferred_batch_size) == [2, 4, 8]
    assert [i.name for i in onnx.input] == [t.name for t in unet.inputs]
    assert list(onnx.input[1].dims) == [1] and onnx.input[1].HasField("reshape")  # per-sample timestep
    decoder = select_networks(tiny_bundle, only=("sam_decoder",))[0].spec
    cfg = leaf_config(decoder)
    assert cfg.max_batch_size == 0 and list(cfg.input[1].dims) == [-1, -1, 2]


def test_pipeline_models_are_generated_from_their_specs():
    from xsyn.export.pipelines import PIPELINES, XSYN
    from xsyn.serving.repository import pipeline_config, pipeline_instances, pipeline_shim
    from xsyn.settings import ServerSettings

    for spec in PIPELINES:
        folder = ROOT / "model_repository" / spec.name
        assert (folder / "config.pbtxt").read_text() == config_text(pipeline_config(spec)), spec.name
        assert (folder / "1" / "model.py").read_text() == pipeline_shim(spec)
        config = pipeline_config(spec)
        assert [i.name for i in config.input] == [t.name for t in spec.inputs]
        assert [i.name for i in config.input if i.optional] == list(spec.optional_inputs)
        assert config.instance_group[0].count == pipeline_instances(spec, ServerSettings())
        assert spec.module in pipeline_shim(spec)
    assert pipeline_instances(XSYN, ServerSettings()) == 4
    assert pipeline_instances(XSYN, ServerSettings(synthesis_instances=2)) == 2


def test_manifest_states_the_profile_and_the_unet_spec_sets_the_object_limit(tiny_repo):
    import json

    from xsyn.api.limits import MAX_OBJECTS
    from xsyn.ensembles.assets import PipelineAssets

    manifest = json.loads((tiny_repo / "unet" / "1" / "export_manifest.json").read_text())
    assert manifest["profile"] == "tiny"
    assets = PipelineAssets.load(tiny_repo)
    assert assets.profile == "tiny" and assets.max_objects == MAX_OBJECTS
