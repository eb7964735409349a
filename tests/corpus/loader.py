"""Import an example's definitions without running its demo.

Many examples are scripts: their models sit at module level (or inside the ``if __name__ ==
"__main__":`` block) between lines that create an in-memory SQLite engine, fill it and print
query results. :func:`load` runs a file's *definitions* only, as a module of its own:

* imports, ``def`` and ``class`` statements, and ``if`` blocks other than the main guard;
* assignments to plain names (``Base = declarative_base()``, ``engine = create_engine(...)``,
  ``intpk = Annotated[...]``) unless they call something the file itself defines (``e1 =
  Example(...)``, ``now = time_passes(s)``), call through an attribute (``q =
  session.query(...)``) or use a name such a statement would have bound;
* the calls that configure mappings: ``event.listen(...)`` and ``registry.map_imperatively(
  ...)``.

Everything else (``session.add(...)``, ``create_all``, loops, ``with`` blocks, asserts,
prints) is the demo, which the adapters re-enact through a session we control. The same
file always loads as the same module name (``examples.<package>.<file>``), in the recording
and in the replaying process alike, so the classes a journal names are found again.
"""

from __future__ import annotations

import ast
import importlib
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from types import ModuleType

__all__ = ["load", "module_name"]

MAPPING_CALLS = frozenset({"listen", "map_imperatively"})


def module_name(relative: str) -> str:
    """Return the module name a file under ``examples/`` is loaded as."""
    stem = relative.removesuffix(".py").replace("-", "_").replace("/", ".")
    return f"examples.{stem}"


def load(
    root: Path,
    relative: str,
    *,
    main_block: bool = False,
    replacements: Sequence[tuple[str, str]] = (),
) -> ModuleType:
    """Run the definitions of ``examples/<relative>`` as a module and return it.

    :param root: the directory holding the ``examples`` package (it goes on ``sys.path``).
    :param main_block: also take definitions from the ``if __name__ == "__main__":``
        block, for examples that define their models there.
    :param replacements: ``(old, new)`` source edits applied first, each of which must
        match, for an example that no longer runs on this SQLAlchemy as written.
    """
    name = module_name(relative)
    loaded = sys.modules.get(name)
    if loaded is not None:
        return loaded
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    path = root / "examples" / relative
    source = path.read_text(encoding="utf-8")
    for old, new in replacements:
        if old not in source:
            raise ValueError(f"{path} no longer contains {old!r}; update the adapter")
        source = source.replace(old, new)
    tree = ast.parse(source, filename=str(path))
    tree.body = list(_definitions(tree.body, main_block=main_block))
    package = name.rpartition(".")[0]
    importlib.import_module(package)
    module = ModuleType(name)
    module.__file__ = str(path)
    module.__package__ = package
    sys.modules[name] = module
    try:
        exec(compile(tree, str(path), "exec"), module.__dict__)
    except BaseException:
        del sys.modules[name]
        raise
    return module


def _definitions(body: Iterable[ast.stmt], *, main_block: bool) -> Iterable[ast.stmt]:
    defined: set[str] = set()  # classes and functions of the file
    dropped: set[str] = set()  # names bound by demo statements that do not run
    for stmt in _flatten(body, main_block=main_block):
        if isinstance(stmt, ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            defined.add(stmt.name)
            yield stmt
        elif isinstance(stmt, ast.Import | ast.ImportFrom | ast.If):
            yield stmt
        elif isinstance(stmt, ast.Assign | ast.AnnAssign):
            targets = stmt.targets if isinstance(stmt, ast.Assign) else [stmt.target]
            names = [t.id for t in targets if isinstance(t, ast.Name)]
            plain = len(names) == len(targets)
            if plain and stmt.value is not None and _is_definition(stmt.value, defined, dropped):
                yield stmt
            else:
                dropped.update(names)
        elif isinstance(stmt, ast.Expr) and _is_mapping_call(stmt.value, dropped):
            yield stmt
        elif isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant):
            yield stmt  # a docstring


def _flatten(body: Iterable[ast.stmt], *, main_block: bool) -> Iterable[ast.stmt]:
    for stmt in body:
        if isinstance(stmt, ast.If) and _is_main_guard(stmt.test):
            if main_block:
                yield from stmt.body
        else:
            yield stmt


def _is_main_guard(test: ast.expr) -> bool:
    return (
        isinstance(test, ast.Compare)
        and isinstance(test.left, ast.Name)
        and test.left.id == "__name__"
        and len(test.comparators) == 1
        and isinstance(test.comparators[0], ast.Constant)
        and test.comparators[0].value == "__main__"
    )


def _is_definition(value: ast.expr, defined: set[str], dropped: set[str]) -> bool:
    for node in ast.walk(value):
        if isinstance(node, ast.Name) and node.id in dropped:
            return False
        calls_demo = isinstance(node, ast.Call) and (
            not isinstance(node.func, ast.Name) or node.func.id in defined
        )
        if calls_demo:
            return False
    return True


def _is_mapping_call(value: ast.expr, dropped: set[str]) -> bool:
    if not isinstance(value, ast.Call):
        return False
    func = value.func
    callee = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
    uses_dropped = any(isinstance(n, ast.Name) and n.id in dropped for n in ast.walk(value))
    return callee in MAPPING_CALLS and not uses_dropped
