"""The package's layers (docs/ARCHITECTURE.md): a module imports from its own folder and the folders
above it in LAYERS only, so each idea has one home and nothing below reaches up. The one exception is
core/params.py, the registry that maps each params section to the dataclass of the layer that owns it."""
import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "pftlab"
LAYERS = ["core", "lm", "algorithms", "training", "evaluation", "didactic", "reporting"]
REGISTRY = PACKAGE / "core" / "params.py"


def imported_layers(path: Path) -> set:
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = [node.module] if isinstance(node, ast.ImportFrom) and node.module else \
            [a.name for a in node.names] if isinstance(node, ast.Import) else []
        out |= {n.split(".")[1] for n in names if n.startswith("pftlab.") and n.count(".") >= 1}
    return out


def test_every_module_sits_in_a_layer():
    assert sorted(p.name for p in PACKAGE.iterdir() if p.is_dir() and p.name != "__pycache__") == sorted(LAYERS)
    assert [p.name for p in PACKAGE.glob("*.py")] == ["__init__.py"]


def test_no_module_imports_from_a_layer_below_its_own():
    for path in PACKAGE.rglob("*.py"):
        layer = path.relative_to(PACKAGE).parts[0]
        if path == REGISTRY or layer not in LAYERS:
            continue
        below = {other for other in imported_layers(path) if LAYERS.index(other) > LAYERS.index(layer)}
        assert not below, f"{path.relative_to(PACKAGE)} imports from {sorted(below)}, a layer below '{layer}'"


def test_params_checking_imports_no_torch():
    import subprocess
    import sys

    code = ("import sys; from pftlab.core.params import load_params; "
            "p = load_params('params.yaml'); p.check(*[k for k in p.tree if k != 'algos']); "
            "[p.check(f'algos.{a}') for a in p['algorithms']]; "
            "assert 'torch' not in sys.modules and 'transformers' not in sys.modules, sorted(sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=PACKAGE.parents[1], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
