"""kdlib's layout: the core loads alone, imports nothing in a cycle, and keeps its private helpers
to the module that defines them; the course's machinery sits in kdlib.course."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "kdlib"


def _modules() -> dict[str, Path]:
    """Dotted module name -> file, for every module of the package."""
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def _imports(name: str, path: Path, known: set[str]) -> list[tuple[str, list[str]]]:
    """(module imported, names taken from it) for every import in the file, at any depth."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            names = [a.name for a in node.names]
            if target in known:
                found.append((target, names))
            for n in names:  # from . import losses: the submodule itself
                if f"{target}.{n}" in known:
                    found.append((f"{target}.{n}", []))
        elif isinstance(node, ast.Import):
            found += [(a.name, []) for a in node.names if a.name in known]
    return found


def _graph() -> dict[str, set[str]]:
    mods = _modules()
    return {
        name: {t for t, _ in _imports(name, path, set(mods)) if t != name and t != "kdlib"}
        for name, path in mods.items()
    }


def test_import_kdlib_leaves_the_course_machinery_out():
    code = (
        "import sys, kdlib\n"
        "print(sorted(m for m in sys.modules if m.startswith('kdlib.course')"
        " or m.split('.')[0] in ('matplotlib', 'ipywidgets', 'nbclient')))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[]", f"import kdlib loaded: {out.strip()}"


def test_course_loads_on_first_use():
    import kdlib

    assert kdlib.course.trained_teacher is kdlib.course.recipes.trained_teacher
    assert callable(kdlib.course.viz.history_curves)


def _find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """A list of modules that import each other in a circle, or None (depth-first search)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node, path):
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state and (found := visit(nxt, path + [nxt])):
                return found
        state[node] = 2
        return None

    for name in sorted(graph):
        if name not in state and (found := visit(name, [name])):
            return found
    return None


def test_the_cycle_finder_finds_cycles():
    assert _find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_no_import_cycle():
    cycle = _find_cycle(_graph())
    assert cycle is None, f"import cycle: {' -> '.join(cycle)}"


def test_core_does_not_import_the_machinery():
    graph = _graph()
    for name, targets in graph.items():
        if not name.startswith("kdlib.course"):
            bad = sorted(t for t in targets if t.startswith("kdlib.course"))
            assert not bad, f"{name} imports {bad}"


def test_no_private_helper_used_outside_its_module():
    mods = _modules()
    bad = []
    for name, path in mods.items():
        for target, names in _imports(name, path, set(mods)):
            private = [n for n in names if n.startswith("_") and not n.startswith("__")]
            if target != name and private:
                bad.append(f"{name} imports {private} from {target}")
        tree = ast.parse(path.read_text())
        aliases = {}  # local name -> kdlib module, from `from . import parallel`
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level:
                for t, ns in _imports(name, path, set(mods)):
                    for n in ns:
                        if f"{t}.{n}" in mods:
                            aliases[n] = f"{t}.{n}"
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Name)
                and node.value.id in aliases
                and node.attr.startswith("_")
                and not node.attr.startswith("__")
            ):
                bad.append(f"{name} uses {aliases[node.value.id]}.{node.attr}")
    assert not bad, "\n".join(sorted(set(bad)))


LOOPS = [("train", "fit"), ("distill", "distill"), ("features", "distill_features")]


@pytest.mark.parametrize(("module", "name"), LOOPS)
def test_the_training_loops_fit_on_a_screen(module, name):
    # each shows one idea (the step, the KD loss, the feature term): at most 80 lines of code,
    # signature included, docstring, blank lines and comments not, and at most 12 parameters
    source = (PACKAGE / f"{module}.py").read_text()
    lines = source.splitlines()
    fn = next(n for n in ast.parse(source).body if getattr(n, "name", None) == name)
    doc = fn.body[0]
    span = [*range(fn.lineno - 1, doc.lineno - 1), *range(doc.end_lineno, fn.end_lineno)]
    code = [lines[i] for i in span if lines[i].strip() and not lines[i].strip().startswith("#")]
    args = fn.args
    own = len(args.posonlyargs) + len(args.args) + len(args.kwonlyargs)
    assert len(code) <= 80, f"{name}: {len(code)} lines of code"
    assert own <= 12, f"{name}: {own} parameters"
