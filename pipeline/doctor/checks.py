"""What would make an evaluation lie: cross-split duplicates, label conflicts, balance, label proxies.

Every check takes the loaded splits ({split: CachedSplit}) and, where it needs
them, the split files' titles and columns; each returns plain dicts and pair
rows, which report.py writes. A pair is (split, id, other split, other id,
kind, similarity, labels): kinds are exact_image (same file bytes), exact_title
(same title after normalisation), perceptual_image (decoded pixels whose
perceptual hash differs in at most phash.MAX_DISTANCE of 128 bits, same mean
colour: a resized or re-encoded copy, found whatever the encoder; similarity
1 - bits / 128), near_image
and near_title (centred cosine at or above the threshold to a train row, from the
cached vectors).
"""

import re
import unicodedata
from collections import defaultdict

import numpy as np

from pipeline.data import phash
from pipeline.doctor.near import effective_dimensions, nearest_train

EVAL_SPLITS = ("val", "test")
PROXY_COLUMNS = ("subreddit", "domain", "author")
PAIRS_PER_ROW = 5  # partners listed per row and kind; the count of all of them is kept
_HASHES_PER_BLOCK = 1 << 21  # query x reference hash pairs compared at once (a few 16-MB arrays)


def normalise_title(title):
    """Case, punctuation and whitespace do not make a title new: 'Cat, on a BOAT!' == 'cat on a boat'."""
    text = unicodedata.normalize("NFKC", str(title)).casefold()
    text = "".join(" " if unicodedata.category(ch).startswith(("P", "S")) else ch for ch in text)
    return re.sub(r"\s+", " ", text).strip()


def other_splits(split, names):
    """The splits a row of `split` must not share content with: every split before it in (train, val, test)."""
    order = [name for name in ("train", "val", "test") if name in names]
    return order[:order.index(split)] if split in order else []


def exact_pairs(keys, labels, ids, kind, skip_keys=()):
    """Pairs of rows in different splits with the same non-empty key; `keys` = {split: array of str}."""
    where = defaultdict(lambda: defaultdict(list))  # key -> split -> rows
    for split, values in keys.items():
        for row, key in enumerate(values):
            if key and key not in skip_keys:
                where[key][split].append(row)
    pairs = []
    for split in EVAL_SPLITS:
        for other in other_splits(split, keys):
            for key, by_split in where.items():
                if split in by_split and other in by_split:
                    for row in by_split[split]:
                        partners = by_split[other]
                        for partner in partners[:PAIRS_PER_ROW]:
                            pairs.append(_pair(split, row, other, partner, kind, 1.0, labels, ids, len(partners)))
    return pairs


def perceptual_pairs(hashes, labels, ids, skip=None, max_distance=phash.MAX_DISTANCE):
    """Pairs of rows in different splits whose images' perceptual hashes differ in at most `max_distance` bits.
    `hashes` = {split: (N, 3) uint64, zeros = none}; `skip` = {split: (N,) bool} rows left out (placeholders)."""
    pairs = []
    usable = {name: np.flatnonzero(phash.has_hash(values) & ~(skip or {}).get(name, np.zeros(len(values), bool)))
              for name, values in hashes.items()}
    for split in [name for name in EVAL_SPLITS if name in hashes]:
        for other in other_splits(split, hashes):
            references = usable[other]
            block = max(1, _HASHES_PER_BLOCK // max(len(references), 1))
            for start in range(0, len(usable[split]), block):
                rows = usable[split][start:start + block]
                bits = phash.distances(hashes[split][rows], hashes[other][references])  # (B, Nr)
                for row, row_bits in zip(rows, bits):
                    close = np.flatnonzero(row_bits <= max_distance)
                    for position in close[np.argsort(row_bits[close], kind="stable")][:PAIRS_PER_ROW]:
                        pairs.append(_pair(split, int(row), other, int(references[position]), "perceptual_image",
                                           1 - row_bits[position] / phash.BITS, labels, ids, len(close)))
    return pairs


def near_pairs(splits, column, threshold, device, kind):
    """(pairs, {split: summary}) of val/test rows whose `column` vector is near a train row."""
    pairs, summary = [], {}
    labels = {name: split.labels for name, split in splits.items()}
    ids = {name: split.ids for name, split in splits.items()}
    train = getattr(splits["train"], column)
    dimensions = effective_dimensions(train)
    for split in [name for name in EVAL_SPLITS if name in splits]:
        found, collapsed = nearest_train(getattr(splits[split], column), train, threshold, device,
                                         dimensions=dimensions)
        summary[split] = {"median_best_cosine": float(np.median(found.best)) if len(found.best) else None,
                          "collapsed": collapsed, "effective_dimensions": round(dimensions, 1)}
        if collapsed:
            continue
        for position, row in enumerate(found.candidates):
            keep = found.cosine[position] >= threshold
            for partner, cosine in zip(found.index[position][keep], found.cosine[position][keep]):
                pairs.append(_pair(split, row, "train", int(partner), kind, float(cosine), labels, ids,
                                   int(found.matches[position])))
    return pairs, summary


def _pair(split, row, other, partner, kind, similarity, labels, ids, partners):
    return {"split": split, "id": ids[split][row], "other_split": other, "other_id": ids[other][partner],
            "kind": kind, "similarity": round(similarity, 6), "label": int(labels[split][row]),
            "other_label": int(labels[other][partner]), "partners": partners, "_row": row}


def class_balance(splits, class_names=("fake", "real")):
    """Per split: rows, `counts` and `shares` per class name; the two-class fake/real set also keeps the keys it
    had before N classes (fake, real, real_share)."""
    balance = {}
    for name, split in splits.items():
        counts = np.bincount(split.labels[split.labels >= 0], minlength=len(class_names))[:len(class_names)]
        info = {"rows": len(split), "counts": dict(zip(class_names, map(int, counts))),
                "shares": {c: round(int(n) / len(split), 4) if len(split) else None
                           for c, n in zip(class_names, counts)}}
        if tuple(class_names) == ("fake", "real"):
            info.update(fake=int(counts[0]), real=int(counts[1]),
                        real_share=round(float(split.labels.mean()), 4) if len(split) else None)
        balance[name] = info
    return balance


def _majority(labels, num_classes):
    """The most frequent label; a tie goes to the highest (for two classes, as the mean >= 0.5 rule of before)."""
    counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=num_classes)
    return int(len(counts) - 1 - np.argmax(counts[::-1]))


def label_proxies(columns, labels, num_classes=2):
    """How well each proxy column alone predicts the label on test: the majority label of its value on
    train (a value unseen in train gets train's majority). `columns` = {split: {column: list of str}}."""
    result = {}
    if "train" not in columns or "test" not in columns:
        return result
    train_majority = _majority(labels["train"], num_classes)
    for column in PROXY_COLUMNS:
        if column not in columns["train"] or column not in columns["test"]:
            continue
        votes = defaultdict(list)
        for value, label in zip(columns["train"][column], labels["train"]):
            votes[value].append(int(label))
        test_values = columns["test"][column]
        # A value's majority label; a tie goes to the lowest label (for two classes: fake, as before).
        value_label = {v: int(np.argmax(np.bincount(found, minlength=num_classes))) for v, found in votes.items()}
        predicted = np.array([value_label.get(v, train_majority) for v in test_values])
        truth = labels["test"]
        accuracy = float((predicted == truth).mean()) if len(truth) else None
        result[column] = {
            "test_accuracy": round(accuracy, 4) if accuracy is not None else None,
            "majority_baseline": round(float((truth == train_majority).mean()), 4) if len(truth) else None,
            "test_values_seen_in_train": round(float(np.mean([v in votes for v in test_values])), 4),
            "distinct_values": len(set(columns["train"][column]) | set(test_values)),
        }
    return result
