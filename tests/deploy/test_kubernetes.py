"""deploy/kubernetes rendered by the real kustomize (kubectl from PyPI), every object validated
offline against the Kubernetes 1.37 schemas (strict: unknown fields fail), and the wiring the
fleet depends on checked: GPUs, Triton's health endpoints, the headless Service, scraping, and
the autoscaler's metric served by the adapter rule from series a real Triton exports."""

from __future__ import annotations

import os
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
KUBERNETES = ROOT / "deploy" / "kubernetes"
OVERLAYS = ("volume", "s3")
SCHEMA_VERSION = "1.37.0"


def render(folder: Path) -> list[dict]:
    kubectl = Path(sys.executable).with_name("kubectl")
    proc = subprocess.run([str(kubectl if kubectl.exists() else "kubectl"), "kustomize", str(folder)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return [doc for doc in yaml.safe_load_all(proc.stdout) if doc]


def by_kind(docs: list[dict]) -> dict[str, list[dict]]:
    kinds: dict[str, list[dict]] = {}
    for doc in docs:
        kinds.setdefault(doc["kind"], []).append(doc)
    return kinds


@pytest.fixture(scope="module", params=OVERLAYS)
def rendered(request) -> dict[str, list[dict]]:
    return by_kind(render(KUBERNETES / "overlays" / request.param))


def test_every_rendered_object_is_valid_kubernetes():
    import kubernetes_validate

    for folder in [KUBERNETES / "base", *(KUBERNETES / "overlays" / o for o in OVERLAYS)]:
        docs = render(folder)
        assert docs
        for doc in docs:
            kubernetes_validate.validate(doc, SCHEMA_VERSION, strict=True)

    deployment = by_kind(render(KUBERNETES / "base"))["Deployment"][0]
    deployment["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGet"]["paht"] = "/x"
    with pytest.raises(kubernetes_validate.ValidationError):  # the validator does reject a typo
        kubernetes_validate.validate(deployment, SCHEMA_VERSION, strict=True)


def _triton(kinds) -> tuple[dict, dict]:
    pod = kinds["Deployment"][0]["spec"]["template"]
    return pod, next(c for c in pod["spec"]["containers"] if c["name"] == "triton")


def test_servers_get_a_gpu_each_and_are_probed_on_tritons_health_endpoints(rendered):
    pod, triton = _triton(rendered)
    assert triton["resources"]["requests"]["nvidia.com/gpu"] == triton["resources"]["limits"]["nvidia.com/gpu"] == "1"
    ports = {p["name"]: p["containerPort"] for p in triton["ports"]}
    assert ports == {"grpc": 8001, "http": 8000, "metrics": 8002}  # docker/entrypoint.sh's ports
    assert triton["readinessProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": "http"}
    assert triton["startupProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert triton["livenessProbe"]["httpGet"] == {"path": "/v2/health/live", "port": "http"}
    assert triton["args"] == ["serve-only"] and triton["image"] == "xsyn:0.1.0"
    assert pod["metadata"]["annotations"]["prometheus.io/port"] == str(ports["metrics"])
    assert any(v["name"] == "dshm" and v["emptyDir"]["medium"] == "Memory" for v in pod["spec"]["volumes"])


def test_the_headless_service_selects_the_server_pods(rendered):
    pod, _ = _triton(rendered)
    service = rendered["Service"][0]
    assert service["spec"]["clusterIP"] == "None"
    assert service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    assert {p["name"]: p["port"] for p in service["spec"]["ports"]}["grpc"] == 8001
    pdb = rendered["PodDisruptionBudget"][0]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()


def test_the_model_repository_comes_from_the_overlay(rendered):
    pod, triton = _triton(rendered)
    models = {e["name"]: e.get("value") for e in triton["env"]}["XSYN_MODELS"]
    if models.startswith("s3://"):
        assert triton["envFrom"] == [{"secretRef": {"name": "xsyn-s3"}}]
        assert "models" not in {v["name"] for v in pod["spec"]["volumes"]}
        return
    claims = {c["metadata"]["name"] for c in rendered["PersistentVolumeClaim"]}
    volume = next(v for v in pod["spec"]["volumes"] if v["name"] == "models")
    assert volume["persistentVolumeClaim"]["claimName"] in claims
    assert {"mountPath": models, "name": "models", "readOnly": True} in triton["volumeMounts"]
    job = rendered["Job"][0]["spec"]["template"]["spec"]
    assert job["containers"][0]["args"] == ["prepare"]
    assert {v["persistentVolumeClaim"]["claimName"] for v in job["volumes"]} <= claims
    assert "xsyn/config.pbtxt" in pod["spec"]["initContainers"][0]["command"][-1]


def _adapter_rule(rendered) -> dict:
    config = next(c for c in rendered["ConfigMap"] if c["metadata"]["name"] == "xsyn-prometheus-adapter-rules")
    return yaml.safe_load(config["data"]["config.yaml"])["rules"][0]


def test_the_autoscaler_scales_the_servers_on_the_adapters_queue_time_metric(rendered):
    hpa = rendered["HorizontalPodAutoscaler"][0]["spec"]
    assert hpa["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment",
                                     "name": rendered["Deployment"][0]["metadata"]["name"]}
    rule = _adapter_rule(rendered)
    assert hpa["metrics"][0]["pods"]["metric"]["name"] == rule["name"]["as"]
    assert hpa["minReplicas"] >= 2 and hpa["maxReplicas"] > hpa["minReplicas"]


def test_the_entrypoint_serve_only_needs_a_prepared_repository(tmp_path):
    proc = subprocess.run(["bash", str(ROOT / "docker" / "entrypoint.sh"), "serve-only"], capture_output=True,
                          text=True, env={**os.environ, "XSYN_MODELS": str(tmp_path)}, timeout=30)
    assert proc.returncode == 2 and "no prepared repository" in proc.stderr


@pytest.mark.slow
def test_the_adapter_rule_reads_series_a_real_triton_exports(tiny_server):
    """The rule's series and the models it filters on exist in a running server's /metrics, and
    the readiness probe's path answers 200 there."""
    import re

    options = tiny_server.options
    text = urllib.request.urlopen(options.metrics_url, timeout=10).read().decode()
    rule = _adapter_rule(by_kind(render(KUBERNETES / "overlays" / "s3")))
    series = re.findall(r"\b(nv_\w+)\{", rule["metricsQuery"])
    assert set(series) == {"nv_inference_queue_duration_us", "nv_inference_request_success"}
    for name in series:
        models = set(re.findall(rf'^{name}\{{[^}}]*model="([^"]+)"', text, re.M))
        assert {"xsyn", "apsam"} <= models, (name, models)
    ready = urllib.request.urlopen(f"http://{options.client_host}:{options.http_port}/v2/health/ready", timeout=10)
    assert ready.status == 200
