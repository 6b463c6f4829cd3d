"""The package's folders follow the data (plan -> run/engines -> results -> analysis -> report,
tracking), and nothing reaches back up: a benchmark process never imports analysis, the report
or tracking, so analysis can change without re-measuring. Checked on the source (AST), without
importing anything."""

import ast
from pathlib import Path

from tests.conftest import REPO

PACKAGE = REPO / "pipeline"
# sub-package -> the sub-packages it must not import
FORBIDDEN = {
    "run": {"analysis", "report", "tracking"},
    "engines": {"analysis", "report", "tracking", "plan"},
    "models": {"analysis", "report", "tracking", "run", "engines"},
    "results": {"plan", "run", "engines", "models", "analysis", "report", "tracking"},
    "analysis": {"run", "engines", "report", "tracking"},
    "report": {"run", "engines", "tracking"},
}


def imported_modules(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def violations(package: Path, forbidden: dict[str, set[str]]) -> list[str]:
    found = []
    root = package.name
    for sub, banned in forbidden.items():
        for path in sorted((package / sub).rglob("*.py")):
            for name in sorted(imported_modules(path)):
                parts = name.split(".")
                if parts[0] == root and len(parts) > 1 and parts[1] in banned:
                    found.append(f"{path.relative_to(package.parent)} imports {name}")
    return found


def test_nothing_below_reaches_back_up():
    assert violations(PACKAGE, FORBIDDEN) == []


def test_the_check_sees_a_forbidden_import(tmp_path):
    package = tmp_path / "pipeline"
    (package / "run").mkdir(parents=True)
    (package / "run" / "measure.py").write_text("import json\nfrom pipeline.results import schema\n")
    assert violations(package, FORBIDDEN) == []
    (package / "run" / "measure.py").write_text("def f():\n    from pipeline.analysis.metrics import summarize\n")
    assert violations(package, FORBIDDEN) == [
        "pipeline/run/measure.py imports pipeline.analysis.metrics",
        "pipeline/run/measure.py imports pipeline.analysis.metrics.summarize",
    ]


def test_every_module_lives_in_a_stage_folder():
    shared = ("__init__.py", "config.py", "stats.py")
    loose = sorted(p.name for p in PACKAGE.glob("*.py") if p.name not in shared)
    assert loose == [], (
        "config.py (settings) and stats.py (the rules that both measurement and analysis apply) are the "
        "shared vocabulary; every other module belongs to a stage"
    )
    # the shared rules depend on nothing of the pipeline, so any stage may use them
    assert not {n for n in imported_modules(PACKAGE / "stats.py") if n.startswith("pipeline")}
    assert set(FORBIDDEN) | {"plan", "tracking", "rules"} == {
        p.name for p in PACKAGE.iterdir() if p.is_dir() and p.name != "__pycache__"
    }
