"""`compare` end to end: read the runs, match their test rows, compare each with the reference, write DIR.

    compare.csv    run, reference, metric, difference, ci_low, ci_high, p_value, rows
    compare.md     the same as a table, with the rows each run shares
    compare.html   one self-contained page in the report's style
    config.json    the resolved settings, each run read (folder, encoders, fingerprint) and its row counts
    run.json       the run record (kind compare), as every command writes
"""

from dataclasses import asdict, dataclass

import pipeline
from pipeline.compare import paired
from pipeline.compare.page import PAGE_NAME, comparison_page, markdown
from pipeline.compare.runs import as_record, load_run
from pipeline.errors import UserError
from pipeline.files import output_folder, write_atomic, write_json_atomic, write_text_atomic
from pipeline.runs.record import write_run_record


@dataclass
class Comparison:
    runs: list  # RunPredictions, in the order given
    reference: int  # index into runs
    counts: dict  # {run name: {"test_rows", "shared", "unshared"}}
    scores: dict  # {run name: {metric: value}} on the shared rows
    table: list  # one dict per row of compare.csv
    settings: dict  # the resolved config (config.json)


def compare(run_dirs, config):
    """Compare the run folders `run_dirs` (at least two) under `config` (a CompareConfig)."""
    given = [str(path) for path in run_dirs]
    if len(given) < 2:
        raise UserError("compare needs at least two run folders; give RUN_A RUN_B [RUN ...]")
    twice = sorted({name for name in given if given.count(name) > 1})
    if twice:
        raise UserError(f"{', '.join(twice)}: given more than once; give each run folder once")
    runs = [load_run(path) for path in given]
    class_names = paired.check_label_sets(runs)
    reference = paired.reference_index(runs, config.reference)
    rows, counts = paired.match_rows(runs, reference)
    cuts = paired.thresholds(runs, config.threshold)
    seed = config.seed if config.seed is not None else (runs[reference].seed or 0)
    table = paired.compare_runs(runs, reference, rows, cuts, class_names, config.bootstrap, seed)
    settings = {"command": "compare", "pipeline_version": pipeline.__version__,
                "compare": {**asdict(config), "seed": seed}, "reference": runs[reference].name,
                "class_names": list(class_names), "thresholds": cuts,
                "runs": [{**as_record(run), "rows": counts[run.name]} for run in runs]}
    return Comparison(runs, reference, counts, paired.scores(runs, rows, cuts, class_names), table, settings)


def write_comparison(result, out, command_line=None):
    """compare.csv, compare.md, compare.html and config.json into folder `out`; returns the page's path."""
    import pandas as pd

    out = output_folder(out, "--out")
    frame = pd.DataFrame(result.table, columns=list(paired.COLUMNS))
    write_atomic(out / "compare.csv", lambda tmp: frame.to_csv(tmp, index=False))
    write_text_atomic(out / "compare.md", markdown(result))
    write_json_atomic(out / "config.json", result.settings)
    write_run_record(out, "compare", command_line=command_line)
    write_text_atomic(out / PAGE_NAME, comparison_page(result, out))
    return out / PAGE_NAME
