"""The package's shape: imports run one way (cli -> acquire -> {shortlist, select} -> {posterior,
sketch} -> backends -> {blocks, validation, options, errors}), backends import no public module, and
every vocabulary is spelled in one place (ntkal.options)."""

from __future__ import annotations

import ast
import pathlib
import subprocess
import sys

import pytest
from _require import in_ci

PKG = pathlib.Path(__file__).resolve().parents[1] / "python" / "ntkal"
PUBLIC = {"acquire", "cli", "shortlist", "select", "posterior", "sketch", "info", "torch"}


def _imports(path: pathlib.Path) -> set[str]:
    """Names of ntkal modules imported by one file (relative imports resolved)."""
    rel = path.relative_to(PKG.parent).with_suffix("")
    package = list(rel.parts[:-1]) if rel.name != "__init__" else list(rel.parts[:-1])
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            names = [mod] + [f"{mod}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            continue
        out |= {n for n in names if n.startswith("ntkal")}
    return out


def test_backends_import_no_public_module():
    for path in (PKG / "backends").glob("*.py"):
        for name in _imports(path):
            parts = name.split(".")
            assert len(parts) < 2 or parts[1] not in PUBLIC, f"{path.name} imports public module {name}"


def test_lower_layers_import_no_higher_layer():
    lower = {"errors", "options", "_validation", "_device", "blocks", "_loader"}
    higher = PUBLIC | {"backends", "feature_store", "structures", "progress", "demo_data", "screen", "executors",
                       "strata", "calibration", "variance_reduction", "features", "screen", "screening",
                       "store_screen", "screen_result", "chunk_task", "chunk_driver", "check_pass", "topk"}
    for mod in lower:
        for name in _imports(PKG / f"{mod}.py"):
            parts = name.split(".")
            assert len(parts) < 2 or parts[1] not in higher, f"{mod} imports {name}"


def test_each_vocabulary_is_spelled_once():
    """No literal tuple/list/set of two or more names of one vocabulary outside ntkal/options.py
    (docstrings may list the choices; code must take them from ntkal.options)."""
    from ntkal import options

    vocabularies = [set(v) for v in (options.SKETCH_KINDS, options.PRECISIONS, options.METHODS, options.STRATEGIES,
                                     options.KERNELS, options.MATMULS, options.DISTANCE_METHODS, options.STRATA,
                                     options.CALIBRATE, options.LOSS_ENERGY_TERMS, options.LOSS_FORCE_TERMS)]
    found = []
    for path in PKG.rglob("*.py"):
        if path.name in ("options.py", "_reference.py"):
            continue
        tree = ast.parse(path.read_text())
        dtype_lists = {id(k.value) for k in ast.walk(tree) if isinstance(k, ast.keyword) and k.arg == "dtypes"}
        for node in ast.walk(tree):
            if isinstance(node, (ast.Tuple, ast.List, ast.Set)) and id(node) not in dtype_lists:
                words = {e.value for e in node.elts if isinstance(e, ast.Constant) and isinstance(e.value, str)}
                if len(words) >= 2 and any(words <= v for v in vocabularies):
                    found.append(f"{path.relative_to(PKG)}:{node.lineno} {sorted(words)}")
    assert not found, found


def test_no_import_cycles():
    tool = PKG.parents[2] / "shared" / "tools" / "import_cycles.py"
    if not tool.exists():
        if in_ci():
            pytest.fail(f"{tool} is missing (CI has shared/ beside the checkout)")
        pytest.skip(f"{tool} not found")
    out = subprocess.run([sys.executable, str(tool), str(PKG)], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip().splitlines()[-1].startswith("0 import cycle"), out.stdout


def test_core_stub_names_every_binding():
    import ntkal._core as core

    stub = (PKG / "_core" / "__init__.pyi").read_text()
    public = [n for n in dir(core) if not n.startswith("__") and n not in ("cuda",)]
    missing = [n for n in public if n not in stub]
    assert not missing, f"_core/__init__.pyi lacks {missing}"
    if core.cuda_compiled:
        cuda_stub = (PKG / "_core" / "cuda.pyi").read_text()
        missing = [n for n in dir(core.cuda) if not n.startswith("__") and n not in cuda_stub]
        assert not missing, f"_core/cuda.pyi lacks {missing}"


def test_gpu_check_script_parses_and_refuses_without_out_dir():
    script = PKG.parents[1] / "bench" / "gpu_check.sh"
    assert subprocess.run(["bash", "-n", str(script)], capture_output=True).returncode == 0
    proc = subprocess.run(["bash", str(script)], capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0 and "usage" in proc.stderr


def _source_files():
    root = PKG.parents[1]
    for pattern in ("python/**/*.py", "tests/*.py", "bench/*.py", "bench/al/*.py", "bench/*.sh", "cpp/**/*.[ch]pp",
                    "cuda/*.c[uh]", "cuda/*.hpp", "*.md", "bench/*.md", "bench/al/*.md", "cuda/*.md", ".ci/run"):
        yield from root.glob(pattern)


def test_code_and_docs_cite_only_files_in_the_repository():
    """Documents outside the repository (the design notes, the reference notes, issue threads) are no citation:
    whatever a reader needs is in ARCHITECTURE.md, README.md or bench/RESULTS.md."""
    import re

    outside = re.compile(r"DESIGN\.md|REFERENCE\.md|\bDESIGN'?s?\b|\(see REFERENCE\)|\b[Ii]ssue \d+\b|\b[Ii]ssue #\d+")
    found = [f"{p.relative_to(PKG.parents[1])}:{i}: {line.strip()[:80]}" for p in _source_files() if p.name != __file__
             for i, line in enumerate(p.read_text().splitlines(), 1) if outside.search(line)
             and p.resolve() != pathlib.Path(__file__).resolve()]
    assert not found, found


def test_no_function_is_longer_than_80_lines():
    """Docstrings excluded; the float64 reference (_reference.py) is an oracle written for the math's sake."""
    long = []
    for path in PKG.rglob("*.py"):
        if path.name == "_reference.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                first = node.body[0]
                if isinstance(first, ast.Expr) and isinstance(getattr(first, "value", None), ast.Constant) \
                        and isinstance(first.value.value, str):
                    n -= first.end_lineno - first.lineno + 1
                if n > 80:
                    long.append(f"{path.relative_to(PKG)}:{node.lineno} {node.name} ({n} lines)")
    assert not long, long
