"""The code's shape, as measures anyone can check: no import cycles (lazy imports included), short functions in
the training path, metrics apart from command lines, one list of networks, geometry checked in one place."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / 'yolo_jax'
TRAINING_PATH = ('train.py', 'steps.py', 'parallel.py', 'checkpointing.py', 'evaluation')
MAX_FUNCTION_LINES = 80


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob('*.py'):
        parts = path.relative_to(PACKAGE.parent).with_suffix('').parts
        out['.'.join(parts[:-1] if parts[-1] == '__init__' else parts)] = path
    return out


def _runtime_nodes(tree: ast.AST):
    """Every node of `tree` except those under `if TYPE_CHECKING:` (annotations only: never imported at run time)."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == 'TYPE_CHECKING':
            continue
        yield node
        yield from _runtime_nodes(node)


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The package's modules that `name` imports at run time anywhere in its file (module level or inside
    functions)."""
    found = set()
    for node in _runtime_nodes(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name in modules}
        elif isinstance(node, ast.ImportFrom):
            package = name if path.name == '__init__.py' else name.rpartition('.')[0]
            base = node.module or ''
            if node.level:  # relative: level 1 is the module's own package
                parts = package.split('.')
                base = '.'.join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
            found |= {m for m in [base, *(f'{base}.{a.name}' for a in node.names)] if m in modules}
    return found - {name}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), plus self-loops."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while (w := stack.pop()) != v:
                component.append(w)
            if component:
                out.append(sorted([v, *component]))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_no_import_cycles():
    modules = _modules()
    graph = {name: _imports(name, path, modules) for name, path in modules.items()}
    # A package importing its own submodules is how packages are built, not a cycle.
    for name in graph:
        graph[name] = {m for m in graph[name] if not name.startswith(m + '.')}
    assert _cycles(graph) == []


def test_the_cycle_finder_finds_a_cycle():
    assert _cycles({'a': {'b'}, 'b': {'c'}, 'c': {'a'}, 'd': {'a'}}) == [['a', 'b', 'c']]
    assert _cycles({'a': {'b'}, 'b': set()}) == []


def _training_path_files() -> list[Path]:
    files = []
    for entry in TRAINING_PATH:
        path = PACKAGE / entry
        files += sorted(path.rglob('*.py')) if path.is_dir() else [path]
    return files


@pytest.mark.parametrize('path', _training_path_files(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_training_path_functions_are_short(path):
    long = [f'{node.name}: {node.end_lineno - node.lineno + 1} lines'
            for node in ast.walk(ast.parse(path.read_text()))
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
            and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES]
    assert long == []


def _defines_flags(path: Path) -> bool:
    text = path.read_text()
    return 'flags.DEFINE_' in text or 'DEFINE_config_file' in text


def test_no_module_both_computes_metrics_and_parses_flags():
    metric_modules = [p for p in PACKAGE.rglob('*.py') if 'def voc_map' in p.read_text()
                      or 'def coco_map' in p.read_text()]
    assert metric_modules, 'the metric functions moved: update this test'
    assert [p.name for p in metric_modules if _defines_flags(p)] == []


def test_one_list_of_networks():
    """Network names are spelled out once (defaults.NETWORKS); the module map is keyed by it."""
    from yolo_jax import defaults, models

    assert tuple(defaults.NETWORKS) == defaults.MODEL_NAMES
    assert set(models._MODULES) == set(defaults.NETWORKS)
    literal = "('yolov3', 'yolov3_tiny', 'yolov4', 'yolov4_tiny')"
    assert [p.name for p in PACKAGE.rglob('*.py') if literal in p.read_text()] == []
