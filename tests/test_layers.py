"""The package's folders are its layers: every import, at module level or inside a
function, runs down the layers or within one, never up and never in a circle; no
module takes a private name from another; and `import odeplm` stays light."""

import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "odeplm"
LAYERS = ("core", "data", "runs", "inference", "evaluation", "training", "cli")  # each may import those before it


def module_name(path: pathlib.Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for path in PACKAGE.rglob("*.py")}


def odeplm_imports(path: pathlib.Path) -> list[tuple[str, list[str], int]]:
    """(module imported, names taken from it, line) for every import of an odeplm module."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(alias.name, [], node.lineno) for alias in node.names if alias.name.startswith("odeplm")]
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("odeplm"):
            for alias in node.names:
                submodule = f"{node.module}.{alias.name}"
                found.append((submodule, [], node.lineno) if submodule in MODULES
                             else (node.module, [alias.name], node.lineno))
    return found


def layer(module: str) -> int | None:
    """The layer index of a module (None: the package front, `odeplm` itself)."""
    parts = module.split(".")
    return LAYERS.index(parts[1]) if len(parts) > 1 else None


def test_every_module_sits_in_a_layer_and_few_stay_flat():
    flat = [m for m in MODULES if m.count(".") == 1 and m.split(".")[1] not in LAYERS]
    assert not flat, f"modules outside the layers: {flat}"
    assert sorted(m.split(".")[1] for m in MODULES if m.count(".") == 1) == sorted(LAYERS)
    assert len([p for p in PACKAGE.glob("*.py")]) <= 8


@pytest.mark.parametrize("module", sorted(m for m in MODULES if m != "odeplm"))
def test_imports_run_down_the_layers_and_take_no_private_names(module):
    for imported, names, line in odeplm_imports(MODULES[module]):
        assert imported in MODULES or imported == "odeplm", f"{module}:{line} imports unknown {imported}"
        target = layer(imported)
        assert target is None or target <= layer(module), (
            f"{module}:{line} imports {imported}, a later layer ({LAYERS[target]} after {LAYERS[layer(module)]})")
        private = [n for n in names if n.startswith("_")]
        assert not private, f"{module}:{line} takes private names {private} from {imported}"


def test_the_package_front_imports_the_core_only():
    for imported, _, line in odeplm_imports(MODULES["odeplm"]):
        assert layer(imported) == 0, f"odeplm:{line} imports {imported}"


def test_no_import_circle():
    graph = {m: {i for i, _, _ in odeplm_imports(p) if i in MODULES and i != m} for m, p in MODULES.items()}
    state: dict[str, str] = {}

    def visit(module, trail):
        if state.get(module) == "done":
            return
        assert state.get(module) != "open", "import circle: " + " -> ".join(trail + [module])
        state[module] = "open"
        for imported in sorted(graph[module]):
            visit(imported, trail + [module])
        state[module] = "done"

    for module in sorted(graph):
        visit(module, [])
