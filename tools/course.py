"""The course's single source of truth for addresses and the lecture table.

``course.json`` holds the repository's public address and the 30 lectures. This module
renders from it: each notebook's title cell (video, previous/next, Colab badge), the shared
setup cell, and the README's lecture table. ``python tools/stamp.py`` writes them;
``tests/test_notebooks_static.py`` fails if any copy differs.
"""

from __future__ import annotations

import json
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = ROOT / "notebooks"
COURSE = json.loads((ROOT / "course.json").read_text(encoding="utf-8"))
LECTURES = {lec["number"]: lec for lec in COURSE["lectures"]}
SETUP_TITLE = "#@title Course setup: find the course folder (on Colab: clone it, install what Colab lacks)"
HIDDEN = {"jupyter": {"source_hidden": True}, "cellView": "form"}  # JupyterLab collapses it; Colab shows the title
IGNORE_OUTPUT = "nbval-ignore-output"  # cell tag: output varies (timings, versions, training logs)
FULL_RUN_TAG = "full-run-result"  # cell tag: tools/full_run.py records this cell's output in full mode
TABLE_START, TABLE_END = "<!-- lectures:start -->", "<!-- lectures:end -->"


def repo_path() -> str:
    """'owner/name' from the repository URL."""
    return COURSE["repository"].rstrip("/").split("github.com/")[1]


def colab_url(notebook: str) -> str:
    return f"https://colab.research.google.com/github/{repo_path()}/blob/{COURSE['branch']}/notebooks/{notebook}"


def colab_badge(notebook: str) -> str:
    return f"[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)]({colab_url(notebook)})"


def existing() -> dict[int, Path]:
    """Lecture number -> notebook path, for the notebooks present."""
    return {n: NOTEBOOKS / lec["notebook"] for n, lec in LECTURES.items() if (NOTEBOOKS / lec["notebook"]).exists()}


def title_cell(number: int) -> str:
    lec, present = LECTURES[number], existing()
    links = [f"Video: [{lec['video_title']}]({lec['video']})"]
    for label, other in (("Previous", number - 1), ("Next", number + 1)):
        if other in present:
            links.append(f"{label}: [Lecture {other:02d}]({LECTURES[other]['notebook']})")
    links.append("[Course README](../README.md)")
    return f"# Lecture {number:02d}: {lec['title']}\n\n{colab_badge(lec['notebook'])}\n\n" + " · ".join(links)


def setup_cell() -> str:
    return f'''{SETUP_TITLE}
# (the same in every notebook)
import pathlib, subprocess, sys
REPO_URL = "{COURSE["repository"]}"
if "google.colab" in sys.modules:  # Colab: fetch the course once and install its requirements
    ROOT = pathlib.Path("/content") / REPO_URL.rstrip("/").split("/")[-1]
    if not ROOT.exists():
        subprocess.run(["git", "clone", "--depth", "1", REPO_URL, str(ROOT)], check=True)
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "-r", str(ROOT / "requirements-colab.txt")], check=True)
else:  # locally: the repository root is the nearest folder above that holds utils/
    here = pathlib.Path.cwd().resolve()
    ROOT = next((p for p in (here, *here.parents) if (p / "utils" / "__init__.py").exists()), None)
    if ROOT is None:
        raise RuntimeError("Open this notebook from inside the course repository (its notebooks/ folder).")
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))'''


def readme_table() -> str:
    present = existing()
    rows = ["| # | Lecture | Video | Notebook | Colab | `utils` gains |", "|---|---|---|---|---|---|"]
    for n, lec in LECTURES.items():
        if n in present:
            nb, colab = f"[{lec['notebook']}](notebooks/{lec['notebook']})", colab_badge(lec["notebook"])
        else:
            nb, colab = "not yet written", ""
        rows.append(f"| {n:02d} | {lec['title']} | [video]({lec['video']}) | {nb} | {colab} | {lec['utils']} |")
    return "\n".join(rows)


def setup_index(nb) -> int:
    """Index of the setup cell: the first code cell."""
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "code":
            return i
    raise ValueError("notebook has no code cell")


def hide_source(cell, title: str):
    """Collapse a code cell's source behind a one-line title (JupyterLab and Colab's form view).

    The cell still runs with "Run all"; its output stays visible. Used for the setup cell and
    for every solution cell, so a learner does not read a solution by accident.
    """
    lines = cell.source.split("\n")
    if lines and lines[0].startswith("#@title"):
        lines = lines[1:]
    cell.source = "\n".join([f"#@title {title}", *lines])
    cell.metadata.update(json.loads(json.dumps(HIDDEN)))
    return cell


def is_hidden(cell) -> bool:
    return (cell.source.startswith("#@title") and cell.metadata.get("cellView") == "form"
            and cell.metadata.get("jupyter", {}).get("source_hidden") is True)


def stamped_notebook(path: Path):
    """The notebook at ``path`` with its title and setup cells rendered from course.json."""
    nb = nbformat.read(path, as_version=4)
    number = int(path.name[:2])
    nb.cells[0].source = title_cell(number)
    setup = nb.cells[setup_index(nb)]
    setup.source = setup_cell()
    setup.metadata.update(json.loads(json.dumps(HIDDEN)))
    return nb


def stamped_readme() -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    start, end = text.index(TABLE_START) + len(TABLE_START), text.index(TABLE_END)
    return text[:start] + "\n" + readme_table() + "\n" + text[end:]


def new_notebook(number: int, cells: list[tuple[str, str]]) -> Path:
    """Write notebook ``number`` from ``cells`` = [("md" | "code", source), ...].

    The title cell is added first and the setup cell right after the first markdown cell
    (the "what you will build" cell). Execute it afterwards with
    ``COURSE_CI=1 jupyter nbconvert --to notebook --execute --inplace``.
    """
    make = {"md": nbformat.v4.new_markdown_cell, "code": nbformat.v4.new_code_cell}
    body = [make[kind](src.strip("\n")) for kind, src in cells]
    nb = nbformat.v4.new_notebook()
    nb.metadata = {"kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
                   "language_info": {"name": "python"}}
    setup = make["code"](setup_cell())
    setup.metadata.update(json.loads(json.dumps(HIDDEN)))
    nb.cells = [make["md"](title_cell(number)), body[0], setup, *body[1:]]
    path = NOTEBOOKS / LECTURES[number]["notebook"]
    nbformat.write(nb, path)
    return path
