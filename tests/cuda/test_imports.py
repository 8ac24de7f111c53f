"""The CUDA modules import in one direction: no cycle among fastconv.cuda modules,
counting the imports inside functions too (those hide a cycle until a call order
trips it)."""
import ast
import os

import fastconv

PACKAGE = os.path.dirname(os.path.abspath(fastconv.__file__))


def _module_name(path):
    rel = os.path.relpath(path, os.path.dirname(PACKAGE))[:-3].replace(os.sep, ".")
    return rel[:-len(".__init__")] if rel.endswith(".__init__") else rel


def _imports(path, name):
    """fastconv modules that the module at `path` imports, anywhere in its body."""
    package = name if path.endswith("__init__.py") else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(open(path).read())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("fastconv"))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if not target.startswith("fastconv"):
                continue
            found.add(target)
            for alias in node.names:          # `from . import gemm` names a module
                found.add(f"{target}.{alias.name}")
    return found


def _graph():
    """module -> the fastconv modules it imports. Edges to packages (``from .. import
    shapes`` runs fastconv/__init__.py too) are left out: every submodule has them."""
    modules, packages = {}, set()
    for folder, _, files in os.walk(PACKAGE):
        for file in files:
            if file.endswith(".py"):
                path = os.path.join(folder, file)
                modules[_module_name(path)] = path
                if file == "__init__.py":
                    packages.add(_module_name(path))
    return {name: {m for m in _imports(path, name)
                   if m in modules and m != name and m not in packages}
            for name, path in modules.items()}


def _cycles(graph, members):
    """Strongly connected components of more than one module, within `members`."""
    index, low, stack, on_stack, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v] & members:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.add(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(members):
        if v not in index:
            visit(v)
    return out


def test_no_import_cycle_among_the_cuda_modules():
    graph = _graph()
    cuda_modules = {m for m in graph if m.startswith("fastconv.cuda")}
    assert "fastconv.cuda._kernels" in cuda_modules
    assert _cycles(graph, cuda_modules) == []


def test_kernels_helpers_do_not_import_interop():
    assert "fastconv.cuda.interop" not in _graph()["fastconv.cuda._kernels"]
