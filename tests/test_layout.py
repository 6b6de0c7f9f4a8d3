"""The codebase's own rules, checked on every run: four stages, one floor each (deniro_rt, then train, then
export, then bench: a stage imports only the stages below it, lazy imports inside functions included), and no
function over 40 lines in any of them."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FLOORS = ("deniro_rt", "train", "export", "bench")  # bottom first
MAX_FUNCTION_LINES = 40


def stage_files(stage: str) -> list[Path]:
    return sorted(path for path in (ROOT / stage).rglob("*.py") if "results" not in path.parts)


def imported_stages(tree: ast.AST) -> set[str]:
    """The top-level packages of every absolute import in the module, at any depth (lazy ones too)."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found & set(FLOORS)


def upward_imports(stage: str) -> list[str]:
    above = set(FLOORS[FLOORS.index(stage) + 1 :])
    problems = []
    for path in stage_files(stage):
        for target in sorted(imported_stages(ast.parse(path.read_text())) & above):
            problems.append(f"{path.relative_to(ROOT)} imports {target}")
    return problems


def long_functions(tree: ast.AST) -> list[tuple[str, int]]:
    return [
        (node.name, node.end_lineno - node.lineno + 1)
        for node in ast.walk(tree)
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
        and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES
    ]


@pytest.mark.parametrize("stage", FLOORS)
def test_no_stage_imports_a_stage_above_it(stage):
    assert stage_files(stage), f"no Python files under {stage}/"
    assert upward_imports(stage) == []


def test_the_floor_check_sees_lazy_imports_inside_functions():
    tree = ast.parse("def f():\n    from export.model import x\n    import bench.report\n")
    assert imported_stages(tree) == {"export", "bench"}


@pytest.mark.parametrize("stage", FLOORS)
def test_no_function_is_over_40_lines(stage):
    found = {
        f"{path.relative_to(ROOT)}:{name}": lines
        for path in stage_files(stage)
        for name, lines in long_functions(ast.parse(path.read_text()))
    }
    assert found == {}


def test_the_length_check_counts_a_41_line_function():
    body = "".join(f"    x{i} = {i}\n" for i in range(40))
    assert long_functions(ast.parse("def f():\n" + body)) == [("f", 41)]
