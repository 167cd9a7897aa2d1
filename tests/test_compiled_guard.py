"""The compiled modules (make compile) count only while they match their sources.

A package in a temporary folder stands for `agent`: its module has a .py and, beside it, a
file named like a compiled extension. The guard decides from the names, the build record and
the sources' digest; when the build is stale, the module must come from its .py even though
Python would take the extension first (here a file that is no extension at all, so importing
it fails loudly if the finder does not step in).
"""

from __future__ import annotations

import importlib
import importlib.machinery
import json
import sys

import pytest

import agent
from agent import compiled_guard
from agent.compiled_guard import PlainSources, check, record_build

SUFFIX = importlib.machinery.EXTENSION_SUFFIXES[0]


@pytest.fixture
def package(tmp_path):
    pkg = tmp_path / "guardpkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "mod.py").write_text("WHERE = 'source'\n")
    (pkg / "other.py").write_text("WHERE = 'source'\n")
    return pkg


def fake_build(pkg, *names):
    for name in names:
        (pkg / (name + SUFFIX)).write_bytes(b"not an ELF file")
    (pkg / ("compiled__mypyc" + SUFFIX)).write_bytes(b"the group library")


def test_no_compiled_module_is_plain(package):
    assert check(package) == ("plain", [])


def test_a_build_recorded_after_it_ran_is_used(package):
    fake_build(package, "sub/mod")
    record = record_build(package)
    assert record["modules"] == ["guardpkg.sub.mod"]  # not the group library
    assert check(package) == ("compiled", [])


def test_an_edited_source_makes_the_build_stale(package):
    fake_build(package, "sub/mod", "other")
    record_build(package)
    (package / "other.py").write_text("WHERE = 'edited'\n")
    state, plain = check(package)
    assert state == "stale: sources changed since the last build"
    assert plain == ["guardpkg.other", "guardpkg.sub.mod"]


def test_compiled_modules_without_a_record_are_stale(package):
    fake_build(package, "sub/mod")
    assert check(package)[0].startswith("stale: no readable mypyc-build.json")
    (package / "mypyc-build.json").write_text("{not json")
    assert check(package)[0].startswith("stale: no readable")


def test_a_module_compiled_outside_the_recorded_build_is_stale(package):
    fake_build(package, "sub/mod")
    record_build(package)
    fake_build(package, "other")
    assert check(package) == (
        "stale: the compiled modules are not those of the last build",
        ["guardpkg.other", "guardpkg.sub.mod"],
    )


def test_a_stale_module_is_imported_from_its_source(package, monkeypatch):
    fake_build(package, "sub/mod")
    monkeypatch.syspath_prepend(str(package.parent))
    for name in ("guardpkg", "guardpkg.sub", "guardpkg.sub.mod"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    # Without the finder Python takes the extension file, which is no extension.
    with pytest.raises(ImportError):
        importlib.import_module("guardpkg.sub.mod")
    monkeypatch.delitem(sys.modules, "guardpkg.sub.mod", raising=False)
    finder = PlainSources(package.parent, ["guardpkg.sub.mod"])
    monkeypatch.setattr(sys, "meta_path", [finder, *sys.meta_path])
    module = importlib.import_module("guardpkg.sub.mod")
    assert module.WHERE == "source" and module.__file__.endswith("mod.py")


def test_a_c_extension_counts_its_c_source_and_is_not_imported_when_stale(package, monkeypatch):
    (package / "sub" / "_fast.c").write_text("/* version 1 */\n")
    fake_build(package, "sub/mod", "sub/_fast")
    record_build(package)
    assert check(package) == ("compiled", [])
    (package / "sub" / "_fast.c").write_text("/* version 2 */\n")
    state, plain = check(package)
    assert state == "stale: sources changed since the last build"
    assert "guardpkg.sub._fast" in plain
    # No Python twin: importing it fails, so the caller's fallback (recvfrom, sendto) runs.
    monkeypatch.syspath_prepend(str(package.parent))
    for name in ("guardpkg", "guardpkg.sub", "guardpkg.sub._fast"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    monkeypatch.setattr(sys, "meta_path", [PlainSources(package.parent, plain), *sys.meta_path])
    with pytest.raises(ModuleNotFoundError, match="stale"):
        importlib.import_module("guardpkg.sub._fast")


def test_the_running_agent_matches_its_build():
    """In a compiled tree the DNS path runs compiled; in any other, from the .py files."""
    from agent.dns import wire

    state, _ = check(compiled_guard.Path(agent.__file__).parent)
    assert compiled_guard.STATE == state
    if state == "compiled":
        assert wire.__file__.endswith(SUFFIX)
        record = json.loads(
            (compiled_guard.Path(agent.__file__).parent / "mypyc-build.json").read_text()
        )
        assert "agent.dns.wire" in record["modules"]
        from agent.dns import server

        assert server.recv_batch is not None  # agent/dns/_udpio.c, built with them
    else:
        assert wire.__file__.endswith(".py")
