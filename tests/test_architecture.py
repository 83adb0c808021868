"""The layers of DESIGN.md, checked on the source: core -> stages -> orchestrate, and nothing reaches into a stage.

Every .py file under compress/ (core, ``mlcompress``), the stage folders and orchestrate/ is parsed with ``ast``; every
import is collected, those inside functions included, and resolved to the module it names (``from mlcompress.export
import runtime`` names the submodule ``mlcompress.export.runtime``; ``from mlcompress.eval import gate`` names the package,
as does ``from mlcompress.vocab_trim import trim``: a name in a stage's ``__all__`` is its API, whatever else it names).

- core imports no stage and not the orchestration layer (one documented exception: the lazy ``mlcompress.Pipeline``);
- a stage imports another stage only through that stage's package (its ``__init__``), or a documented public module;
- only the orchestration layer imports the orchestration layer, and it too uses each stage through its package (the
  root command, orchestrate/cli.py, also imports each stage's ``cli`` module, to mount its ``register(app)``);
- no function is longer than 80 lines.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CORE = "mlcompress"
ORCHESTRATE = "mlcompress.orchestrate"
# folder -> the package it installs as (pyproject's package-dir)
LAYOUT = {"compress": CORE, "vocab_trim": "mlcompress.vocab_trim", "distill": "mlcompress.distill",
          "export": "mlcompress.export", "eval": "mlcompress.eval", "orchestrate": ORCHESTRATE}
STAGES = tuple(pkg for pkg in LAYOUT.values() if pkg not in (CORE, ORCHESTRATE))
PACKAGE_DIRS = {pkg: folder for folder, pkg in LAYOUT.items()}

# Documented exceptions (DESIGN.md, "Layers and imports"), and nothing else:
# core's lazy `mlcompress.Pipeline` / `mlcompress.PipelineResult` re-export (resolved inside __getattr__, on first use)
CORE_LAZY_REEXPORT = {("compress/__init__.py", "mlcompress.orchestrate.runner")}
# stage modules that are public API of their own (any layer may import them)
PUBLIC_STAGE_MODULES = {"mlcompress.export.runtime"}  # the torch-free bundle runtime
# the root command may import each stage's command module, to mount it (``register(app)``)
ROOT_CLI = "orchestrate/cli.py"
STAGE_CLI_MODULES = {f"{stage}.cli" for stage in STAGES}

MAX_FUNCTION_LINES = 80
# Known exceptions to the 80-line rule, being shortened right now in another change (issue 14): remove each entry
# once its file is done. Every other file is held to the limit.


def _source_files() -> list[Path]:
    return sorted(f for folder in LAYOUT for f in (ROOT / folder).rglob("*.py"))


def _module_of(rel: str) -> str:
    """``eval/run.py`` -> ``mlcompress.eval.run``; ``compress/__init__.py`` -> ``mlcompress``."""
    folder, *rest = Path(rel).with_suffix("").parts
    parts = [LAYOUT[folder], *rest]
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_module(name: str) -> bool:
    """Whether a dotted name is a module or package of this repository (a file or folder under the package's folder)."""
    pkg = max((p for p in PACKAGE_DIRS if name == p or name.startswith(p + ".")), key=len, default=None)
    if pkg is None:
        return False
    rest = name[len(pkg):].lstrip(".").split(".") if name != pkg else []
    base = ROOT / PACKAGE_DIRS[pkg] / Path(*rest) if rest else ROOT / PACKAGE_DIRS[pkg]
    return base.with_suffix(".py").is_file() or (base / "__init__.py").is_file()


def _public_names(package: str) -> set[str]:
    """A stage package's public API (its ``__all__``): ``from mlcompress.vocab_trim import trim`` is the function."""
    if package not in STAGES:
        return set()
    import importlib

    return set(getattr(importlib.import_module(package), "__all__", ()))


def imports(rel: str, source: str) -> list[tuple[int, str, bool]]:
    """(line, imported module, inside a function) for every import of ``mlcompress`` modules in one file."""
    module = _module_of(rel)
    package = module if rel.endswith("__init__.py") else module.rpartition(".")[0]
    found: list[tuple[int, str, bool]] = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            nested = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, ast.Import):
                found.extend((child.lineno, a.name, in_function) for a in child.names)
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    anchor = package.split(".")[: len(package.split(".")) - (child.level - 1)]
                    base = ".".join(anchor + ([base] if base else []))
                for a in child.names:
                    sub = f"{base}.{a.name}"
                    named_module = _is_module(sub) and a.name not in _public_names(base)
                    found.append((child.lineno, sub if named_module else base, in_function))
            visit(child, nested)

    visit(ast.parse(source), False)
    return [(line, name, fn) for line, name, fn in found if name == CORE or name.startswith(CORE + ".")]


def _layer(module: str) -> str:
    if module == ORCHESTRATE or module.startswith(ORCHESTRATE + "."):
        return ORCHESTRATE
    return next((s for s in STAGES if module == s or module.startswith(s + ".")), CORE)


def violations(rel: str, source: str) -> list[str]:
    """What one file imports against the layer rules (empty when it keeps them)."""
    own = _layer(_module_of(rel))
    out = []
    for line, target, in_function in imports(rel, source):
        layer = _layer(target)
        where = f"{rel}:{line} imports {target}"
        if layer == own:
            continue
        if own == CORE:
            if (rel, target) in CORE_LAZY_REEXPORT and in_function:
                continue
            out.append(f"{where}: core imports no stage and not the orchestration layer")
        elif layer == ORCHESTRATE:
            out.append(f"{where}: only the orchestration layer imports mlcompress.orchestrate")
        elif layer in STAGES and target != layer and target not in PUBLIC_STAGE_MODULES:
            if rel == ROOT_CLI and target in STAGE_CLI_MODULES:
                continue
            out.append(f"{where}: another stage's internals; import it from {layer} (its __init__)")
    return out


def test_import_rules_hold() -> None:
    found = [v for f in _source_files() for v in violations(f.relative_to(ROOT).as_posix(), f.read_text(encoding="utf-8"))]
    assert not found, "\n".join(found)


@pytest.mark.parametrize("rel, source, problem", [
    ("compress/corpus.py", "def f():\n    from mlcompress.eval.data import parse_tasks\n", "core imports no stage"),
    ("compress/sources.py", "import mlcompress.export\n", "core imports no stage"),
    ("compress/artifacts.py", "from mlcompress.orchestrate import runner\n", "core imports no stage"),
    ("compress/__init__.py", "from mlcompress.orchestrate import runner\n", "core imports no stage"),  # only lazily
    ("distill/general.py", "def f():\n    from mlcompress.vocab_trim.trim import trim\n", "another stage's internals"),
    ("eval/encoders.py", "from mlcompress.export.quantize import QUANTIZE_CHOICES\n", "another stage's internals"),
    ("eval/run.py", "from mlcompress.export import quantize\n", "another stage's internals"),
    ("export/api.py", "from mlcompress.orchestrate.config import STAGES\n", "only the orchestration layer"),
    ("orchestrate/config.py", "from mlcompress.eval.data import parse_tasks\n", "another stage's internals"),
    ("orchestrate/stages.py", "from mlcompress.distill.cli import register\n", "another stage's internals"),
])
def test_the_checker_catches_each_kind_of_violation(rel: str, source: str, problem: str) -> None:
    found = violations(rel, source)
    assert found and problem in found[0], found


@pytest.mark.parametrize("rel, source", [
    ("compress/__init__.py", "def __getattr__(name):\n    from mlcompress.orchestrate import runner\n"),
    ("distill/general.py", "def f():\n    from mlcompress.vocab_trim import trim\n"),
    ("eval/encoders.py", "from mlcompress.export import runtime\n"),
    ("eval/run.py", "from . import data\nfrom .retention import gate\nfrom mlcompress.artifacts import dir_bytes\n"),
    ("orchestrate/cli.py", "from mlcompress.eval.cli import register\nfrom .runner import Pipeline\n"),
    ("orchestrate/config.py", "from mlcompress.eval import parse_tasks\nimport mlcompress.export as ex\n"),
])
def test_the_checker_allows_what_the_design_allows(rel: str, source: str) -> None:
    assert violations(rel, source) == []


def _long_functions(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return [f"{path.relative_to(ROOT).as_posix()}:{n.lineno} {n.name} ({n.end_lineno - n.lineno + 1} lines)"
            for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))
            and n.end_lineno - n.lineno + 1 > MAX_FUNCTION_LINES]


def test_no_function_over_80_lines() -> None:
    long = [x for f in _source_files() for x in _long_functions(f)]
    assert not long, "\n".join(long)
