"""`--eval-ids FILE`: score val and test only on the rows a file lists (e.g. doctor's clean ids).

The file is a TSV with the header `split<TAB>id` (what `doctor --write-clean-ids`
writes), or plain ids, one a line, which then apply to both val and test. Train
is never filtered. Early stopping and threshold tuning see the kept val rows only.
"""

from pathlib import Path

import numpy as np

from pipeline.errors import UserError

FILTERED = ("val", "test")


def read_eval_ids(path):
    """{split: set of ids}; a plain list gives the same set for val and test."""
    path = Path(path)
    try:
        lines = [line.rstrip("\r") for line in path.read_text(encoding="utf-8").split("\n") if line.strip()]
    except (OSError, UnicodeDecodeError) as error:
        raise UserError(f"--eval-ids {path}: cannot read it ({error}); give a text file of ids") from None
    if not lines:
        raise UserError(f"--eval-ids {path}: the file is empty; give a file of ids (doctor --write-clean-ids)")
    if lines[0].split("\t") != ["split", "id"]:
        ids = set(lines)
        return {split: ids for split in FILTERED}
    chosen = {split: set() for split in FILTERED}
    for number, line in enumerate(lines[1:], start=2):
        fields = line.split("\t")
        if len(fields) != 2 or fields[0] not in FILTERED:
            raise UserError(f"--eval-ids {path}: line {number} is not `val|test<TAB>id`; fix the line")
        chosen[fields[0]].add(fields[1])
    return chosen


def restrict(splits, chosen, path):
    """(splits with val and test cut to the chosen ids, {split: {"kept", "of"}}) in cache order."""
    kept, counts = dict(splits), {}
    for split in FILTERED:
        data = splits[split]
        mask = np.isin(data.ids, list(chosen[split]))
        if not mask.any():
            raise UserError(f"--eval-ids {path}: none of its ids is a {split} row of the cache; "
                            "was it written for another cache?")
        kept[split] = data.subset(mask)
        counts[split] = {"kept": int(mask.sum()), "of": len(data)}
    return kept, counts


def describe(counts, path):
    return (f"scoring only the rows listed in {path}: "
            + ", ".join(f"{split} {c['kept']} of {c['of']}" for split, c in counts.items()))


def apply_eval_ids(splits, path, log=print):
    """(splits, record) for `--eval-ids PATH`: val and test restricted to the listed ids, and what to record
    in config.json; unchanged splits and None when no file was given."""
    if not path:
        return splits, None
    splits, counts = restrict(splits, read_eval_ids(path), path)
    log(f"Evaluation: {describe(counts, path)}")
    return splits, {"file": str(path), "rows": counts}
