"""Runs against a reference on the test rows every run shares, matched by id: differences, intervals, p-values.

Rows are matched by id; an id that appears k times in a split (a duplicate post
with the same label, which stage one keeps) is matched occurrence by occurrence.
Every comparison uses the rows shared by all the runs, in the reference's file
order, so the resampled rows (ablate's paired bootstrap, `paired_difference`) are
the ones ablate would draw for two variants scored on the same test split.
"""

import numpy as np
import pandas as pd

from pipeline.errors import UserError
from pipeline.train.bootstrap import pair_metrics, paired_difference

BOOTSTRAP_METRICS = ("accuracy", "f1_macro", "f1_fake", "f1_real")  # f1_fake: class 0, f1_real: class 1
MULTICLASS_METRICS = ("accuracy", "f1_macro", "f1_weighted")  # K > 2: each run decides by its argmax
COLUMNS = ("run", "reference", "metric", "difference", "ci_low", "ci_high", "p_value", "rows")


def check_label_sets(runs):
    """One label set (class names, in order) for every run."""
    sets = {run.class_names for run in runs}
    if len(sets) > 1:
        listed = "; ".join(f"{run.name}: {', '.join(run.class_names)}" for run in runs)
        raise UserError(f"the runs have different label sets ({listed}); compare only runs trained on the same "
                        "classes")
    return runs[0].class_names


def reference_index(runs, reference=None):
    """The position of --reference among the runs (as given, or its folder name); default the first run."""
    if reference is None:
        return 0
    matches = [i for i, run in enumerate(runs) if reference in (run.name, run.folder.name, str(run.folder))]
    if len(matches) != 1:
        why = "names more than one of the runs" if matches else "is not one of the runs"
        raise UserError(f"--reference {reference!r}: {why}; use one of: {', '.join(run.name for run in runs)}")
    return matches[0]


def match_rows(runs, reference):
    """{run name: row indices into its arrays} for the rows all runs share, in the reference's order, and
    {run name: {"test_rows", "shared", "unshared"}}."""
    keys = {run.name: _keys(run.ids) for run in runs}
    shared = keys[runs[reference].name]
    for run in runs:
        shared = shared[shared.isin(keys[run.name])]
    if shared.empty:
        raise UserError(f"the runs share no test ids ({', '.join(_first_ids(run) for run in runs)}); compare runs "
                        "scored on the same test split")
    counts = {run.name: {"test_rows": len(run.ids), "shared": len(shared), "unshared": len(run.ids) - len(shared)}
              for run in runs}
    rows = {run.name: keys[run.name].get_indexer(shared) for run in runs}
    _check_labels_agree(runs, rows, reference)
    return rows, counts


def _keys(ids):
    """(id, occurrence) per row: the k-th row with an id is matched with the k-th row of that id elsewhere."""
    frame = pd.DataFrame({"id": ids})
    return pd.MultiIndex.from_arrays([frame["id"], frame.groupby("id").cumcount()])


def _first_ids(run):
    return f"{run.name} has e.g. {', '.join(map(repr, run.ids[:2]))}"


def _check_labels_agree(runs, rows, reference):
    ref = runs[reference]
    expected = ref.labels[rows[ref.name]]
    for run in runs:
        differ = np.flatnonzero(run.labels[rows[run.name]] != expected)
        if differ.size:
            key = ref.ids[rows[ref.name][differ[0]]]
            raise UserError(f"{run.name}: id {key!r} has label {run.labels[rows[run.name][differ[0]]]} but "
                            f"{ref.name} has {expected[differ[0]]} ({differ.size} shared ids differ); compare runs "
                            "scored on the same labelled test split")


def thresholds(runs, which):
    """{run name: decision threshold}: each run's own (`run`, the one its predictions files decide at), 0.5 for
    every run, or with `tuned` each run's val-tuned threshold. Runs of K > 2 classes decide by the argmax:
    None each, and any --threshold but `run` is refused (it would be ignored)."""
    if runs[0].prob_real.ndim == 2:
        if which != "run":
            raise UserError(f"--threshold {which}: the runs have {len(runs[0].class_names)} classes and decide by "
                            "the highest probability; a threshold applies to two-class runs only; leave it out")
        return {run.name: None for run in runs}
    if which == "run":
        return {run.name: float(run.decision_threshold) for run in runs}
    if which == "0.5":
        return {run.name: 0.5 for run in runs}
    missing = [run.name for run in runs if run.tuned_threshold is None]
    if missing:
        raise UserError(f"{', '.join(missing)}: no threshold tuned on validation; use --threshold run or 0.5")
    return {run.name: float(run.tuned_threshold) for run in runs}


def scores(runs, rows, cuts, class_names):
    """{run name: {metric: value}} on the shared rows (the point estimates the differences are made of)."""
    result = {}
    for run in runs:
        index = rows[run.name]
        values = pair_metrics(np.ones((1, index.size)), run.labels[index], run.prob_real[index],
                               cuts[run.name], compared_metrics(class_names))
        result[run.name] = {_metric_name(name, class_names): float(v[0]) for name, v in values.items()}
    return result


def compare_runs(runs, reference, rows, cuts, class_names, resamples, seed):
    """One row (COLUMNS) per run other than the reference and metric: run minus reference on the shared rows."""
    ref = runs[reference]
    labels = ref.labels[rows[ref.name]]
    table = []
    for run in runs:
        if run is ref:
            continue
        pair = (ref.prob_real[rows[ref.name]], cuts[ref.name], run.prob_real[rows[run.name]], cuts[run.name])
        result = paired_difference(labels, [pair], compared_metrics(class_names), resamples, seed)
        for name, values in result.items():
            table.append({"run": run.name, "reference": ref.name, "metric": _metric_name(name, class_names),
                          "difference": values["diff"], "ci_low": values["low"], "ci_high": values["high"],
                          "p_value": values["p"], "rows": int(labels.size)})
    return table


def compared_metrics(class_names):
    """The metrics compared: binary accuracy, macro-F1 and each class's F1; K > 2 accuracy, macro- and
    weighted-F1 of the argmax."""
    return BOOTSTRAP_METRICS if len(class_names) == 2 else MULTICLASS_METRICS


def _metric_name(name, class_names):
    return {"f1_fake": f"f1_{class_names[0]}", "f1_real": f"f1_{class_names[1]}"}.get(name, name)
