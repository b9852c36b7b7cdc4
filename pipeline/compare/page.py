"""compare.md and compare.html: the differences with their intervals, and the rows each run shares.

Run names come from the command line and folder names: on the page every one of
them goes through `escape` (markup.table escapes its cells).
"""

import json
from pathlib import Path

from pipeline.compare.runs import describe
from pipeline.report.markup import Raw, escape, page, paragraph, section, table
from pipeline.train.bootstrap import excludes_zero

PAGE_NAME = "compare.html"
LINKED = ("compare.csv", "compare.md", "config.json")
NOTE = ("Differences are run minus reference on the test rows all runs share (matched by id), with a paired "
        "bootstrap 95% interval and a two-sided p-value; * marks an interval that excludes 0.")


def difference_cells(row):
    """[difference, 95% CI, p] as text: `+0.0123`, `[-0.004, +0.028] *`, `0.150`."""
    def signed(value, digits):
        return "n/a" if value is None else f"{value:+.{digits}f}"

    mark = " *" if excludes_zero(row["ci_low"], row["ci_high"]) else ""
    p_value = "n/a" if row["p_value"] is None else f"{row['p_value']:.3f}"
    return [signed(row["difference"], 4), f"[{signed(row['ci_low'], 3)}, {signed(row['ci_high'], 3)}]{mark}",
            p_value]


def runs_rows(result):
    """One row per run: name, role, what it is, its test rows, shared and unshared, accuracy and macro-F1."""
    rows = []
    for index, run in enumerate(result.runs):
        counts, values = result.counts[run.name], result.scores[run.name]
        rows.append([run.name, "reference" if index == result.reference else "", describe(run),
                     counts["test_rows"], counts["shared"], counts["unshared"],
                     f"{values['accuracy']:.4f}", f"{values['f1_macro']:.4f}"])
    return rows


RUNS_HEADER = ["run", "role", "kind", "test rows", "shared", "unshared", "accuracy", "f1_macro"]
DIFFERENCES_HEADER = ["run", "metric", "difference", "95% CI", "p", "rows"]


def differences_rows(result):
    return [[row["run"], row["metric"], *difference_cells(row), row["rows"]] for row in result.table]


def markdown(result):
    lines = [f"# compare: reference {result.runs[result.reference].name}", "", NOTE, "", "## Differences", ""]
    lines += _markdown_table(DIFFERENCES_HEADER, differences_rows(result))
    lines += ["", "## Runs (accuracy and macro-F1 on the shared rows)", ""]
    lines += _markdown_table(RUNS_HEADER, runs_rows(result))
    return "\n".join(lines) + "\n"


def _markdown_table(header, rows):
    def cell(value):
        return str(value).replace("|", "\\|").replace("\n", " ")

    return (["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
            + ["| " + " | ".join(cell(value) for value in row) + " |" for row in rows])


def comparison_page(result, folder):
    folder = Path(folder)
    links = " · ".join(f'<a href="{escape(name)}">{escape(name)}</a>' for name in LINKED)
    sections = [
        section("Differences", Raw(table(DIFFERENCES_HEADER, differences_rows(result), table_id="compare-table",
                                         text_columns=2) + paragraph(NOTE, note=True)), "differences"),
        section("Runs", Raw(table(RUNS_HEADER, runs_rows(result), table_id="runs-table", text_columns=3)
                            + paragraph("Accuracy and macro-F1 on the shared rows; unshared rows are in a run's test "
                                        "split but not in every other run's.", note=True)
                            + f"<p>{links}</p>"), "runs"),
        section("Configuration", Raw(f"<pre>{escape(json.dumps(result.settings, indent=2, sort_keys=True))}</pre>"),
                "config"),
    ]
    reference = result.runs[result.reference].name
    return page(f"compare: {len(result.runs)} runs against {reference}", f"Comparison folder {folder.resolve()}",
                sections)
