"""Source rules that keep the mypyc-compiled modules (setup_mypyc.py) behaving as plain Python.

mypyc trusts the types mypy infers. One pattern mypy accepts compiles to different behaviour:
a name bound by two `except` clauses of different types gets the first clause's type for the
whole function, so the second clause raises TypeError instead of handling its exception.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def compiled_modules() -> list[Path]:
    script = (ROOT / "setup_mypyc.py").read_text()
    return [ROOT / p for p in re.findall(r'"(agent/[\w/]+\.py)"', script)]


def except_names_with_two_types(source: str) -> list[str]:
    found = []
    for fn in ast.walk(ast.parse(source)):
        if not isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        types: dict[str, set[str]] = {}
        for node in ast.walk(fn):
            if isinstance(node, ast.ExceptHandler) and node.name and node.type is not None:
                types.setdefault(node.name, set()).add(ast.unparse(node.type))
        found += [f"{fn.name}:{fn.lineno} {name}" for name, t in types.items() if len(t) > 1]
    return found


def test_the_rule_finds_a_reused_except_name():
    source = "def f():\n    try: pass\n    except ValueError as e: pass\n    try: pass\n    except KeyError as e: pass\n"
    assert except_names_with_two_types(source) == ["f:1 e"]


def test_compiled_modules_give_each_except_name_one_type():
    modules = compiled_modules()
    assert ROOT / "agent/dns/wire.py" in modules
    problems = [
        f"{p.relative_to(ROOT)}: {x}"
        for p in modules
        for x in except_names_with_two_types(p.read_text())
    ]
    assert problems == []
