"""The package's layers import only downward, without cycles and without imports hidden in
functions (read from the source with ``ast``; nothing is imported).

Layers, lowest first: errors, registry -> models, datasets -> converters -> engine -> apis ->
deploy -> analysis. ``tools/`` and ``demo/`` sit above them all. A module may import its own
package and anything below it.
"""

import ast
import os
import os.path as osp
from typing import Dict, List, Set, Tuple

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
PACKAGE = 'mobileone_dense'
LAYERS = {
    'errors': 0,
    'registry': 0,
    'models': 1,
    'datasets': 1,
    'converters': 2,
    'engine': 3,
    'apis': 4,
    'deploy': 5,
    'analysis': 6,
}


def modules() -> Dict[str, str]:
    """Dotted module name -> file, for every module of the package."""
    found = {}
    root = osp.join(REPO, PACKAGE)
    for folder, _, files in os.walk(root):
        for name in files:
            if name.endswith('.py'):
                path = osp.join(folder, name)
                dotted = osp.relpath(path, REPO)[:-3].replace(os.sep, '.')
                found[dotted[: -len('.__init__')] if dotted.endswith('.__init__') else dotted] = (
                    path
                )
    return found


def imports_of(module: str, path: str) -> List[Tuple[str, int, bool]]:
    """(imported package module, line, inside a function) for each import of our package."""
    with open(path) as f:
        tree = ast.parse(f.read(), path)
    package = module if path.endswith('__init__.py') else module.rpartition('.')[0]
    found = []

    def visit(node, in_function):
        for child in ast.iter_child_nodes(node):
            nested = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef))
            names = []
            if isinstance(child, ast.Import):
                names = [alias.name for alias in child.names]
            elif isinstance(child, ast.ImportFrom):
                if child.level:
                    base = package.split('.')
                    base = base[: len(base) - child.level + 1]
                    target = '.'.join(base + ([child.module] if child.module else []))
                else:
                    target = child.module or ''
                names = [target] + [f'{target}.{alias.name}' for alias in child.names]
            for name in names:
                if name == PACKAGE or name.startswith(PACKAGE + '.'):
                    found.append((name, child.lineno, in_function))
            visit(child, nested)

    visit(tree, False)
    return found


def layer(module: str) -> int:
    parts = module.split('.')
    return LAYERS.get(parts[1], -1) if len(parts) > 1 else 99  # the package's face: above all


def graph() -> Tuple[Dict[str, Set[str]], List[str]]:
    """Module -> imported package modules (resolved to existing modules), and the problems."""
    known = modules()
    edges, problems = {}, []
    for module, path in sorted(known.items()):
        edges[module] = set()
        for name, line, in_function in imports_of(module, path):
            target = name
            while target not in known and '.' in target:
                target = target.rpartition('.')[0]
            if target not in known or target == module:
                continue
            if in_function:
                problems.append(f'{module}:{line} imports {target} inside a function')
            edges[module].add(target)
            if target.split('.')[:2] != module.split('.')[:2] and layer(target) > layer(module):
                problems.append(f'{module}:{line} imports {target}, a higher layer')
    return edges, sorted(set(problems))


def cycles(edges: Dict[str, Set[str]]) -> List[List[str]]:
    """Import cycles between different packages of ours (Tarjan's strongly connected parts,
    each package of ``mobileone_dense`` taken as one node)."""

    def package_of(module):
        return '.'.join(module.split('.')[:2])

    nodes: Dict[str, Set[str]] = {}
    for source, targets in edges.items():
        nodes.setdefault(package_of(source), set()).update(
            package_of(t) for t in targets if package_of(t) != package_of(source)
        )
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def connect(node):
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in nodes.get(node, ()):
            if target not in index:
                connect(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            part = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                part.append(top)
                if top == node:
                    break
            if len(part) > 1:
                found.append(sorted(part))

    for node in sorted(nodes):
        if node not in index:
            connect(node)
    return found


def test_imports_run_downward_without_hidden_imports():
    _, problems = graph()
    assert not problems, '\n'.join(problems)


def test_no_import_cycles_between_packages():
    edges, _ = graph()
    assert not cycles(edges), cycles(edges)


def test_the_checker_sees_a_planted_violation(tmp_path, monkeypatch):
    """The walker finds an upward import, a hidden one and a cycle (a copy of the rules on a
    made-up package)."""
    bad = tmp_path / PACKAGE
    (bad / 'models').mkdir(parents=True)
    (bad / 'apis').mkdir()
    (bad / '__init__.py').write_text('')
    (bad / 'models' / '__init__.py').write_text('from ..apis import run\n')
    (bad / 'apis' / '__init__.py').write_text('def run():\n    from ..models import x\n')
    monkeypatch.setattr(__import__(__name__), 'REPO', str(tmp_path))
    edges, problems = graph()
    assert any('a higher layer' in p for p in problems)
    assert any('inside a function' in p for p in problems)
    assert cycles(edges) == [['mobileone_dense.apis', 'mobileone_dense.models']]
