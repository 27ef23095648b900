#!/usr/bin/env python3
"""Put the option table (printed by options_md) into a Markdown file (docs/OPTIONS.md) between
the markers.
With --check, exit 1 when the file is out of date instead of writing it."""
import subprocess
import sys

BEGIN, END = "<!-- options:begin -->", "<!-- options:end -->"


def main():
    args = [a for a in sys.argv[1:] if a != "--check"]
    exe, readme = args
    table = subprocess.run([exe], check=True, capture_output=True, text=True).stdout
    text = open(readme).read()
    a, b = text.index(BEGIN) + len(BEGIN), text.index(END)
    new = text[:a] + "\n" + table.rstrip("\n") + "\n" + text[b:]
    if "--check" in sys.argv:
        sys.exit(0 if new == text else 1)
    open(readme, "w").write(new)


if __name__ == "__main__":
    main()
