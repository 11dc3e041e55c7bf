"""The code's shape, checked: no import cycles, the CLI imported only by itself, and every per-model
difference in the registry (no other module names a model)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from simkit import registry

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("serverlab", "simkit", "realkit", "calibration", "experiments", "benchmarks")
# Where a model may be named: the registry, the two halves' model files, the contract, and the example
# scripts and the simulator benchmark's large case, which ask a question about the model they name (a
# user's choice, not a branch on names).
MAY_NAME_MODELS = re.compile(r"^(simkit/registry\.py|simkit/models/m\d+_\w+\.py|realkit/servers/m\d+_\w+\.py"
                             r"|simkit/scenario\.py|simkit/result\.py"
                             r"|experiments/(cores_for_50k_clients|threads_vs_reactor_db|gil_cost_m4|proactor_vs_reactors)\.py"
                             r"|benchmarks/bench_sim\.py)$")


def _modules() -> dict[str, Path]:
    out = {}
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")) if (ROOT / pkg).is_dir() else ():
            parts = path.relative_to(ROOT).with_suffix("").parts
            out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def _imports(path: Path, name: str, modules: dict[str, Path]) -> set[str]:
    """Project modules `name` imports anywhere in its file (function-level imports included)."""
    is_pkg = path.name == "__init__.py"
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        targets = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                here = name.split(".") if is_pkg else name.split(".")[:-1]
                here = here[: len(here) - (node.level - 1)]
                base = ".".join([*here, base] if base else here)
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
        for t in targets:
            while t and t not in modules:
                t = t.rpartition(".")[0]
            if t and t != name:
                found.add(t)
    return found


def test_no_import_cycles():
    modules = _modules()
    graph = {m: _imports(p, m, modules) for m, p in modules.items()}
    # Tarjan's strongly connected components: any component of two or more modules is a cycle.
    index, low, on_stack, stack, cycles = {}, {}, set(), [], []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    assert not cycles, f"import cycles: {cycles}"


def test_only_the_cli_imports_the_cli():
    modules = _modules()
    offenders = {m: sorted(i for i in _imports(p, m, modules) if i.split(".")[0] == "serverlab")
                 for m, p in modules.items() if not m.startswith("serverlab")}
    assert not {m: i for m, i in offenders.items() if i}


def _code_strings(path: Path) -> list[str]:
    """The string literals of one file's code (docstrings left out: prose may mention a model)."""
    tree = ast.parse(path.read_text())
    docstrings = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            if ast.get_docstring(node, clean=False) is not None:
                docstrings.add(id(node.body[0].value))
    return [n.value for n in ast.walk(tree)
            if isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in docstrings]


def test_no_module_outside_the_registry_names_a_model():
    """No code outside them holds a model's name or short name ("m4") in a string: what differs by
    architecture is read from simkit.registry."""
    archs = registry.architectures()
    full = re.compile(r"\b(" + "|".join(a.name for a in archs) + r")\b")
    short = re.compile(r"^(" + "|".join(a.short for a in archs) + r")(_|$)")
    offenders = []
    for path in _modules().values():
        rel = path.relative_to(ROOT).as_posix()
        if MAY_NAME_MODELS.match(rel):
            continue
        offenders += [f"{rel}: {s[:60]!r}" for s in _code_strings(path) if full.search(s) or short.match(s)]
    assert not offenders, "\n".join(offenders)


def test_an_architectures_own_parameters_live_in_its_registry_entry_and_its_files():
    """A parameter only one architecture has (m8's ring) is declared by its registry entry (the profile
    takes it from there) and used only by its model files, its probes and the derivation its entry
    names (CalibrationSpec.from_server): adding an architecture touches no shared module."""
    from simkit.profile import ADDED_LATER, PARAM_DOCS

    own = {name: arch for arch in registry.BUILTIN for name, _d, _doc in arch.params}
    assert own, "no architecture declares a parameter of its own"
    assert set(own) <= set(PARAM_DOCS) and set(own) <= set(ADDED_LATER)  # old profiles load without them
    allowed = {"simkit/registry.py", "calibration/probes.py"}
    for arch in {a.name: a for a in own.values()}.values():
        allowed |= {f"simkit/models/{arch.name}.py", f"realkit/servers/{arch.name}.py",
                    arch.calibration.from_server.partition(":")[0].replace(".", "/") + ".py"}
    pattern = re.compile(r"\b(" + "|".join(own) + r")\b")
    offenders = [f"{path.relative_to(ROOT).as_posix()}: {s[:60]!r}" for path in _modules().values()
                 if path.relative_to(ROOT).as_posix() not in allowed
                 for s in _code_strings(path) if pattern.search(s)]
    assert not offenders, "\n".join(offenders)
