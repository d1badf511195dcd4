"""The package's shape: imports point down (nn -> train -> bench -> run -> experiments), the top-level surface
is the deliberate list, bnjax.data stays NumPy-only, and the Flax modules have one import path."""

from __future__ import annotations

import ast
import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

import bnjax

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "bnjax"

# Layer of the house -> the bnjax layers it may import (its own included).
ALLOWED = {
    "base": {"base"},
    "nn": {"base", "nn"},
    "data": {"base", "data"},
    "train": {"base", "nn", "train"},
    "interop": {"base", "nn", "interop"},
    "bench": {"base", "nn", "train", "bench"},
    "launch": {"base", "launch"},
    "run": {"base", "nn", "data", "train", "run"},
    "stored": {"base", "nn", "data", "train", "run", "stored"},
    "cli": {"base", "nn", "data", "train", "bench", "launch", "run", "stored", "cli"},
}


def _layer(module: str) -> str | None:
    """``bnjax.nn._mlp`` -> ``"nn"``; the top-level modules by role; None for ``bnjax`` itself."""
    parts = module.split(".")
    if parts[0] != "bnjax" or len(parts) == 1:
        return None
    if parts[1] in ("nn", "data", "train", "bench", "launch", "run", "stored", "interop", "cli"):
        return parts[1]
    base = {"_typing", "_faults", "_io", "_machine", "claims"}
    return "base" if parts[1] in base else {"flax": "interop", "__main__": "cli"}[parts[1]]


def _module_name(path: Path) -> str:
    rel = path.relative_to(REPO).with_suffix("") if path.is_relative_to(REPO) else Path(path.stem)
    parts = list(rel.parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> list[str]:
    """Every module ``path`` imports, at any depth (function-level imports included), absolute names."""
    out = []
    package = _module_name(path) if path.name == "__init__.py" else _module_name(path).rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            out.append(base)
            out += [f"{base}.{a.name}" for a in node.names]  # `from bnjax import train` imports a subpackage
    return out


def _is_module(name: str) -> bool:
    base = REPO.joinpath(*name.split("."))
    return base.with_suffix(".py").is_file() or (base / "__init__.py").is_file()


def _bnjax_targets(path: Path) -> set[str]:
    """The bnjax modules ``path`` imports (a `from pkg import name` entry counts only if it is a module)."""
    return {n for n in _imports(path) if n.split(".")[0] == "bnjax" and n != "bnjax" and _is_module(n)}


def test_imports_point_down():
    bad = []
    for path in sorted(PACKAGE.rglob("*.py")):
        me = _layer(_module_name(path))
        if me is None:
            continue  # bnjax/__init__.py re-exports lazily
        for target in _bnjax_targets(path):
            if _layer(target) not in ALLOWED[me]:
                bad.append(f"{path.relative_to(REPO)} ({me}) imports {target} ({_layer(target)})")
        assert not any(n.split(".")[0] == "experiments" for n in _imports(path)), path
    assert not bad, "\n".join(bad)


def test_experiments_use_public_names_only():
    for path in sorted((REPO / "experiments").glob("*.py")):
        for name in _imports(path):
            if name.split(".")[0] == "bnjax":
                assert not any(part.startswith("_") for part in name.split(".")), f"{path.name} imports {name}"


def test_import_direction_check_sees_a_violation(tmp_path):
    bad = tmp_path / "fake.py"
    bad.write_text("def f():\n    from bnjax.train import train_ensemble\n    import bnjax.run.config\n")
    assert _imports(bad) == ["bnjax.train", "bnjax.train.train_ensemble", "bnjax.run.config"]
    assert _is_module("bnjax.run.config") and not _is_module("bnjax.train.train_ensemble")
    assert _layer("bnjax.train") not in ALLOWED["nn"] and _layer("bnjax.run.config") not in ALLOWED["train"]


def test_data_does_not_import_jax():
    code = "import sys, bnjax.data; sys.exit('jax' in sys.modules)"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, "import bnjax.data imported jax" + proc.stderr[-2000:]


def test_top_level_surface_is_deliberate():
    public = set(bnjax.__all__)
    for name in public:
        assert getattr(bnjax, name) is not None, name
    for required in ("numeric_grad", "rel_error", "batch_norm", "layer_norm", "dropout", "fold_batch_norm",
                     "fold_mlp", "MLPSpec", "mlp", "serial", "Layer", "gradcheck_layers", "train"):
        assert required in public, required
    assert {"train_ensemble", "TrainConfig", "recompute_batch_stats"} <= set(bnjax.train.__all__)
    for internal in ("normalize_affine_autodiff", "normalize_rms_autodiff", "GradCheckRow", "format_gradcheck",
                     "mlp_init", "mlp_apply", "compute_dtype", "check_batch_norm_args"):
        assert internal not in public, internal
    assert set(dir(bnjax)) >= public
    with pytest.raises(AttributeError, match="module 'bnjax' has no attribute 'mlp_apply'"):
        bnjax.mlp_apply  # noqa: B018


def test_one_import_path_for_the_flax_modules():
    assert importlib.util.find_spec("bnjax.interop.flax") is None
    import bnjax.flax

    assert {"BatchNorm", "LayerNorm", "Dropout"} <= set(vars(bnjax.flax))
