"""Every SDK exception class, raised by a real server (or gRPC channel) answer; no mocked transport."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from xsyn.client.sdk import AsyncXsynClient, Cancelled, DeadlineExceeded, XsynClient
from xsyn.errors import InvalidArgument, NotFound, Unavailable
from xsyn.serving.server import free_port

pytestmark = pytest.mark.slow
IMAGE = np.random.default_rng(0).integers(0, 256, (96, 128, 3), dtype=np.uint8)


def test_invalid_argument_and_not_found(tiny_server):
    with XsynClient(tiny_server.options.grpc_url) as client:
        with pytest.raises(InvalidArgument, match="class_names.0: unknown class 'Banana'"):  # checked by the server
            client.synthesize({"boxes": [[1.0, 1.0, 40.0, 40.0]], "class_names": ["Banana"], "steps": 2}, IMAGE)
        with pytest.raises(NotFound, match="not cached"):
            client.segment("f" * 32, [[5.0, 5.0]], [1])


def test_unavailable_without_a_server():
    with XsynClient(f"127.0.0.1:{free_port()}", retries=1, backoff=0.05) as client:
        with pytest.raises(Unavailable):
            client.synthesize({"boxes": [[1.0, 1.0, 40.0, 40.0]], "class_names": ["Knife"]}, IMAGE)


def test_deadline_exceeded_and_cancelled(tiny_server):
    request = {"boxes": [[1.0, 1.0, 40.0, 40.0]], "class_names": ["Knife"], "steps": 80, "car": False, "bom_alpha": 0.0}
    with XsynClient(tiny_server.options.grpc_url, timeout=0.3) as client:
        with pytest.raises(DeadlineExceeded):
            client.synthesize(request, IMAGE)
    with XsynClient(tiny_server.options.grpc_url) as client:
        call = client.submit(request, IMAGE)
        call.cancel()
        with pytest.raises(Cancelled):
            call.result(timeout=60)
        assert client.health()["ready"]


def test_a_mistake_the_graph_would_fail_on_is_invalid_argument(tiny_server):
    with XsynClient(tiny_server.options.grpc_url) as client:
        inputs = {"image_embeddings": np.zeros((1, 32, 32, 32), np.float32),
                  "point_coords": np.zeros((1, 3, 2), np.float32), "point_labels": np.zeros((1, 2), np.float32),
                  "mask_input": np.zeros((1, 1, 128, 128), np.float32), "has_mask_input": np.zeros(1, np.float32),
                  "orig_im_size": np.array([64, 64], np.float32), "mask_tokens": np.zeros((1, 4, 32), np.float32)}
        # 3 points, 2 labels: the graph itself would fail; the leaf model names the disagreement first
        with pytest.raises(InvalidArgument, match="'point_labels' axis 1 \\(num_points\\) is 2, but 'point_coords' has"):
            client.infer_raw("sam_decoder", inputs)
        assert client.health()["ready"]


def test_async_client(tiny_server):
    async def main():
        async with AsyncXsynClient(tiny_server.options.grpc_url) as client:
            embedded = await client.embed(IMAGE)
            clicked = await client.segment(embedded.key, [[30.0, 30.0]], [1])
            result = await client.synthesize({"boxes": [[10.0, 10.0, 60.0, 60.0]], "class_names": ["Gun"], "steps": 2},
                                             IMAGE)
            with pytest.raises(NotFound):
                await client.segment("e" * 32, [[1.0, 1.0]], [1])
            return embedded, clicked, result

    embedded, clicked, result = asyncio.run(main())
    assert clicked.response.key == embedded.key and clicked.low_res_mask.shape == (1, 1, 128, 128)
    assert result.image.shape == IMAGE.shape and result.response.status == "ok"
