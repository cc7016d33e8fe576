"""The package's shape holds: no import cycle, every module imports alone in a fresh interpreter (as Ray's
own test_circular_imports does), and the dependency rule - the core (``model``, ``method``, ``losses``,
``metrics``, ``evaluation``, ``io``) loads no Ray or MLflow; ``bidpm.cli``, ``bidpm.config`` and loading
any shipped config load no torch; ``tune`` knows neither runner; training one model needs neither room.

The import graph is read from the source (every ``import`` statement, at any depth, relative imports
resolved), so a lazy import inside a function counts too: a cycle hidden in a function is still one.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PACKAGE = REPO / "platform" / "bidpm"
CORE = ("model", "method", "losses", "metrics", "evaluation", "io", "scaling", "plan")


def _name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _imports(module: str) -> set[str]:
    """Every name ``module`` imports (any depth), as absolute dotted names, ``from x import y`` as x and x.y."""
    path = MODULES[module]
    base = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            where = node.module or ""
            if node.level:
                where = ".".join(base[:len(base) - (node.level - 1)] + ([node.module] if node.module else []))
            out.add(where)
            out.update(f"{where}.{a.name}" for a in node.names)
    return out


def _graph() -> dict[str, set[str]]:
    """bidpm module -> the bidpm modules it imports, with the packages that loading them runs first
    (a module's own ancestors excluded: they are loaded before it, not by it)."""
    graph = {}
    for m in MODULES:
        targets = {t for t in _imports(m) if t in MODULES}
        for t in list(targets):
            parts = t.split(".")
            targets.update(".".join(parts[:i]) for i in range(1, len(parts)))
        graph[m] = {t for t in targets if t in MODULES and t != m and not m.startswith(t + ".")}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[list[str]] = []
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on.add(root)
        while work:
            v, it = work[-1]
            for w in it:
                if w not in index:
                    index[w] = low[w] = len(index)
                    stack.append(w)
                    on.add(w)
                    work.append((w, iter(sorted(graph[w]))))
                    break
                if w in on:
                    low[v] = min(low[v], index[w])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[v])
                if low[v] == index[v]:
                    comp = []
                    while True:
                        w = stack.pop()
                        on.discard(w)
                        comp.append(w)
                        if w == v:
                            break
                    if len(comp) > 1:
                        found.append(sorted(comp))
    return found


def _reach(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for t in graph[todo.pop()] - seen:
            seen.add(t)
            todo.append(t)
    return seen


def test_the_cycle_finder_finds_a_cycle():
    """Control: the finder is not blind (a -> b -> c -> a, and a self-contained d)."""
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == [["a", "b", "c"]]


def test_no_import_cycle_even_through_lazy_imports():
    assert _cycles(_graph()) == []


def test_rooms_keep_to_their_side():
    graph = _graph()
    runners = ("bidpm.search", "bidpm.study")
    for m in MODULES:
        if m == "bidpm.tune" or m.startswith("bidpm.tune."):
            assert not {t for t in graph[m] if t.startswith(runners)}, f"{m} imports a runner"
    reach = _reach(graph, "bidpm.commands.train")
    assert not {t for t in reach if t.startswith(runners)}, "training one model reaches the search or study room"
    for m in MODULES:
        if m.split(".")[1:2] and m.split(".")[1] in CORE:
            outside = {t for t in _imports(m) if t.split(".")[0] in ("ray", "mlflow", "optuna")}
            assert not outside, f"core module {m} imports {outside}"


def _fresh(code: str) -> dict:
    """Run ``code`` in a fresh interpreter with the package on its path; it prints one JSON line."""
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=300,
                         cwd=str(REPO), env={"PYTHONPATH": str(PACKAGE.parent), "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_the_cli_and_loading_any_config_load_no_torch():
    configs = sorted(str(p) for p in (REPO / "configs").glob("*.yaml"))
    got = _fresh(f"""
        import json, sys
        import bidpm.cli
        from bidpm.config import load_config
        for c in {configs!r}:
            load_config(c)
        print(json.dumps(sorted({{k.split(".")[0] for k in sys.modules}} & {{"torch", "ray", "mlflow", "nibabel"}})))
    """)
    assert got == []


def test_the_shard_readers_load_no_torch():
    """Every Ray Data read task of a fit unpickles ``bidpm.data.readers``: it decodes Parquet into numpy and
    needs no torch, which would cost each new read-task process seconds of import on a CPU node."""
    got = _fresh("""
        import json, sys
        import bidpm.data.readers
        print(json.dumps(sorted({k.split(".")[0] for k in sys.modules} & {"torch", "mlflow"})))
    """)
    assert got == []


FORK_EACH = """
import importlib, json, os, sys


def each_alone(names, forbidden, failed):
    running, todo = {}, list(names)
    while todo or running:
        while todo and len(running) < (os.cpu_count() or 1):
            name = todo.pop(0)
            r, w = os.pipe()
            pid = os.fork()
            if pid == 0:                            # the child: a fresh interpreter as far as bidpm is concerned
                os.close(r)
                try:
                    importlib.import_module(name)
                    loaded = sorted({k.split(".")[0] for k in sys.modules} & set(forbidden))
                    msg = f"loads {loaded}" if loaded else ""
                except BaseException as exc:  # noqa: BLE001 - reported to the parent
                    msg = f"{type(exc).__name__}: {exc}"
                os.write(w, msg.encode()[:4000])
                os._exit(0)
            os.close(w)
            running[pid] = (name, r)
        pid, _ = os.wait()
        name, r = running.pop(pid)
        msg = b""
        while chunk := os.read(r, 4096):
            msg += chunk
        os.close(r)
        if msg:
            failed[name] = msg.decode()


failed = {}
for preload, names, forbidden in json.loads(sys.argv[1]):
    for heavy in preload:
        importlib.import_module(heavy)      # third-party only: no bidpm module is loaded before a child's import
    assert not [k for k in sys.modules if k == "bidpm" or k.startswith("bidpm.")]
    each_alone(names, forbidden, failed)
print(json.dumps(failed))
"""
THIRD_PARTY = ["numpy", "scipy", "scipy.ndimage", "scipy.optimize", "scipy.stats", "torch", "torchvision", "lpips", "nibabel",
               "pyarrow", "pyarrow.parquet", "pydantic", "yaml", "PIL", "matplotlib", "matplotlib.pyplot"]
ORCHESTRATION = ["ray", "ray.data", "ray.tune", "ray.train", "ray.train.torch", "mlflow", "mlflow.pyfunc", "optuna"]


def _each_alone(*phases: tuple[list[str], list[str], list[str]]) -> dict[str, str]:
    """Per phase (preload, names, forbidden): import each of ``names`` in a fresh interpreter of its own,
    forked from one that holds only third-party libraries (``preload``, added up phase by phase), so 150
    imports take seconds, not minutes; a child that loads a ``forbidden`` package fails. Returns module ->
    what went wrong."""
    arg = json.dumps(phases)
    out = subprocess.run([sys.executable, "-c", FORK_EACH, arg], capture_output=True, text=True, timeout=600,
                         cwd=str(REPO), env={"PYTHONPATH": str(PACKAGE.parent), "PATH": "/usr/bin:/bin",
                                             "MPLBACKEND": "Agg"})
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not hasattr(__import__("os"), "fork"), reason="needs fork")
def test_every_module_imports_alone_and_the_core_loads_no_ray_or_mlflow():
    """Each module alone: a cycle that breaks at import shows here. The core modules are imported without
    Ray, MLflow or Optuna loaded first, and must not load them."""
    core = [m for m in MODULES if m.split(".")[1:2] and m.split(".")[1] in CORE]
    rest = [m for m in MODULES if m not in core]
    assert _each_alone((THIRD_PARTY, core, ["ray", "mlflow", "optuna"]), (ORCHESTRATION, rest, [])) == {}


def test_the_lone_import_check_is_not_blind():
    """Control: a child that loads a forbidden package, and one that cannot be imported, are reported."""
    got = _each_alone(([], ["json", "bidpm.no_such_module"], ["json"]))
    assert got["json"] == "loads ['json']" and got["bidpm.no_such_module"].startswith("ModuleNotFoundError")
