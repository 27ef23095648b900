"""docs/ARCHITECTURE.md matches the tree: every path it names exists, the functions it names
are defined in the files it names, the "How to add a sink" steps are the numbered steps of
sinks/example.c, and core/ includes nothing from sinks/."""
import os
import re
import subprocess

from daemon import ROOT

DOC = os.path.join(ROOT, "docs", "ARCHITECTURE.md")


def text():
    return open(DOC).read()


def test_named_paths_exist():
    paths = set(re.findall(r"`((?:core|sinks|cmd|tests|docs)/[\w./]+)`", text()))
    assert paths, "no paths found"
    for p in paths:
        if "nats" in p:  # the checklist's hypothetical backend
            continue
        assert os.path.exists(os.path.join(ROOT, p)), f"{p} is named but does not exist"


def test_named_functions_live_in_named_files():
    for path, fn in re.findall(r"`((?:core|sinks)/\w+\.c)` `(\w+)\(\)`", text()):
        src = open(os.path.join(ROOT, path)).read()
        assert re.search(r"\b%s\(" % fn, src), f"{fn}() is not in {path}"


def test_checklist_matches_the_example_sink():
    doc = text().split("## How to add a sink")[1].split("## ")[0]
    steps = [int(n) for n in re.findall(r"^(\d+)\. ", doc, re.M)]
    src = "".join(open(os.path.join(ROOT, "sinks", f)).read() for f in ("example.h", "example.c"))
    marks = [int(n) for n in re.findall(r"/\* (\d+)\. ", src)]
    assert steps == list(range(1, len(steps) + 1)), steps
    assert sorted(marks) == steps, f"example sink steps {sorted(marks)}, checklist {steps}"


def test_core_includes_no_backend():
    out = subprocess.run(["git", "grep", "-n", "sinks/", "--", "core/"], cwd=ROOT,
                         capture_output=True, text=True).stdout
    assert out == "", out
    for name in os.listdir(os.path.join(ROOT, "core")):
        src = open(os.path.join(ROOT, "core", name), errors="replace").read()
        for inc in re.findall(r'#include "([^"]+)"', src):
            assert os.path.exists(os.path.join(ROOT, "core", inc)), f"core/{name}: {inc}"
