"""Carry xsyn to an air-gapped GPU host: wheels in groups, verified offline install, benchmark.

On-prem screening sites often have no network. The GPU host is expected to have Python, torch
with CUDA, torchvision, numpy, transformers, scipy, scikit-image, Pillow, protobuf and grpcio
(as the lent H100/H200 machines do); ``PACKAGES`` is what it lacks.

    # on a machine with PyPI access (this repository's root):
    python3 scripts/airgap.py prepare airgap/ [--python-version 3.12] [--group-mib 60]
    # -> airgap/group-01/ ... group-NN/ (each at most --group-mib, moved separately),
    #    airgap/manifest.json (every wheel's group, size, sha256), airgap/airgap.py (this script)

    # on the GPU host, once every group folder is there:
    python3 airgap/airgap.py install airgap/ [--target airgap/site]
    PYTHONPATH=airgap/site python3 -m xsyn.client.cli bench --runtime torch --device cuda:0
    # or in one step:  python3 airgap/airgap.py install airgap/ --bench [--bench-args '--steps 20']

``install`` checks every wheel's size and SHA-256 against the manifest first (a missing group or a
damaged file is one line naming it), then installs with ``pip --no-index --no-deps --target``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

#: What the GPU host lacks, pinned as in pyproject.toml (numpy < 2: Triton's Python stub).
PACKAGES = (
    "nvidia-pytriton==0.7.0", "tritonclient==2.73.0", "python-rapidjson==1.25", "diffusers==0.42.1",
    "importlib-metadata==8.7.0", "segment-anything==1.0", "pydantic==2.14.3", "pydantic-core==2.50.4",
    "annotated-types==0.8.0", "typing-inspection==0.4.5", "pycocotools==2.0.11", "numpy==1.26.4",
)
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64",
             "manylinux1_x86_64", "manylinux_2_24_x86_64", "manylinux_2_31_x86_64", "manylinux_2_34_x86_64",
             "manylinux_2_35_x86_64")
ROOT = Path(__file__).resolve().parents[1]
MANIFEST = "manifest.json"


class AirgapError(Exception):
    """One line for the operator: what is missing or damaged, and where."""


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def plan_groups(sizes: dict[str, int], limit: int) -> list[list[str]]:
    """Wheel names packed into groups of at most ``limit`` bytes (largest first, first fit).

    A single wheel larger than ``limit`` is an error: it could not be moved in one group.
    """
    groups: list[list[str]] = []
    room: list[int] = []
    for name in sorted(sizes, key=lambda n: (-sizes[n], n)):
        if sizes[name] > limit:
            raise AirgapError(f"{name}: {sizes[name] / 2**20:.1f} MiB is larger than a group ({limit / 2**20:.0f} MiB)")
        for k, left in enumerate(room):
            if sizes[name] <= left:
                groups[k].append(name)
                room[k] -= sizes[name]
                break
        else:
            groups.append([name])
            room.append(limit - sizes[name])
    return groups


def download(packages: tuple[str, ...], dest: Path, python_version: str) -> None:
    """``pip download`` binary wheels for the GPU host's Python (no dependencies resolved)."""
    cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
           "--python-version", python_version, "--implementation", "cp", "-d", str(dest)]
    for platform in PLATFORMS:
        cmd += ["--platform", platform]
    subprocess.run(cmd + list(packages), check=True)


def build_xsyn_wheel(dest: Path) -> None:
    """The xsyn wheel itself (pure Python; its dependencies come from the host or the groups)."""
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", str(dest), str(ROOT)],
                   check=True)


def prepare(out: Path, python_version: str, group_mib: float, packages: tuple[str, ...] = PACKAGES) -> dict:
    """Download, group and describe the wheels in ``out``; returns the manifest."""
    staging = out / ".download"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    if packages:
        download(packages, staging, python_version)
    build_xsyn_wheel(staging)
    wheels = {p.name: p for p in staging.glob("*.whl")}
    groups = plan_groups({n: p.stat().st_size for n, p in wheels.items()}, int(group_mib * 2**20))
    manifest = {"python_version": python_version, "group_mib": group_mib, "wheels": {}}
    for k, names in enumerate(groups, start=1):
        folder = out / f"group-{k:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        for name in names:
            target = folder / name
            shutil.move(str(wheels[name]), target)
            manifest["wheels"][name] = {"group": folder.name, "bytes": target.stat().st_size, "sha256": sha256(target)}
    shutil.rmtree(staging)
    shutil.copyfile(Path(__file__), out / "airgap.py")
    (out / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True))
    return manifest


def verify(folder: Path) -> list[Path]:
    """Every wheel of the manifest, present with its size and hash; raises AirgapError naming the first problem."""
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise AirgapError(f"{folder / MANIFEST}: missing or unreadable ({exc}); copy the whole prepared folder") from None
    paths = []
    for name, entry in sorted(manifest["wheels"].items()):
        path = folder / entry["group"] / name
        if not path.is_file():
            raise AirgapError(f"{path}: missing; copy group {entry['group']} again")
        if path.stat().st_size != entry["bytes"] or sha256(path) != entry["sha256"]:
            raise AirgapError(f"{path}: damaged (size or SHA-256 differs from the manifest); copy group "
                              f"{entry['group']} again")
        paths.append(path)
    return paths


def install(folder: Path, target: Path) -> None:
    """Verify, then install every wheel into ``target`` offline."""
    wheels = verify(folder)
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-index", "--no-deps", "--no-compile",
                    "--upgrade", "--target", str(target)] + [str(w) for w in wheels], check=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("prepare", help="download and group the wheels (needs PyPI)")
    p.add_argument("out", type=Path)
    p.add_argument("--python-version", default="3.12")
    p.add_argument("--group-mib", type=float, default=60.0)
    p.add_argument("--only-xsyn", action="store_true", help="just the xsyn wheel (the host has the rest)")
    p = sub.add_parser("install", help="verify and install offline; optionally run the benchmark")
    p.add_argument("folder", type=Path)
    p.add_argument("--target", type=Path, help="install folder (default FOLDER/site)")
    p.add_argument("--bench", action="store_true", help="then run `xsyn bench --runtime torch --device cuda:0`")
    p.add_argument("--bench-args", default="", help="more xsyn bench arguments, quoted: '--steps 20 --clicks 100'")
    args = parser.parse_args(argv)
    try:
        if args.command == "prepare":
            manifest = prepare(args.out, args.python_version, args.group_mib, () if args.only_xsyn else PACKAGES)
            groups = sorted({w["group"] for w in manifest["wheels"].values()})
            print(f"airgap: {len(manifest['wheels'])} wheels in {len(groups)} group(s) under {args.out}/")
            return 0
        target = args.target or args.folder / "site"
        install(args.folder, target)
        print(f"airgap: installed into {target}; use PYTHONPATH={target}")
        if args.bench:
            import shlex

            extra = shlex.split(args.bench_args)
            env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(target), os.environ.get("PYTHONPATH")])))
            return subprocess.run([sys.executable, "-m", "xsyn.client.cli", "bench", "--runtime", "torch",
                                   "--device", "cuda:0", *extra], env=env).returncode
        return 0
    except AirgapError as exc:
        print(f"airgap: error: {exc}", file=sys.stderr)
        return 2
    except subprocess.CalledProcessError as exc:
        print(f"airgap: error: {' '.join(map(str, exc.cmd[:6]))} ... failed with code {exc.returncode}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
