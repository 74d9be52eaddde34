"""Layers point one way: api <- export/runtimes <- orchestrators <- serving <- CLI/client commands.

Walks every module of the package (imports inside functions included, since a lazy import
runs the same way) and fails on an import from a higher layer. The SDK and the client's dataset
commands must also stay on the torch-free side: they may import only the api layer and their
own client modules, so the client distribution installs without the server extra.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: package prefix -> folder; the product's distribution maps these folders into ``xsyn``.
PACKAGES = {"xsyn.export": ROOT / "export", "xsyn.ensembles": ROOT / "ensembles", "xsyn.client": ROOT / "client",
            "xsyn": ROOT / "xsyn"}
#: lowest first; the longest matching prefix decides a module's layer.
LAYERS = {
    "xsyn": 0, "xsyn.errors": 0, "xsyn.files": 0, "xsyn.settings": 0, "xsyn.api": 0,
    "xsyn.export": 1, "xsyn.runtimes": 1,
    "xsyn.ensembles": 2,
    "xsyn.serving": 3,
    "xsyn.client": 4,
}
LAYER_NAMES = ["api", "export/runtimes", "orchestrators", "serving", "CLI/client commands"]
#: client modules a client-only install runs: they may import the api layer and each other only.
THIN_CLIENT = ("xsyn.client.sdk", "xsyn.client.annotate_job", "xsyn.client.synthesize_job", "xsyn.client.coco",
               "xsyn.client.sample_data", "xsyn.client.sample_data_command",
               "xsyn.client.preview", "xsyn.client.endpoints", "xsyn.client.ray_job")


def layer_of(module: str) -> int:
    best = max((p for p in LAYERS if module == p or module.startswith(p + ".")), key=len)
    return LAYERS[best]


def modules() -> dict[str, Path]:
    found = {}
    for prefix, folder in PACKAGES.items():
        for path in folder.rglob("*.py"):
            rel = path.relative_to(folder).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            name = ".".join([prefix, *parts])
            if prefix == "xsyn" and parts and f"xsyn.{parts[0]}" in PACKAGES:
                continue
            found[name] = path
    return found


def xsyn_imports(path: Path) -> list[tuple[int, str]]:
    """``(line, module)`` for every import of an ``xsyn`` module in the file."""
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names if a.name.split(".")[0] == "xsyn"]
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "xsyn":
            names = [f"{node.module}.{a.name}" for a in node.names]
            # ``from xsyn.ensembles import images`` imports a module; ``from x import name`` a name in x
            out += [(node.lineno, n if n in modules_cache() else node.module) for n in names]
    return out


_MODULES: dict[str, Path] = {}


def modules_cache() -> dict[str, Path]:
    if not _MODULES:
        _MODULES.update(modules())
    return _MODULES


def test_the_walk_sees_the_whole_package():
    found = modules_cache()
    assert {"xsyn.errors", "xsyn.api.synthesis", "xsyn.export.specs", "xsyn.ensembles.synthesis",
            "xsyn.serving.leaf", "xsyn.client.sdk", "xsyn.client.cli"} <= set(found)
    assert len(found) > 50


def test_no_module_imports_from_a_layer_above_it():
    upward = []
    for name, path in sorted(modules_cache().items()):
        own = layer_of(name)
        for line, target in xsyn_imports(path):
            if layer_of(target) > own:
                upward.append(f"{path.relative_to(ROOT)}:{line} ({LAYER_NAMES[own]}) imports {target} "
                              f"({LAYER_NAMES[layer_of(target)]})")
    assert not upward, "imports against the layer order:\n" + "\n".join(upward)


def test_thin_client_modules_import_only_the_api_layer():
    wrong = []
    for name in THIN_CLIENT:
        path = modules_cache()[name]
        for line, target in xsyn_imports(path):
            if layer_of(target) != 0 and not any(target == m or target.startswith(m + ".") for m in THIN_CLIENT):
                if name == "xsyn.client.synthesize_job" and target.startswith("xsyn.ensembles."):
                    continue  # --local only, behind MissingDependency when the server extra is absent
                wrong.append(f"{path.relative_to(ROOT)}:{line} imports {target}")
    assert not wrong, "client-only modules reaching past the api layer:\n" + "\n".join(wrong)


def test_the_checker_flags_an_upward_import(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from xsyn.serving.server import TritonServer\n")
    assert any(layer_of(t) > layer_of("xsyn.ensembles.bad") for _, t in xsyn_imports(bad))
