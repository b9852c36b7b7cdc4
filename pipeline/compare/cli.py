"""Compare run folders (train-head, finetune-e2e) on the test rows they share: differences, intervals, p-values.

Matches the runs' test predictions by id (they may come from different caches
or encoders; the shared and unshared rows of each run are reported), compares
every run with the reference (--reference, default the first) in accuracy,
macro-F1 and each class's F1 with ablate's paired bootstrap (difference, 95%
interval, p-value), and writes compare.csv, compare.md, compare.html and
config.json into --out. Runs with different label sets are refused.
"""

from pathlib import Path

from pipeline.compare.config import CompareConfig
from pipeline.config import add_config_arguments, configs_from_args
from pipeline.errors import UserError


def add_arguments(parser):
    parser.add_argument("runs", nargs="+", metavar="RUN", help="run folders; the first is the reference by default")
    parser.add_argument("--out", required=True, help="folder for compare.csv, compare.md, compare.html, config.json")
    parser.add_argument("--overwrite", action="store_true",
                        help="write into a non-empty --out (files of the same name are replaced, others left)")
    add_config_arguments(parser, CompareConfig)


def run(args):
    (config,) = configs_from_args(args, CompareConfig)
    out = _refuse_filled_out(Path(args.out), args.overwrite)
    from pipeline.compare.page import difference_cells  # pandas and numpy only when the command runs
    from pipeline.compare.run import compare, write_comparison

    result = compare(args.runs, config)
    reference = result.runs[result.reference].name
    for run in result.runs:
        counts = result.counts[run.name]
        print(f"{run.name}: {counts['test_rows']} test rows, {counts['shared']} shared, {counts['unshared']} unshared")
    print(f"Against {reference} (paired bootstrap, {config.bootstrap} resamples, seed "
          f"{result.settings['compare']['seed']}; * = the 95% interval excludes 0):")
    for row in result.table:
        difference, interval, p_value = difference_cells(row)
        print(f"  {row['run']} {row['metric']}: {difference} {interval} p={p_value}")
    page = write_comparison(result, out, getattr(args, "command_line", None))
    print(f"Comparison folder: {out} (compare.csv, compare.md, config.json, run.json); page: {page}")
    return 0


def _refuse_filled_out(out, overwrite):
    """A new or empty --out, or any folder with --overwrite (the lead swaps this for the shared check)."""
    if out.is_symlink() and not out.exists():
        raise UserError(f"--out {out}: a symlink to nothing; give a folder path")
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out}: is a file, not a folder; give a folder path")
    if out.is_dir() and not overwrite and any(out.iterdir()):
        raise UserError(f"--out {out}: not empty; choose another --out, or pass --overwrite to write this "
                        "comparison's files into it (files of the same name are replaced, others are left)")
    return out
