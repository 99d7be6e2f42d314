"""Imports point one way: pure array code and models at the bottom, methods above them, the
training engine above methods, evaluation and export above training, entry points on top.

Read from the source (every `import` and `from ... import`, at module level or inside a
function), so a lazy import that bends back up fails here too."""
import ast
import os

import pytest

from tests.conftest import REPO_ROOT

PACKAGE = os.path.join(REPO_ROOT, "ssl_jax")

# Layers, bottom first. A module may import ssl_jax modules of its own layer or below.
LAYERS = [
    {"ssl_jax.losses", "ssl_jax.monitors", "ssl_jax.schedules", "ssl_jax.storage", "ssl_jax.native",
     "ssl_jax.clustering", "ssl_jax.xla_flags"},
    # train.state: the TrainState dataclass alone (flax and jax only), the data contract between
    # the methods (an ensemble stacks it: ssl_jax.methods.ensemble) and the train loop.
    {"ssl_jax.models", "ssl_jax.data", "ssl_jax.parallel", "ssl_jax.presets", "ssl_jax.results",
     "ssl_jax.hlo_collectives", "ssl_jax.train.state"},
    {"ssl_jax.methods"},
    {"ssl_jax.train"},
    # cli: what every command line shares (export and report are commands too).
    {"ssl_jax.evaluate", "ssl_jax.pretrained", "ssl_jax.export", "ssl_jax.report", "ssl_jax.cli",
     "ssl_jax.api", "ssl_jax.compile", "ssl_jax.stages", "ssl_jax.fussl"},
    {"ssl_jax.main", "ssl_jax.evaluate.__main__"},
]


def _unit(module: str) -> str:
    """The layer entry a dotted module name belongs to (the longest matching prefix)."""
    units = sorted((u for layer in LAYERS for u in layer), key=len, reverse=True)
    for unit in units:
        if module == unit or module.startswith(unit + "."):
            return unit
    raise AssertionError(f"{module} is in no layer of tests/test_layout.py: add it to LAYERS")


def _layer(module: str) -> int:
    unit = _unit(module)
    return next(i for i, layer in enumerate(LAYERS) if unit in layer)


def _modules():
    for root, _, files in os.walk(PACKAGE):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(root, name)
                rel = os.path.relpath(path, REPO_ROOT)[:-3].replace(os.sep, ".")
                yield rel.removesuffix(".__init__"), path


def _imports(path: str, module: str):
    tree = ast.parse(open(path, encoding="utf-8").read())
    package = module if path.endswith("__init__.py") else module.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative import
                parts = package.split(".")
                base = ".".join(parts[:len(parts) - node.level + 1] + ([base] if base else []))
            # `from a.b import c`: c may be the module a.b.c; prefixes decide the layer either way.
            yield from (f"{base}.{a.name}" for a in node.names)


MODULES = sorted(_modules())


@pytest.mark.parametrize("module,path", MODULES, ids=[m for m, _ in MODULES])
def test_imports_point_down(module, path):
    if module == "ssl_jax":
        return
    own = _layer(module)
    upward = sorted({imp for imp in _imports(path, module)
                     if imp.startswith("ssl_jax.") and _layer(imp) > own})
    assert not upward, f"{module} (layer {own}) imports from a layer above it: {upward}"


def test_the_engine_does_not_import_evaluation_or_export():
    """The issue's rule, spelled out: nothing under losses, models, methods or train imports
    evaluate, export, pretrained or report."""
    forbidden = ("ssl_jax.evaluate", "ssl_jax.export", "ssl_jax.pretrained", "ssl_jax.report")
    for module, path in MODULES:
        if module.startswith(("ssl_jax.losses", "ssl_jax.models", "ssl_jax.methods", "ssl_jax.train")):
            bad = [i for i in _imports(path, module) if i.startswith(forbidden)]
            assert not bad, f"{module} imports {bad}"


def test_the_layer_table_catches_an_upward_import(tmp_path):
    """The check itself can fail: a methods module importing the training engine is caught."""
    path = tmp_path / "bad.py"
    path.write_text("from ssl_jax.train import optim\n")
    upward = [i for i in _imports(str(path), "ssl_jax.methods.bad") if _layer(i) > _layer("ssl_jax.methods.bad")]
    assert upward == ["ssl_jax.train.optim"]


# ------------------------------------------------------------------ self-documenting configs

def _config_files():
    root = os.path.join(REPO_ROOT, "configs")
    for sub in ("", "eval"):
        d = os.path.join(root, sub)
        yield from sorted(os.path.join(d, f) for f in os.listdir(d) if f.endswith(".py") and not f.startswith("_"))


CONFIG_FILES = list(_config_files())


@pytest.mark.parametrize("path", CONFIG_FILES, ids=[os.path.relpath(p, REPO_ROOT) for p in CONFIG_FILES])
def test_every_config_docstring_gives_its_command_and_every_preset(path):
    """DESIGN.md: a docstring on top of every config: the command, and for each preset of its
    PRESETS the hardware, runtime and expected result (read by people; here: that the command
    line is there and no preset is left out)."""
    import importlib.util
    import re

    spec = importlib.util.spec_from_file_location("config_under_test", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    doc = module.__doc__ or ""
    rel = os.path.relpath(path, REPO_ROOT).replace(os.sep, "/")
    command = "ssl_jax.evaluate" if "/eval/" in rel else "ssl_jax.main"
    assert f"python -m {command} --config={rel}" in doc, f"{rel}: no command line in its docstring"
    assert "Presets" in doc, f"{rel}: no Presets section in its docstring"
    section = doc[doc.index("Presets"):]
    missing = [p for p in module.PRESETS if not re.search(rf"(?<![\w.]){re.escape(p)}(?!\w)", section)]
    assert not missing, f"{rel}: presets {missing} are not described in its docstring"
