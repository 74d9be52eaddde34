"""The one error table: every status round-trips, and a real server keeps statuses through BLS.

The served test starts a real tritonserver on a copy of the tiny repository's ``vae_decoder``
plus a test-only BLS model (``bls_probe/model.py``) that calls it with a NaN latent (the leaf
answers INVALID_ARGUMENT) or raises the statuses Triton's Python backend cannot carry.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from xsyn.api.tensors import bytes_input
from xsyn.client.sdk import XsynClient, map_error
from xsyn.errors import (
    BY_STATUS, ERROR_TABLE, Cancelled, DeadlineExceeded, FailedPrecondition, InternalError, InvalidArgument,
    MissingDependency, NotFound, ResourceExhausted, Unavailable, error_from_wire, wire_message,
)
from xsyn.serving.server import ServerOptions, TritonServer, free_port

PROBE = Path(__file__).parent / "bls_probe" / "model.py"


def test_every_status_we_use_is_in_the_table_and_round_trips():
    used = {InvalidArgument, NotFound, Unavailable, Cancelled, InternalError, ResourceExhausted, FailedPrecondition,
            DeadlineExceeded}
    assert {row.error for row in ERROR_TABLE.values()} == used
    for status, row in ERROR_TABLE.items():
        code, message = wire_message(row.error("field x: bad"))
        assert code in ("INVALID_ARG", "NOT_FOUND", "UNAVAILABLE", "CANCELLED", "INTERNAL", "UNSUPPORTED")
        back = error_from_wire({"INVALID_ARG": "INVALID_ARGUMENT", "UNSUPPORTED": "UNIMPLEMENTED"}.get(code, code),
                               message)
        assert type(back) is row.error and str(back) == "field x: bad", status
    assert BY_STATUS["FAILED_PRECONDITION"] is FailedPrecondition and issubclass(MissingDependency, FailedPrecondition)


def test_unknown_errors_are_internal_and_name_their_type():
    code, message = wire_message(KeyError("boxes"))
    assert code == "INTERNAL" and "KeyError" in message
    assert type(error_from_wire("StatusCode.DATA_LOSS", "x")) is InternalError
    assert type(error_from_wire("StatusCode.INVALID_ARGUMENT", "x")) is InvalidArgument


@pytest.fixture(scope="module")
def probe_server(tiny_repo, tmp_path_factory):
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2 as mc

    from xsyn.serving.repository import write_model
    from xsyn.export.specs import exported_specs

    repo = tmp_path_factory.mktemp("probe_repo")
    shutil.copytree(tiny_repo / "vae_decoder", repo / "vae_decoder")
    write_model(repo, exported_specs(repo)["vae_decoder"])
    (repo / "bls_probe" / "1").mkdir(parents=True)
    shutil.copyfile(PROBE, repo / "bls_probe" / "1" / "model.py")
    config = mc.ModelConfig(name="bls_probe", backend="python", max_batch_size=0)
    config.input.add(name="case", data_type=mc.TYPE_STRING, dims=[1])
    config.output.add(name="ok", data_type=mc.TYPE_INT32, dims=[1])
    (repo / "bls_probe" / "config.pbtxt").write_text(text_format.MessageToString(config))
    options = ServerOptions(repository=repo, grpc_port=free_port(), http_port=free_port(), metrics_port=free_port(),
                            log_path=tmp_path_factory.mktemp("probe_logs") / "triton.log")
    with TritonServer(options) as server:
        yield server


@pytest.mark.parametrize("case, status, error", [
    ("leaf_nan", "StatusCode.INVALID_ARGUMENT", InvalidArgument),
    ("exhausted", "StatusCode.UNAVAILABLE", ResourceExhausted),
    ("precondition", "StatusCode.UNIMPLEMENTED", FailedPrecondition),
    ("deadline", "StatusCode.UNAVAILABLE", DeadlineExceeded),
])
def test_served_statuses_survive_bls_and_the_wire(probe_server, case, status, error):
    raw = grpcclient.InferenceServerClient(probe_server.options.grpc_url)
    with pytest.raises(InferenceServerException) as info:
        raw.infer("bls_probe", [bytes_input("case", case.encode())])
    assert str(info.value.status()) == status, info.value.message()
    mapped = map_error(info.value)
    assert type(mapped) is error, (case, info.value.message())
    if case == "leaf_nan":
        assert "vae_decoder" in str(mapped) and "NaN" in str(mapped)
    with XsynClient(probe_server.options.grpc_url, retries=1, backoff=0.01) as sdk:
        with pytest.raises(error):
            sdk._call("bls_probe", [bytes_input("case", case.encode())], lambda r: r)
    ok = raw.infer("bls_probe", [bytes_input("case", b"fine")])
    assert ok.as_numpy("ok").tolist() == [1] and raw.is_server_ready()
