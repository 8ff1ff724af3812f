"""No import circles among the project's own modules.

The graph is read from the source, not from what Python happens to load: every `import` and `from ... import` of a
module counts, those inside functions and `if TYPE_CHECKING:` included (a lazy import only hides a circle until the
day both modules load in the other order). An import names the deepest module it loads: `from a.b import c` is
`a.b.c` when that is a module, else the package `a.b` (its `__init__`); `import a.b.c` is `a.b.c`.
"""
from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
#: The project's packages and the folder each lives in.
PACKAGES = {
    "operators": REPO / "operators",
    "localaws": REPO / "localaws",
    "localdb": REPO / "localdb",
    "batch_worker": REPO / "images" / "worker" / "batch_worker",
    "plugins": REPO / "plugins",
    "dags": REPO / "dags",
}
#: Folders Airflow puts on sys.path: their modules also import each other by their bare names.
ON_SYS_PATH = ("plugins", "dags")


@dataclass(frozen=True)
class Edge:
    importer: str
    imported: str
    where: str  # file:line of the import statement

    def __str__(self) -> str:
        return f"{self.importer} -> {self.imported} ({self.where})"


def modules_of(packages: dict[str, Path], on_sys_path: tuple[str, ...] = ()) -> tuple[dict[str, Path], dict[str, str]]:
    """(module name -> file, bare name -> module name): every .py file under each package's folder, named as it is
    imported; the bare names are those of the modules of the `on_sys_path` folders."""
    files: dict[str, Path] = {}
    aliases: dict[str, str] = {}
    for package, folder in packages.items():
        for path in sorted(folder.rglob("*.py")):
            parts = list(path.relative_to(folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            name = ".".join([package, *parts])
            files[name] = path
            if package in on_sys_path and parts:
                aliases.setdefault(".".join(parts), name)
    return files, aliases


def import_graph(files: dict[str, Path], aliases: dict[str, str] | None = None,
                 root: Path | None = None) -> dict[str, list[Edge]]:
    """Module -> its imports of the other modules in `files` (each with where it is written)."""
    aliases = aliases or {}

    def known(name: str) -> str | None:
        """The deepest module of `name` (a dotted import path) that is one of ours."""
        while name:
            if name in files:
                return name
            if name in aliases:
                return aliases[name]
            name = name.rpartition(".")[0]
        return None

    graph: dict[str, list[Edge]] = {}
    for module, path in files.items():
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        where = path.relative_to(root) if root else path
        edges: dict[str, Edge] = {}
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            targets: list[str | None] = []
            if isinstance(node, ast.Import):
                targets = [known(alias.name) for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:  # relative: from the module's package, one level up per dot after the first
                    base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                    base = f"{base}.{node.module}" if node.module else base
                else:
                    base = node.module or ""
                for alias in node.names:
                    submodule = f"{base}.{alias.name}"
                    targets.append(submodule if submodule in files else aliases.get(submodule) or known(base))
            for target in targets:
                if target and target != module and target not in edges:
                    edges[target] = Edge(module, target, f"{where}:{node.lineno}")
        graph[module] = sorted(edges.values(), key=lambda e: e.imported)
    return graph


def circles(graph: dict[str, list[Edge]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm, without recursion), each
    sorted, in the order of their first module."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(graph[start]))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            module, edges = work[-1]
            edge = next(edges, None)
            if edge is not None:
                other = edge.imported
                if other not in index:
                    index[other] = low[other] = len(index)
                    stack.append(other)
                    on_stack.add(other)
                    work.append((other, iter(graph.get(other, []))))
                elif other in on_stack:
                    low[module] = min(low[module], index[other])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[module])
            if low[module] == index[module]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == module:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return sorted(found)


def circle_report(graph: dict[str, list[Edge]], found: list[list[str]]) -> str:
    lines = []
    for component in found:
        members = set(component)
        lines.append("circle: " + ", ".join(component))
        lines.extend(f"    {edge}" for module in component for edge in graph[module] if edge.imported in members)
    return "\n".join(lines)


def test_the_projects_modules_import_each_other_without_circles():
    files, aliases = modules_of(PACKAGES, ON_SYS_PATH)
    assert "operators.kit.batch" in files and "batch_worker.runtime" in files and "plugins.airbatch_runs" in files
    graph = import_graph(files, aliases, root=REPO)
    found = circles(graph)
    assert not found, ("modules that import each other (move what both need into a module below them):\n"
                       + circle_report(graph, found))


def write(folder: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def test_the_checker_finds_circles_through_lazy_relative_and_package_imports(tmp_path):
    write(tmp_path / "pkg", {
        "__init__.py": "from pkg.f import thing\n",
        "a.py": "def later():\n    from pkg import b\n",  # a lazy import counts
        "b.py": "import pkg.a\n",
        "c.py": "from pkg import a\nimport json\n",  # imports into a circle without being in one
        "d.py": "from . import e\n",
        "e.py": "from .d import name\n",  # a name of d, not a module: the edge goes to d
        "f.py": "from pkg import thing_of_the_package\nthing = 1\n",  # not a submodule: the package's __init__
        "sub/__init__.py": "",
        "sub/g.py": "from ..c import x\nfrom .. import a\n",
    })
    files, _ = modules_of({"pkg": tmp_path / "pkg"})
    graph = import_graph(files, root=tmp_path)
    assert [e.imported for e in graph["pkg.sub.g"]] == ["pkg.a", "pkg.c"]
    found = circles(graph)
    assert found == [["pkg", "pkg.f"], ["pkg.a", "pkg.b"], ["pkg.d", "pkg.e"]]
    report = circle_report(graph, found)
    assert "pkg.a -> pkg.b (pkg/a.py:2)" in report and "pkg.b -> pkg.a (pkg/b.py:1)" in report
    assert "pkg.f -> pkg (pkg/f.py:1)" in report and "pkg.c" not in report


def test_the_checker_knows_modules_of_folders_on_sys_path_by_their_bare_names(tmp_path):
    write(tmp_path, {"dags/one.py": "import two\n", "dags/two.py": "from dags.one import x\n"})
    files, aliases = modules_of({"dags": tmp_path / "dags"}, on_sys_path=("dags",))
    assert circles(import_graph(files, aliases)) == [["dags.one", "dags.two"]]
