"""The classes of a label column: their number and their names.

Labels are the integers 0..K-1; a class's name is what every output shows for it (`prob_<name>`,
`pred_name`, the report's tables). Names come from `--class-names`, else from Fakeddit's own meaning of
its three label columns (Nakamura, Levy and Wang, "r/Fakeddit", LREC 2020, arXiv:1911.03854, section 3),
else `class_0 ... class_{K-1}`.
"""

import re

from pipeline.errors import UserError

DEFAULT_LABEL_COLUMN = "2_way_label"
# 2-way keeps this project's names (0 = fake, 1 = real); 3- and 6-way follow the paper's categories.
FAKEDDIT_CLASS_NAMES = {
    "2_way_label": ("fake", "real"),
    "3_way_label": ("true", "fake_true_text", "fake_false_text"),
    "6_way_label": ("true", "satire_parody", "misleading_content", "imposter_content", "false_connection",
                    "manipulated_content"),
}
BINARY_CLASS_NAMES = FAKEDDIT_CLASS_NAMES[DEFAULT_LABEL_COLUMN]
# A name becomes a column (`prob_<name>`) and a JSON key: letters, digits, _ . - only.
_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")
MAX_CLASSES = 1000


def default_class_names(label_column, num_classes):
    """Fakeddit's names where the column is one of its own and the count matches, else class_0..."""
    names = FAKEDDIT_CLASS_NAMES.get(label_column)
    if names is not None and len(names) == num_classes:
        return names
    return tuple(f"class_{i}" for i in range(num_classes))


def parse_class_names(text, num_classes=None):
    """`--class-names a,b,c` as a tuple, refusing empty, repeated or unusable names and a wrong count."""
    names = tuple(name.strip() for name in text.split(","))
    bad = [name for name in names if not _NAME.fullmatch(name)]
    if bad:
        raise UserError(f"--class-names: {bad[0]!r} is not a usable class name; use 1-64 letters, digits, "
                        "'_', '.' or '-' (a name becomes a column prob_<name>)")
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise UserError(f"--class-names: {', '.join(repeated)} given more than once; each class needs its own name")
    if len(names) < 2:
        raise UserError("--class-names: give at least two names, one per class, in label order (0, 1, ...)")
    if num_classes is not None and len(names) != num_classes:
        raise UserError(f"--class-names gives {len(names)} names but there are {num_classes} classes; "
                        "give one name per label 0..K-1, in order")
    return names


def class_names_of(manifest):
    """The class names a cache manifest was built with, in label order ({"0": "fake", "1": "real"} -> tuple)."""
    classes = manifest.get("classes") or classes_record(BINARY_CLASS_NAMES)
    return tuple(classes[str(i)] for i in range(len(classes)))


def known_num_classes(label_column, num_classes=None):
    """K before reading any label: `--num-classes`, else the count of Fakeddit's own column (so a 6-way label
    in `2_way_label` is an error, as before), else None (K then follows from the labels: max + 1)."""
    if num_classes is not None:
        return num_classes
    names = FAKEDDIT_CLASS_NAMES.get(label_column)
    return len(names) if names is not None else None


def resolve_class_names(label_column, splits, num_classes=None, class_names=None):
    """The class names (in label order) of the labelled `splits` ({name: SplitRows}) for `label_column`.

    K is `known_num_classes`, else the labels' max + 1; `class_names` (the `--class-names` text) must give K
    names. Every class must occur in train (where train is among the splits): a class the head never sees
    cannot be learned, and per-class scores of it would be empty, so it is an error naming the class.
    """
    labelled = {name: rows for name, rows in splits.items() if rows.labelled and len(rows)}
    count = known_num_classes(label_column, num_classes)
    if count is None:
        count = max((int(rows.labels.max()) + 1 for rows in labelled.values()), default=2)
    if count < 2:
        raise UserError(f"column {label_column}: every label is 0, so there is one class only; a classifier "
                        "needs at least two (check --label-column, or give --num-classes)")
    names = parse_class_names(class_names, count) if class_names else default_class_names(label_column, count)
    train = labelled.get("train")
    if train is not None:
        absent = [label for label in range(count) if not (train.labels == label).any()]
        if absent:
            shown = ", ".join(f"{label} ({names[label]})" for label in absent)
            raise UserError(f"{train.path}: column {label_column}: class {shown} has no row in train, so the head "
                            f"could never learn it; add train rows of that class, or relabel the classes "
                            f"0..{count - 1 - len(absent)} without it (and --num-classes if you gave it)")
    return names


def classes_record(names):
    """The manifest's `classes`: {"0": name, ...}."""
    return {str(label): name for label, name in enumerate(names)}
