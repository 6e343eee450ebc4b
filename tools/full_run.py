"""Run notebooks in full mode (COURSE_CI=0) and record what they give on this machine.

    python tools/full_run.py            # every notebook present
    python tools/full_run.py 03 06      # only these lectures (the others' records are kept)

Each notebook is executed top to bottom, one at a time (run nothing else meanwhile: the wall
times are the record), into ``build/full_run/`` (outside git). The wall time and the text
outputs of the cells tagged ``full-run-result`` go to ``docs/full_mode.json``, which the
notebooks quote with ``utils.runtime.show_full_run(NN)``, and to the readable page
``docs/full_mode.md``. Re-execute the notebooks in the short mode afterwards
(``COURSE_CI=1 jupyter nbconvert --execute --inplace``) so their quotes are current.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

from course import FULL_RUN_TAG, ROOT, existing

OUT_DIR = ROOT / "build" / "full_run"
RECORD = ROOT / "docs" / "full_mode.json"
PAGE = ROOT / "docs" / "full_mode.md"
LIMIT_S = 180  # full mode: at most 3 minutes per notebook on 2 cores (the capstone excepted)


def cell_text(cell) -> str:
    parts = []
    for out in cell.get("outputs", []):
        if out.output_type == "stream" and out.name == "stdout":
            parts.append(out.text)
        elif out.output_type in ("execute_result", "display_data") and "text/plain" in out.get("data", {}) \
                and "image/png" not in out.data:
            parts.append(out.data["text/plain"] + "\n")
    return "".join(parts).rstrip("\n")


def run_one(number: int, path: Path) -> dict:
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, timeout=900, kernel_name="python3",
                            resources={"metadata": {"path": str(path.parent)}})
    start = time.perf_counter()
    client.execute()
    wall = time.perf_counter() - start
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, OUT_DIR / path.name)
    results = [cell_text(c) for c in nb.cells if c.cell_type == "code" and FULL_RUN_TAG in c.metadata.get("tags", [])]
    return {"notebook": path.name, "wall_s": round(wall), "results": [r for r in results if r]}


def machine() -> str:
    import torch
    return (f"{os.cpu_count()} CPU cores ({platform.machine()}), {torch.get_num_threads()} torch threads, "
            f"Python {platform.python_version()}, torch {torch.__version__}")


def write_page(record: dict) -> None:
    lines = ["# What full mode gives", "",
             "The notebooks' saved outputs come from the short run (`COURSE_CI=1`): shorter training, same "
             "lesson. A learner gets full mode by default. This page is written by `python tools/full_run.py`, "
             "which runs each notebook in full mode, one at a time, on the machine below; each notebook quotes "
             "its own entry with `utils.runtime.show_full_run`.", "",
             f"Machine: {record['machine']}. Recorded {record['date']}.", "",
             "| lecture | notebook | wall time (full mode) |", "|---|---|---|"]
    for key, entry in sorted(record["notebooks"].items()):
        lines.append(f"| {key} | [{entry['notebook']}](../notebooks/{entry['notebook']}) | {entry['wall_s']} s |")
    for key, entry in sorted(record["notebooks"].items()):
        if entry["results"]:
            lines += ["", f"## Lecture {key}", ""]
            for text in entry["results"]:
                lines += ["```text", text, "```", ""]
    PAGE.write_text("\n".join(lines).rstrip("\n") + "\n", encoding="utf-8")


def main(argv: list[str]) -> int:
    present = existing()
    wanted = [int(a) for a in argv] or sorted(present)
    missing = [n for n in wanted if n not in present]
    if missing:
        print(f"no notebook for lectures {missing}; present: {sorted(present)}")
        return 2
    os.environ["COURSE_CI"] = "0"  # the kernels inherit it
    record = json.loads(RECORD.read_text(encoding="utf-8")) if RECORD.exists() else {"notebooks": {}}
    record["machine"], record["date"] = machine(), datetime.date.today().isoformat()
    slow = []
    for n in wanted:
        print(f"lecture {n:02d}: running {present[n].name} in full mode ...", flush=True)
        entry = run_one(n, present[n])
        print(f"lecture {n:02d}: {entry['wall_s']} s, {len(entry['results'])} recorded results", flush=True)
        record["notebooks"][f"{n:02d}"] = entry
        if entry["wall_s"] > LIMIT_S and n != 30:
            slow.append(f"{n:02d} ({entry['wall_s']} s)")
        RECORD.parent.mkdir(exist_ok=True)
        RECORD.write_text(json.dumps(record, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
        write_page(record)
    if slow:
        print(f"over the {LIMIT_S} s full-mode budget: {', '.join(slow)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
