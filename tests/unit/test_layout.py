"""The house rules that can be checked by reading the code: which modules may import which."""

from __future__ import annotations

import ast
from pathlib import Path

STREAMER = Path(__file__).resolve().parents[2] / "streamer"
TESTING_API = {"streamer.testing", "streamer.testing_slack"}


def imports_of(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return names


def test_no_production_module_imports_the_testing_api() -> None:
    offenders = {
        str(path.relative_to(STREAMER.parent)): sorted(imports_of(path) & TESTING_API)
        for path in STREAMER.rglob("*.py")
        if path.stem not in ("testing", "testing_slack")
    }
    assert {k: v for k, v in offenders.items() if v} == {}


def test_the_funnel_core_imports_nothing_of_the_project_outside_itself() -> None:
    for path in (STREAMER / "funnel").glob("*.py"):
        outside = {
            name
            for name in imports_of(path)
            if name.startswith("streamer") and not name.startswith("streamer.funnel")
        }
        assert outside == set(), path.name
        assert not imports_of(path) & {"faust", "aiokafka", "prometheus_client", "aiohttp"}


def test_every_test_file_is_in_a_folder_the_suite_runner_runs() -> None:
    """`make test` runs tests/unit beside tests/integration + tests/e2e (tests/run-suite.sh):
    a test file anywhere else would silently never run."""
    tests = STREAMER.parent / "tests"
    runner = (tests / "run-suite.sh").read_text()
    folders = {path.relative_to(tests).parts[0] for path in tests.rglob("test_*.py")}
    assert folders == {"unit", "integration", "e2e"}
    assert all(f"tests/{folder}" in runner for folder in folders)
