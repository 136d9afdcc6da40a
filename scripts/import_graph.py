#!/usr/bin/env python3
"""ctrlab's import graph: print it by package, and fail on an import circle or an upward import.

Every module under the package root is parsed with ``ast`` (nothing is imported or executed), and
every ``import``/``from ... import`` statement counts, wherever it stands: at module level, inside a
function, under ``if TYPE_CHECKING``. A function-local import still ties two modules together, and
hiding a circle that way is what this check exists to catch.

Two graphs are built:

* the module graph: one node per file (``ctrlab.config.loading``; a package's ``__init__.py`` is the
  package's own name, ``ctrlab.config``). ``from pkg import name`` is an edge to ``pkg.name`` when
  that is a module, else to ``pkg`` (its ``__init__``); ``import a.b.c`` is an edge to the longest
  prefix that is a module of the tree. Imports of anything outside the tree are ignored.
* the package graph: one node per top-level entry of the root (a subpackage such as ``config``, or a
  module such as ``fileio``; the root's own ``__init__.py`` is ``__init__``). An edge's count is the
  number of distinct module-to-module edges behind it.

It exits 1, naming each problem, when (a) the package graph has a circle, (b) the module graph has a
circle, (c) a package imports one in a higher layer of ``LAYERS``, or (d) a package is missing from
``LAYERS`` (so that the list stays complete); 2 when a file cannot be parsed. Otherwise it prints
``import graph: N packages, M edges, no cycles, no upward imports`` and exits 0.

Usage: ``python scripts/import_graph.py [--root PATH] [--dot]``. ``--root`` is the package directory
(default: ``ctrlab/`` of this repository); ``--dot`` prints the package graph as Graphviz (problem
edges in red) instead of text, and moves every other line to stderr.
"""

from __future__ import annotations

import argparse
import ast
import sys
from collections import defaultdict, deque
from dataclasses import dataclass, field
from pathlib import Path

# Bottom first: a package may import packages of its own level (when that makes no circle) or of
# a lower one, never of a higher one. "__init__" is the root package's own __init__.py.
LAYERS: list[list[str]] = [
    ["fields", "schema", "fileio", "runtime", "metrics", "hashing", "__init__"],
    ["features", "nn"],
    ["models", "data"],
    ["config"],
    ["train", "export"],
    ["inference"],
    ["serve", "experiments"],
    ["cli", "__main__", "demo"],
]
LEVEL: dict[str, int] = {name: level for level, names in enumerate(LAYERS) for name in names}

DEFAULT_ROOT = Path(__file__).resolve().parents[1] / "ctrlab"


@dataclass
class Graph:
    """The module graph of one package tree and the package graph derived from it.

    ``edges``: module -> the set of modules it imports (no self-edges).
    ``package_edges``: (package, package) -> the module pairs behind that edge."""

    root_name: str
    modules: dict[str, Path]
    edges: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))
    package_edges: dict[tuple[str, str], list[tuple[str, str]]] = field(default_factory=lambda: defaultdict(list))

    def package_of(self, module: str) -> str:
        parts = module.split(".")
        return parts[1] if len(parts) > 1 else "__init__"

    @property
    def packages(self) -> list[str]:
        return sorted({self.package_of(m) for m in self.modules})


def module_names(root: Path) -> dict[str, Path]:
    """Dotted module name -> file, for every ``.py`` file under ``root`` (``__pycache__`` skipped)."""
    found: dict[str, Path] = {}
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root)
        if "__pycache__" in rel.parts:
            continue
        parts = [root.name, *rel.with_suffix("").parts]
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def resolve(target: str, modules: dict[str, Path]) -> str | None:
    """The longest prefix of dotted ``target`` that is a module of the tree, or None."""
    parts = target.split(".")
    while parts:
        name = ".".join(parts)
        if name in modules:
            return name
        parts.pop()
    return None


def imported_modules(module: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The modules of the tree that ``module`` (its source at ``path``) imports, anywhere in the file."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    is_package = path.name == "__init__.py"
    targets: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                targets.add(alias.name)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                # relative: level 1 is the package holding this module (a package's own __init__
                # is in itself), each further level one package up
                base = module.split(".") if is_package else module.split(".")[:-1]
                keep = len(base) - (node.level - 1)
                if keep < 1:
                    continue  # above the root: not part of this tree
                base = base[:keep]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            for alias in node.names:
                # `from pkg import name`: pkg.name when that is a module, else pkg itself
                targets.add(f"{source}.{alias.name}" if alias.name != "*" else source)
    found = {resolve(t, modules) for t in targets}
    return {m for m in found if m is not None and m != module}


def build_graph(root: Path) -> Graph:
    """Parse every module under ``root`` and collect both graphs (SyntaxError propagates)."""
    modules = module_names(root)
    graph = Graph(root.name, modules)
    for module, path in modules.items():
        for target in sorted(imported_modules(module, path, modules)):
            graph.edges[module].add(target)
            src, dst = graph.package_of(module), graph.package_of(target)
            if src != dst:
                graph.package_edges[(src, dst)].append((module, target))
    return graph


def find_cycles(nodes: list[str], edges: dict[str, set[str]]) -> list[tuple[list[str], list[str]]]:
    """Each strongly connected component of more than one node (sorted) with one circle in it: the
    shortest path from the component's first node back to itself. Components in sorted order."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    components: list[list[str]] = []
    counter = 0
    for start in nodes:  # Tarjan's algorithm, iterative (no recursion limit on deep chains)
        if start in index:
            continue
        work = [(start, iter(sorted(edges.get(start, ()))))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    components.append(sorted(component))
    return [(c, shortest_circle(c[0], set(c), edges)) for c in sorted(components)]


def shortest_circle(start: str, members: set[str], edges: dict[str, set[str]]) -> list[str]:
    """The shortest path start -> ... -> start inside one strongly connected component (BFS)."""
    previous: dict[str, str] = {}
    queue = deque([start])
    while queue:
        node = queue.popleft()
        for child in sorted(edges.get(node, ())):
            if child not in members:
                continue
            if child == start:
                path = [node]
                while path[-1] != start:
                    path.append(previous[path[-1]])
                return [start, *reversed(path[:-1]), start] if node != start else [start, start]
            if child not in previous:
                previous[child] = node
                queue.append(child)
    raise AssertionError(f"{start} is in a component but on no circle")


def problems(graph: Graph) -> list[str]:
    """Every failed rule, one message each (empty: the graph is clean)."""
    found: list[str] = []
    packages = graph.packages
    for name in packages:
        if name not in LEVEL:
            found.append(f"unknown package '{name}' in {graph.root_name}/: add it to LAYERS in "
                         f"{Path(__file__).name}")
    package_edges: dict[str, set[str]] = defaultdict(set)
    for src, dst in graph.package_edges:
        package_edges[src].add(dst)
    for component, circle in find_cycles(packages, package_edges):
        steps = [f"{a} -> {b} ({graph.package_edges[(a, b)][0][0]} -> {graph.package_edges[(a, b)][0][1]})"
                 for a, b in zip(circle, circle[1:])]
        found.append(f"package import cycle: {' -> '.join(circle)}{among(component, circle)}\n    "
                     + "\n    ".join(steps))
    for component, circle in find_cycles(sorted(graph.modules), graph.edges):
        found.append(f"module import cycle: {' -> '.join(circle)}{among(component, circle)}")
    for (src, dst), pairs in sorted(graph.package_edges.items()):
        if src in LEVEL and dst in LEVEL and LEVEL[dst] > LEVEL[src]:
            shown = ", ".join(f"{a} -> {b}" for a, b in pairs[:3]) + (", ..." if len(pairs) > 3 else "")
            found.append(f"upward import: {src} (level {LEVEL[src]}) imports {dst} (level {LEVEL[dst]}): {shown}")
    return found


def among(component: list[str], circle: list[str]) -> str:
    """When the circle shown is not the whole tangle, name every member of it."""
    if len(component) == len(circle) - 1:
        return ""
    return f" (one circle of a tangle of {len(component)}: {', '.join(component)})"


def text_report(graph: Graph) -> str:
    """The package graph as text: each package with its level and what it imports (module edges)."""
    by_source: dict[str, list[tuple[str, int]]] = defaultdict(list)
    for (src, dst), pairs in graph.package_edges.items():
        by_source[src].append((dst, len(pairs)))
    lines = [f"package import graph of {graph.root_name} (edge count = module-to-module imports):"]
    for name in sorted(graph.packages, key=lambda n: (LEVEL.get(n, len(LAYERS)), n)):
        level = LEVEL.get(name, "?")
        targets = ", ".join(f"{dst} ({count})" for dst, count in
                            sorted(by_source[name], key=lambda t: (-LEVEL.get(t[0], -1), t[0])))
        lines.append(f"  [{level}] {name:<12} -> {targets or '-'}")
    return "\n".join(lines)


def dot_report(graph: Graph, bad_edges: set[tuple[str, str]]) -> str:
    """The package graph in Graphviz syntax, one rank per layer, problem edges in red."""
    lines = ["digraph imports {", "  rankdir=BT;", "  node [shape=box];"]
    by_level: dict[object, list[str]] = defaultdict(list)
    for name in graph.packages:
        by_level[LEVEL.get(name, "unknown")].append(name)
    for level, names in sorted(by_level.items(), key=lambda kv: str(kv[0])):
        quoted = " ".join(f'"{n}";' for n in sorted(names))
        lines.append(f"  {{ rank=same; {quoted} }}")
    for (src, dst), pairs in sorted(graph.package_edges.items()):
        color = ' color="red" fontcolor="red"' if (src, dst) in bad_edges else ""
        lines.append(f'  "{src}" -> "{dst}" [label="{len(pairs)}"{color}];')
    lines.append("}")
    return "\n".join(lines)


def bad_package_edges(graph: Graph) -> set[tuple[str, str]]:
    """Package edges that point upward or lie on a package circle (for --dot colouring)."""
    bad = {(s, d) for s, d in graph.package_edges if s in LEVEL and d in LEVEL and LEVEL[d] > LEVEL[s]}
    package_edges: dict[str, set[str]] = defaultdict(set)
    for src, dst in graph.package_edges:
        package_edges[src].add(dst)
    for component, _circle in find_cycles(graph.packages, package_edges):
        members = set(component)
        bad.update((s, d) for s, d in graph.package_edges if s in members and d in members)
    return bad


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, default=DEFAULT_ROOT, help="the package directory (default: %(default)s)")
    parser.add_argument("--dot", action="store_true", help="print the package graph as Graphviz")
    args = parser.parse_args(argv)
    root = args.root.resolve()
    if not (root / "__init__.py").is_file():
        print(f"{root}: not a package (no __init__.py)", file=sys.stderr)
        return 2
    try:
        graph = build_graph(root)
    except SyntaxError as exc:
        print(f"{exc.filename}:{exc.lineno}: cannot parse: {exc.msg}", file=sys.stderr)
        return 2
    info = sys.stderr if args.dot else sys.stdout
    print(dot_report(graph, bad_package_edges(graph)) if args.dot else text_report(graph))
    found = problems(graph)
    for message in found:
        print(f"ERROR: {message}", file=sys.stderr)
    if found:
        print(f"import graph: {len(found)} problem(s)", file=sys.stderr)
        return 1
    print(f"import graph: {len(graph.packages)} packages, {len(graph.package_edges)} edges, no cycles, "
          f"no upward imports", file=info)
    return 0


if __name__ == "__main__":
    sys.exit(main())
