"""The per-class parts of a run page: the warnings banner, the baselines, the per-class table and the K x K
confusion (rows = true class, in class order). Runs written before these keys existed show none of them."""

from pipeline.report.markup import Raw, escape, table

_WARNING_STYLE = "border: 2px solid #e65100; background: #fff3e0; padding: 0.6em 0.8em; font-weight: 600;"


def warnings_banner(metrics):
    """One banner line per run warning: metrics.json's top-level `warnings`, else its splits' (older runs)."""
    lines = metrics.get("warnings")
    if not isinstance(lines, list):
        lines = [line for split in ("val", "test") for line in (metrics.get(split) or {}).get("warnings") or []]
    lines = [line for line in dict.fromkeys(lines) if isinstance(line, str)]
    if not lines:
        return Raw("")
    items = "".join(f"<li>{escape(line)}</li>" for line in lines)
    return Raw(f'<div class="banner" id="warnings-banner" style="{_WARNING_STYLE}">Warnings<ul>{items}</ul></div>')


def baselines_table(metrics):
    """Accuracy and macro-F1 of the model next to the majority and stratified baselines, per split."""
    rows = []
    for split in ("val", "test"):
        values = metrics.get(split) or {}
        base = values.get("baselines")
        if not isinstance(base, dict):
            continue
        rows.append([split, "model", values.get("accuracy"), values.get("f1_macro")])
        for name, scores in base.items():
            label = f"{name} ({scores['class']})" if "class" in scores else name
            rows.append([split, label, scores.get("accuracy"), scores.get("f1_macro")])
    if not rows:
        return Raw("")
    return Raw("<h3>Baselines (majority: train's most frequent class; stratified: guesses in train's class "
               "shares)</h3>" + table(["split", "predictor", "accuracy", "f1_macro"], rows, table_id="baselines",
                                      text_columns=2))


def per_class_tables(metrics, class_names):
    """Per split: precision, recall, F1 and support per class, and the confusion matrix with named rows."""
    parts = []
    for split in ("val", "test"):
        values = metrics.get(split) or {}
        per_class, confusion = values.get("per_class"), values.get("confusion")
        if isinstance(per_class, dict):
            # metrics.json sorts its keys: show the classes in label order, as the confusion has them.
            order = [name for name in class_names if name in per_class] + \
                [name for name in per_class if name not in class_names]
            rows = [[name, *(per_class[name].get(k) for k in ("precision", "recall", "f1", "support"))]
                    for name in order]
            parts.append(f"<h3>{escape(split)} per class</h3>"
                         + table(["class", "precision", "recall", "f1", "support"], rows,
                                 table_id=f"per-class-{split}"))
        if isinstance(confusion, list) and len(confusion) == len(class_names):
            rows = [[f"true {name}", *counts] for name, counts in zip(class_names, confusion)]
            parts.append(f"<h3>{escape(split)} confusion (rows: true class; columns: predicted)</h3>"
                         + table(["", *(f"pred {name}" for name in class_names)], rows,
                                 table_id=f"confusion-{split}"))
    return Raw("".join(parts))
