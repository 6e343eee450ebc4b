"""Stamp the repository address and lecture links into the README and every notebook.

    python tools/stamp.py          # rewrite what differs
    python tools/stamp.py --check  # exit 1 and list what differs, change nothing

Edit ``course.json`` (repository address, branch, lectures), then run this script.
"""

from __future__ import annotations

import sys

import nbformat

from course import ROOT, existing, stamped_notebook, stamped_readme


def main(check: bool) -> int:
    stale = []
    readme = ROOT / "README.md"
    new_readme = stamped_readme()
    if new_readme != readme.read_text(encoding="utf-8"):
        stale.append(readme)
        if not check:
            readme.write_text(new_readme, encoding="utf-8")
    for path in existing().values():
        nb = stamped_notebook(path)
        if nbformat.writes(nb) != nbformat.writes(nbformat.read(path, as_version=4)):
            stale.append(path)
            if not check:
                nbformat.write(nb, path)
    for path in stale:
        print(("differs: " if check else "stamped: ") + str(path.relative_to(ROOT)))
    return 1 if (check and stale) else 0


if __name__ == "__main__":
    sys.exit(main("--check" in sys.argv[1:]))
