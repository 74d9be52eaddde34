"""Compare two tiny-preset weights folders (``xsyn train-tiny`` outputs), e.g. a fresh run against
the committed ``export/data/presets/tiny``, to check that training reproduces.

    .venv/bin/python scripts/compare_tiny_weights.py export/data/presets/tiny build/repro/preset

Prints, per weights file, whether the bytes are identical (sha256, re-hashed from the files and
checked against each manifest), else whether the tensors are (safetensors does not fix its
header's key order, so equal weights can make different files), else the largest absolute
difference of any tensor and the relative L2 difference of the file's parameters; then both
runs' latent scaling factor and final logged losses side by side. Exit status 0 when every
file's tensors are equal, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from safetensors.numpy import load_file

from xsyn.export.tiny_training import file_sha256


def _tensor_diff(a: Path, b: Path) -> tuple[bool, str]:
    """(tensors equal, description): the largest |a - b| over all tensors and ||a - b|| / ||a||
    over all parameters, in float64."""
    ta, tb = load_file(str(a)), load_file(str(b))
    if ta.keys() != tb.keys():
        return False, f"different tensor names ({len(ta.keys() ^ tb.keys())} not in both)"
    worst, num, den = 0.0, 0.0, 0.0
    for name, x in ta.items():
        x, y = x.astype("float64"), tb[name].astype("float64")
        if x.shape != y.shape:
            return False, f"{name}: shape {x.shape} vs {y.shape}"
        d = abs(x - y)
        worst = max(worst, float(d.max(initial=0.0)))
        num += float((d * d).sum())
        den += float((x * x).sum())
    if worst == 0.0:
        return True, "equal tensors (the files' bytes differ)"
    return False, f"max |diff| {worst:.3g}, relative L2 {(num / max(den, 1e-30)) ** 0.5:.3g}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("reference", type=Path, help="weights folder, e.g. export/data/presets/tiny")
    parser.add_argument("candidate", type=Path, help="weights folder of another run, e.g. build/repro/preset")
    args = parser.parse_args(argv)
    manifests = [json.loads((folder / "manifest.json").read_text()) for folder in (args.reference, args.candidate)]
    identical = True
    for name in sorted(set(manifests[0]["files"]) | set(manifests[1]["files"])):
        paths = [folder / name for folder in (args.reference, args.candidate)]
        if not all(p.is_file() for p in paths):
            print(f"{name}: missing in {', '.join(str(p.parent) for p in paths if not p.is_file())}")
            identical = False
            continue
        hashes = [file_sha256(p) for p in paths]
        same, text = (True, "identical bytes") if hashes[0] == hashes[1] else _tensor_diff(*paths)
        identical &= same
        recorded = all(m["files"].get(name) == h for m, h in zip(manifests, hashes))
        print(f"{name}: {text}"
              f"{'' if recorded else ' (a file does not match its manifest sha256)'}")
    print(f"vae_scaling_factor: {manifests[0]['vae_scaling_factor']} | {manifests[1]['vae_scaling_factor']}")
    for stage, losses in manifests[0]["final_losses"].items():
        other = manifests[1]["final_losses"].get(stage, {})
        cells = ", ".join(f"{k} {v} | {other.get(k)}" for k, v in losses.items() if k != "step")
        print(f"final {stage} losses: {cells}")
    print(f"train_seconds: {manifests[0].get('train_seconds')} | {manifests[1].get('train_seconds')}")
    return 0 if identical else 1


if __name__ == "__main__":
    sys.exit(main())
