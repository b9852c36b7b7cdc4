"""Compare run folders (train-head, finetune-e2e) on the test rows they share: differences, intervals, p-values.

Matches the runs' test predictions by id (they may come from different caches
or encoders; the shared and unshared rows of each run are reported), compares
every run with the reference (--reference, default the first) in accuracy,
macro-F1 and each class's F1 with ablate's paired bootstrap (difference, 95%
interval, p-value), and writes compare.csv, compare.md, compare.html and
config.json into --out. Runs with different label sets are refused.
"""

from pipeline.compare.config import CompareConfig
from pipeline.config import add_config_arguments, configs_from_args


def add_arguments(parser):
    parser.add_argument("runs", nargs="+", metavar="RUN", help="run folders; the first is the reference by default")
    parser.add_argument("--out", required=True, help="folder for compare.csv, compare.md, compare.html, config.json")
    parser.add_argument("--overwrite", action="store_true",
                        help="write into a non-empty --out (files of the same name are replaced, others left)")
    add_config_arguments(parser, CompareConfig)


def run(args):
    from pipeline.compare.page import difference_cells  # pandas and numpy only when the command runs
    from pipeline.compare.run import compare, write_comparison
    from pipeline.outputs import claim_run_folder

    (config,) = configs_from_args(args, CompareConfig)
    out = claim_run_folder(args.out, "compare", args.overwrite)

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
