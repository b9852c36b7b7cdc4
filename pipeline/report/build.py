"""Which page a folder gets, and writing it (atomically, next to the run by default)."""

import argparse
from pathlib import Path

from pipeline.errors import UserError
from pipeline.files import write_text_atomic
from pipeline.outputs import claim_output_file
from pipeline.report.markup import PAGE_START

PAGE_NAME = "report.html"


def add_report_argument(parser):
    """`--report/--no-report` for the commands that end with a run or ablation folder."""
    parser.add_argument("--report", action=argparse.BooleanOptionalAction, default=True,
                        help=f"write {PAGE_NAME}, one self-contained HTML page of the results, into the folder")


def kind_of(folder):
    """'ablation' or 'run', as the folder's run record says (pipeline.runs.record), or an error naming what
    is missing."""
    from pipeline.runs.record import RUN_NAME, read_run

    folder = Path(folder)
    if not any((folder / name).is_file() for name in (RUN_NAME, "ablation.csv", "config.json")):
        raise UserError(f"{folder}: neither a run folder (run.json, or metrics.json + config.json, written by "
                        "train-head or finetune-e2e) nor an ablation folder (ablation.csv); point at one of those")
    kind = read_run(folder).kind
    if kind not in ("train-head", "finetune-e2e", "ablate"):
        raise UserError(f"{folder}: a {kind} folder, which `report` has no page for")
    return "ablation" if kind == "ablate" else "run"


def write_report(folder, out=None, overwrite=False):
    """Write the folder's page to `out` (default FOLDER/report.html); returns its path.

    `out` is checked before the page is built: never one of the run's files, never a file that is not
    one of our pages, unless `overwrite`."""
    folder = Path(folder)
    kind = kind_of(folder)
    out = Path(out) if out else folder / PAGE_NAME
    if out.is_dir():
        raise UserError(f"--out {out}: is a folder; give a file name such as {out / PAGE_NAME}")
    claim_output_file(out, "--out", overwrite=overwrite, ours=is_our_page)
    if kind == "ablation":
        from pipeline.report.ablation_page import ablation_page as build
    else:
        from pipeline.report.run_page import run_page as build
    write_text_atomic(out, build(folder))
    return out


def is_our_page(path):
    """A page this command wrote (today's and earlier versions start the same way)."""
    try:
        with open(path, "rb") as handle:
            return handle.read(len(PAGE_START)) == PAGE_START.encode()
    except OSError:
        return False
