"""The import rule of docs/architecture.md, checked over the source (ast, imports inside functions too):
every module sits in one layer, imports only modules of its own layer or below, and no chain of
imports comes back to where it started. Prefect is imported by the app layer only, so the library
below it runs without Prefect; every third-party package the project imports is declared."""

from __future__ import annotations

import ast
import importlib.metadata
import re
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Source folder -> the package it installs as (pyproject.toml's package-dir).
SOURCES = {"mmsa": ROOT / "mmsa", "mmsa.flows": ROOT / "flows"}

# Top to bottom. A module imports its own layer or lower ones; a name matches itself and its submodules.
LAYERS = [
    ("app", ["mmsa.cli", "mmsa.demo", "mmsa.dashboard", "mmsa.flows"]),
    ("orchestration", ["mmsa.pipeline", "mmsa.fetchdump", "mmsa.train", "mmsa.evaluate", "mmsa.stack", "mmsa.crossval",
                       "mmsa.targeted", "mmsa.recipe"]),
    ("reports", ["mmsa.report", "mmsa.charts"]),
    ("store", ["mmsa.store", "mmsa.publish"]),
    ("model", ["mmsa.infer", "mmsa.model", "mmsa.heads", "mmsa.encoders", "mmsa.packaged", "mmsa.data", "mmsa.features",
               "mmsa.quantify"]),
    ("images", ["mmsa.images"]),
    ("source", ["mmsa.source", "mmsa.readers", "mmsa.brands", "mmsa.language"]),
    ("base", ["mmsa.options", "mmsa.files", "mmsa.faults", "mmsa.storage", "mmsa.schema", "mmsa.netpolicy", "mmsa"]),
]
APP_ONLY = ("prefect", "prefect_dask", "distributed", "dask")  # the orchestrator: the app layer's business


def modules() -> dict[str, Path]:
    found = {}
    for package, folder in SOURCES.items():
        for path in folder.rglob("*.py"):
            parts = list(path.relative_to(folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join([package, *parts])] = path
    return found


def layer(module: str) -> int:
    """The layer's index (0 = top) of the longest name that matches the module."""
    best = max(((len(name), i) for i, (_, names) in enumerate(LAYERS) for name in names
                if module == name or module.startswith(name + ".")), default=None)
    if best is None:
        raise AssertionError(f"{module} is in no layer of tests/test_architecture.py (and docs/architecture.md)")
    return best[1]


def imports(module: str, path: Path, known: set[str]) -> tuple[set[str], set[str]]:
    """(project modules, third-party top-level names) that `module` imports, anywhere in its body."""
    tree = ast.parse(path.read_text(), str(path))
    is_package = path.name == "__init__.py"
    own, external = set(), set()

    def add(name: str) -> None:
        if name.split(".")[0] != "mmsa":
            external.add(name.split(".")[0])
            return
        while name not in known:  # `from mmsa.x import name`: the module is mmsa.x
            name = name.rpartition(".")[0]
        own.add(name)

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(alias.name)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against this module's package
                base = module if is_package else module.rpartition(".")[0]
                for _ in range(node.level - 1):
                    base = base.rpartition(".")[0]
                target = f"{base}.{node.module}" if node.module else base
            else:
                target = node.module
            for alias in node.names:  # `from mmsa import pipeline` imports the module mmsa.pipeline
                full = f"{target}.{alias.name}"
                add(full if full in known else target)
    own.discard(module)
    return own, external - set(sys.stdlib_module_names) - {"__future__"}


def graph() -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    found = modules()
    known = set(found)
    edges, external = {}, {}
    for module, path in found.items():
        edges[module], external[module] = imports(module, path, known)
    return edges, external


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One import cycle, as the chain of modules, or None (edges into a package's own __init__ from its
    submodules count: `from mmsa.readers import x` inside mmsa/readers/y.py runs mmsa/readers/__init__.py)."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(edges):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_imports_point_down_the_layers():
    edges, _ = graph()
    upward = [f"{m} ({LAYERS[layer(m)][0]}) imports {t} ({LAYERS[layer(t)][0]})"
              for m, targets in sorted(edges.items()) for t in sorted(targets) if layer(t) < layer(m)]
    assert not upward, "imports against the layers (docs/architecture.md):\n" + "\n".join(upward)


def test_no_import_cycles():
    cycle = find_cycle(graph()[0])
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_prefect_stays_in_the_app_layer():
    _, external = graph()
    below = [f"{m} imports {name}" for m, names in sorted(external.items()) if layer(m) > 0
             for name in sorted(names) if name in APP_ONLY]
    assert not below, "the library below the app layer must run without Prefect:\n" + "\n".join(below)


def test_every_imported_package_is_declared():
    """Third-party names imported by the project's code map to distributions its pyproject.toml requires."""
    _, external = graph()
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = project["dependencies"] + [r for extra in project.get("optional-dependencies", {}).values() for r in extra]
    declared = {re.split(r"[<>=!~\[; ]", req, maxsplit=1)[0].lower().replace("_", "-") for req in reqs}
    providers = importlib.metadata.packages_distributions()
    missing = []
    for name in sorted(set().union(*external.values())):
        dists = {d.lower().replace("_", "-") for d in providers.get(name, [])}
        if not dists & declared:
            missing.append(f"{name} (from {', '.join(sorted(m for m, n in external.items() if name in n))}; "
                           f"provided by {sorted(dists) or 'nothing installed'})")
    assert not missing, "imported but not declared in pyproject.toml:\n" + "\n".join(missing)


def test_every_module_is_in_a_layer():
    for module in modules():
        layer(module)


def test_the_docs_name_every_module_and_folder():
    """docs/architecture.md places every module in its layer table, a subpackage's modules each by name unless
    the table names them as a family (`mmsa.readers.*`: one module per platform); the README's layout table
    names every module of mmsa/ (a subpackage's by their short names, or as the family) and every top-level
    folder of the repository."""
    architecture = (ROOT / "docs" / "architecture.md").read_text()
    readme = (ROOT / "README.md").read_text()
    layout = readme[readme.index("## Layout"):readme.index("## Data")]
    tops = {".".join(m.split(".")[:2]) for m in modules() if m != "mmsa"}
    assert not [t for t in sorted(tops) if f"`{t}" not in architecture], "modules missing from docs/architecture.md"
    short = {t.split(".")[1] for t in tops} - {"flows"}
    assert not [s for s in sorted(short) if f"`{s}`" not in layout and f"`{s}/`" not in layout], "modules missing from the README's layout"
    inner = [m for m in modules() if m.count(".") == 2 and not m.startswith("mmsa.flows.")]
    family = {m for m in inner if f"`{m.rpartition('.')[0]}.*`" in architecture}
    assert not [m for m in inner if m not in family and f"`{m}`" not in architecture], \
        "subpackage modules missing from docs/architecture.md"
    assert not [m for m in inner if m not in family and f"`{m.rpartition('.')[2]}`" not in layout], \
        "subpackage modules missing from the README's layout"
    folders = {p.name for p in ROOT.iterdir() if p.is_dir() and not p.name.startswith(".") and
               subprocess.run(["git", "ls-files", "--error-unmatch", p.name], cwd=ROOT, capture_output=True).returncode == 0}
    assert not [f for f in sorted(folders) if f"`{f}/" not in layout], "folders missing from the README's layout"


def private_assignments(source: str, filename: str = "<source>") -> list[str]:
    """`file:line: what` for each place that sets a private attribute (`_name`, not a dunder) of anything but
    `self` / `cls`: an assignment (`obj._x = …`, `+=`, unpacking) or a `setattr(obj, "_x", …)` call
    (monkeypatch's too). Another module's or object's private state is its own business: a setting it needs is
    passed in at construction, a test's fault goes through a public hook."""
    def private(name: str) -> bool:
        return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))

    def owner_ok(node: ast.expr) -> bool:
        return isinstance(node, ast.Name) and node.id in ("self", "cls")

    def targets(node: ast.expr):
        if isinstance(node, (ast.Tuple, ast.List)):
            for elt in node.elts:
                yield from targets(elt)
        elif isinstance(node, ast.Starred):
            yield from targets(node.value)
        else:
            yield node

    found = []
    for node in ast.walk(ast.parse(source, filename)):
        if isinstance(node, ast.Assign):
            assigned = [t for target in node.targets for t in targets(target)]
        elif isinstance(node, (ast.AugAssign, ast.AnnAssign)):
            assigned = list(targets(node.target))
        elif isinstance(node, ast.Call) and (
                (isinstance(node.func, ast.Name) and node.func.id == "setattr")
                or (isinstance(node.func, ast.Attribute) and node.func.attr in ("setattr", "__setattr__"))):
            args = node.args
            if len(args) >= 2 and isinstance(args[1], ast.Constant) and isinstance(args[1].value, str):
                if private(args[1].value) and not owner_ok(args[0]):
                    found.append(f"{filename}:{node.lineno}: {ast.unparse(node)[:100]}")
            elif args and isinstance(args[0], ast.Constant) and isinstance(args[0].value, str):  # "module.name"
                if private(args[0].value.rpartition(".")[2]):
                    found.append(f"{filename}:{node.lineno}: {ast.unparse(node)[:100]}")
            continue
        else:
            continue
        found += [f"{filename}:{node.lineno}: {ast.unparse(node)[:100]}" for t in assigned
                  if isinstance(t, ast.Attribute) and private(t.attr) and not owner_ok(t.value)]
    return found


def test_no_module_sets_another_objects_private_attributes():
    """Over the package, the flows, the tests and the benchmarks: no code sets a private attribute of another
    module or object (the checker itself is shown to catch each form first)."""
    caught = private_assignments("m._X = 1\nengine._text, ok = f, 2\no._n += 1\nsetattr(o, '_y', 1)\n"
                                 "monkeypatch.setattr(Engine, '_run', f)\nmonkeypatch.setattr('mmsa.fetch._SLOTS', 1)\n"
                                 "self._a = 1\ncls._b = 2\nobject.__setattr__(self, '_c', 3)\no.public = 4\n")
    assert [line.split(":")[1] for line in caught] == ["1", "2", "3", "4", "5", "6"]
    found = []
    for folder in ("mmsa", "flows", "tests", "benchmarks"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            found += private_assignments(path.read_text(), str(path.relative_to(ROOT)))
    assert not found, "private attributes set from outside their object:\n" + "\n".join(found)
