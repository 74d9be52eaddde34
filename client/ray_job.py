"""``xsyn synthesize --ray ADDRESS``: the same work items on a Ray Data actor pool.

The driver (``xsyn synthesize``) reads the COCO input, verifies what earlier runs finished, and
hands the unfinished items' indices to ``Dataset.map_batches`` with an actor pool of
``--concurrency`` :class:`SynthesisActor` s. Each actor builds the same :class:`~xsyn.client.
synthesize_job.Job` view of the input and one fleet client to ``--servers``, and writes each
item exactly as the thread pool does (image, preview, then the record, each atomically), so
outputs, records and provenance are those of a plain run, and a rerun resumes. The driver
collects one outcome row per item and builds ``annotations.json`` itself. Ray Data's own
progress bars show the progress.

``--out`` and ``--images`` must be paths every Ray worker sees (one machine, or a shared
filesystem), and the workers need xsyn installed (the client alone is enough).
"""

from __future__ import annotations

import argparse

import numpy as np

from xsyn.errors import MissingDependency

#: CPUs Ray reserves per actor: an actor mostly waits on gRPC, so several fit on one core.
ACTOR_CPUS = 0.25


class SynthesisActor:
    """The ``map_batches`` callable: ``{"index": int64 [B]}`` -> ``{"item", "state", "reason"}``
    (one row per item, strings)."""

    def __init__(self, args: argparse.Namespace) -> None:
        from xsyn.client.synthesize_job import Backend, Job

        self.job = Job(args, check_finished=False)
        self.job.backend = Backend(args, quiet=True)
        self.fleet_was_down = False

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from xsyn.client.synthesize_job import Outcome

        names, states, reasons = [], [], []
        for index in batch["index"]:
            item = self.job.items[int(index)]
            if self.fleet_was_down and self.job.backend.fleet_down():
                outcome = Outcome("unavailable", "not started: no server is available")
            else:
                outcome = self.job.attempt(item)
                self.fleet_was_down = outcome.state == "unavailable"
            names.append(item.name)
            states.append(outcome.state)
            reasons.append(outcome.reason)
        return {"item": np.array(names, dtype=object), "state": np.array(states, dtype=object),
                "reason": np.array(reasons, dtype=object)}


def connect(address: str):
    """Join the Ray cluster at ``address``, or start a local runtime for ``local``."""
    try:
        import ray
    except ImportError as exc:
        raise MissingDependency(f"--ray needs Ray Data (pip install 'xsyn[ray]'): {exc}") from None
    if not ray.is_initialized():
        if address == "local":
            ray.init(include_dashboard=False, configure_logging=False, log_to_driver=False)
        else:
            ray.init(address=address, configure_logging=False, log_to_driver=False)
    return ray


def run_on_ray(job, todo: list) -> dict:
    """Run ``todo`` (work items of ``job``) on the actor pool; ``{item name: Outcome}``."""
    from xsyn.client.synthesize_job import Outcome

    if not todo:
        return {}
    args = job.args
    ray = connect(args.ray)
    index_of = {item.name: i for i, item in enumerate(job.items)}
    actor_args = argparse.Namespace(**{k: v for k, v in vars(args).items() if k != "handler"})
    dataset = ray.data.from_items([{"index": index_of[item.name]} for item in todo], override_num_blocks=len(todo))
    rows = dataset.map_batches(SynthesisActor, fn_constructor_kwargs={"args": actor_args}, batch_size=1,
                               concurrency=max(1, args.concurrency), num_cpus=ACTOR_CPUS, batch_format="numpy")
    return {row["item"]: Outcome(row["state"], row["reason"]) for row in rows.iter_rows()}
