"""The models an xsyn server serves, by name: what health checks ask about.

The repository index is a restricted protocol (admin key), so clients and ``xsyn health`` ask
each of these models for its readiness instead. ``tests/export/test_specs.py`` keeps the
names equal to the network and pipeline specs.
"""

PIPELINE_MODELS = ("xsyn", "apsam")
LEAF_MODELS = ("text_encoder", "unet", "vae_encoder", "vae_decoder", "sam_image_encoder", "sam_decoder")
SERVED_MODELS = PIPELINE_MODELS + LEAF_MODELS


def model_states(client, models=SERVED_MODELS) -> dict[str, str]:
    """``{name: "READY" | "UNAVAILABLE"}`` from a tritonclient gRPC ``client``: READY when the model
    says so; UNAVAILABLE when it is in the repository but not ready (loading, reloading after a
    stub died, draining); a model that this server does not serve is left out."""
    states = {}
    for name in models:
        if client.is_model_ready(name):
            states[name] = "READY"
        elif _served(client.get_model_metadata, name):
            states[name] = "UNAVAILABLE"
    return states


async def async_model_states(client, models=SERVED_MODELS) -> dict[str, str]:
    """:func:`model_states` for tritonclient's asyncio gRPC client."""
    states = {}
    for name in models:
        if await client.is_model_ready(name):
            states[name] = "READY"
        else:
            try:
                await client.get_model_metadata(name)
                states[name] = "UNAVAILABLE"
            except Exception as exc:
                if not _unknown_model(exc):
                    states[name] = "UNAVAILABLE"
    return states


def _served(metadata, name: str) -> bool:
    try:
        metadata(name)
    except Exception as exc:
        return not _unknown_model(exc)
    return True


def _unknown_model(exc: Exception) -> bool:
    """Triton's answer for a name its repository does not hold ("... is not found"), as opposed
    to a model it holds that is not ready ("... has no available versions")."""
    return "is not found" in str(exc)
