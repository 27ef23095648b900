"""The option reference (docs/OPTIONS.md) is generated from the option table: keep it in sync;
the README stays a newcomer's guide."""
import os
import subprocess
import sys

from daemon import BUILD, ROOT


def test_readme_option_table_in_sync():
    exe = os.path.join(BUILD, "tools", "options_md")
    p = subprocess.run([sys.executable, os.path.join(ROOT, "tests", "tools", "readme_options.py"),
                        "--check", exe, os.path.join(ROOT, "docs", "OPTIONS.md")])
    assert p.returncode == 0, "docs/OPTIONS.md's option table is stale: run `make docs`"


def test_readme_stays_short():
    lines = open(os.path.join(ROOT, "README.md")).read().count("\n")
    assert lines < 450, f"README.md has {lines} lines: reference belongs in docs/"


def test_quick_start_is_two_commands():
    text = open(os.path.join(ROOT, "README.md")).read()
    block = text.split("## Quick start")[1].split("```sh")[1].split("```")[0]
    cmds = [l for l in block.splitlines() if l.strip()]
    assert [c.split("#")[0].strip() for c in cmds] == ["make setup run", "make test"]
    ci = open(os.path.join(ROOT, ".ci", "run")).read()
    assert "make setup" in ci and "make test" in ci


def test_readme_links_point_into_the_repository():
    import re
    text = open(os.path.join(ROOT, "README.md")).read()
    links = re.findall(r"\]\(([^)#]+)\)", text)
    local = [l for l in links if "://" not in l]
    assert local, "no relative links found"
    for link in local:
        assert os.path.exists(os.path.join(ROOT, link)), f"README links to a missing {link}"
