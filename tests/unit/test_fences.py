"""Package fences, checked on the source (parsed with ``ast``, nothing is imported).

(a) The library (``processor.runtime``, ``processor.kafka``, ``processor.observability``,
``processor.topology`` and the top-level modules) never imports the tools built on it:
``processor.cli``, ``processor.dev``, ``processor.bench``, ``processor.chaos``.
(b) Only ``processor.kafka`` speaks Kafka: ``processor.runtime``, ``processor.observability``,
``processor.topology`` and the top-level modules import none of ``faust``, ``mode``, ``aiokafka``,
``confluent_kafka``.

Every import counts: at module level, inside functions, under ``if TYPE_CHECKING:``, relative ones, and
``importlib.import_module("...")`` / ``__import__("...")`` with a literal name.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterable, Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PACKAGE = REPO / "processor"

TOOLS = ("processor.cli", "processor.dev", "processor.bench", "processor.chaos")
KAFKA = ("faust", "mode", "aiokafka", "confluent_kafka")

# ``python -m processor`` runs the CLI: that is the whole of ``processor/__main__.py``, which nothing imports.
TOOLS_EXEMPT = frozenset({"processor/__main__.py"})


def _module_name(rel: str) -> str:
    parts = rel.removesuffix(".py").split("/")
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _package_of(rel: str) -> str:
    """The package a module's relative imports start from."""
    name = _module_name(rel)
    return name if rel.endswith("/__init__.py") else name.rpartition(".")[0]


def imported_names(tree: ast.AST, rel: str) -> Iterator[tuple[ast.AST, list[str]]]:
    """Each import statement (or literal dynamic import) anywhere in ``tree`` with the dotted names it reaches."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield node, [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                package = _package_of(rel).split(".")
                anchor = ".".join(package[: len(package) - (node.level - 1)])
                base = f"{anchor}.{base}" if base else anchor
            # ``from processor import cli`` reaches processor.cli; ``from processor.dev.x import y`` reaches
            # processor.dev.x (and, harmlessly, processor.dev.x.y).
            yield node, [base, *(f"{base}.{alias.name}" for alias in node.names if alias.name != "*")]
        elif (
            isinstance(node, ast.Call)
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
            and (
                (isinstance(node.func, ast.Name) and node.func.id in ("import_module", "__import__"))
                or (isinstance(node.func, ast.Attribute) and node.func.attr == "import_module")
            )
        ):
            yield node, [node.args[0].value]


def _matches(name: str, forbidden: Iterable[str]) -> bool:
    return any(name == f or name.startswith(f + ".") for f in forbidden)


def violations(source: str, rel: str, forbidden: Iterable[str]) -> list[str]:
    """``path:line: statement`` for every import in ``source`` that reaches a ``forbidden`` module."""
    forbidden = tuple(forbidden)
    tree = ast.parse(source, filename=rel)
    found = [
        (getattr(node, "lineno", 0), ast.unparse(node))
        for node, names in imported_names(tree, rel)
        if any(_matches(name, forbidden) for name in names)
    ]
    return [f"{rel}:{line}: {statement}" for line, statement in sorted(set(found))]


def modules(*subpackages: str, top_level: bool = True) -> dict[str, str]:
    """Source of every module in ``subpackages`` (recursively) and, with ``top_level``, ``processor/*.py``."""
    paths: list[Path] = []
    for sub in subpackages:
        assert (PACKAGE / sub).is_dir(), f"processor/{sub} is not a directory: update the fence"
        paths.extend((PACKAGE / sub).rglob("*.py"))
    if top_level:
        paths.extend(PACKAGE.glob("*.py"))
    return {p.relative_to(REPO).as_posix(): p.read_text(encoding="utf-8") for p in sorted(paths)}


def _check(scanned: dict[str, str], forbidden: tuple[str, ...], what: str) -> None:
    assert scanned, "no modules were scanned: the fence would pass vacuously"
    found = [line for rel, source in scanned.items() for line in violations(source, rel, forbidden)]
    assert not found, f"{what} ({', '.join(forbidden)}):\n" + "\n".join(found)


def test_library_does_not_import_the_tools() -> None:
    scanned = modules("runtime", "kafka", "observability", "topology")
    assert {"processor/runtime/__init__.py", "processor/kafka/__init__.py", "processor/config.py"} <= set(scanned)
    scanned = {rel: src for rel, src in scanned.items() if rel not in TOOLS_EXEMPT}
    _check(scanned, TOOLS, "the library imports the tools built on it")


def test_only_processor_kafka_speaks_kafka() -> None:
    scanned = modules("runtime", "observability", "topology")
    assert {"processor/runtime/__init__.py", "processor/topology/__init__.py", "processor/config.py"} <= set(scanned)
    assert not any(rel.startswith("processor/kafka/") for rel in scanned)
    _check(scanned, KAFKA, "modules outside processor/kafka import a Kafka client")


SYNTHETIC = """\
import os
import processor.client
from processor.config import Settings
from processor import dev
import processor.bench.report as report

def later():
    from processor.chaos.run import main
    import faust
    if True:
        import confluent_kafka.admin

from ..cli import main as cli_main
from . import pipeline
from faustish import nothing
importlib.import_module("aiokafka")
"""


def test_the_checker_flags_offending_imports() -> None:
    rel = "processor/runtime/synthetic.py"
    assert violations(SYNTHETIC, rel, TOOLS) == [
        f"{rel}:4: from processor import dev",
        f"{rel}:5: import processor.bench.report as report",
        f"{rel}:8: from processor.chaos.run import main",
        f"{rel}:13: from ..cli import main as cli_main",
    ]
    assert violations(SYNTHETIC, rel, KAFKA) == [
        f"{rel}:9: import faust",
        f"{rel}:11: import confluent_kafka.admin",
        f"{rel}:16: importlib.import_module('aiokafka')",
    ]
    assert violations("import processor.runtime\nfrom processor import config\n", rel, TOOLS) == []


@pytest.mark.parametrize("offending", ["from processor import cli", "import mode", "from processor.dev import x"])
def test_a_fence_fails_on_an_offending_module(offending: str) -> None:
    with pytest.raises(AssertionError, match=re.escape("processor/topology/bad.py:1: ")):
        _check({"processor/topology/bad.py": offending + "\n"}, TOOLS + KAFKA, "synthetic")
