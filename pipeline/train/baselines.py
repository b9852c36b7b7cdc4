"""What a model must beat: the majority-class and the stratified-random baseline on a split's rows.

Both guess from train alone (they never see the row):
- majority: always train's most frequent class (a tie goes to the lowest label).
- stratified: label k with probability q_k, train's share of class k, independently of the row. Its
  accuracy is the exact expectation sum_k s_k q_k (s_k: the split's share of class k). Its F1 per class is
  the F1 of the *expected* confusion matrix, E[C_jk] = n s_j q_k, so F1_k = 2 s_k q_k / (s_k + q_k):
  deterministic (no seed, no draws), and within O(1/n) of the mean F1 over random guesses.
"""

import numpy as np


def baselines(labels, train_labels, class_names):
    """{"majority": {"class", "accuracy", "f1_macro"}, "stratified": {"accuracy", "f1_macro"}} on `labels`."""
    num_classes = len(class_names)
    labels = np.asarray(labels, dtype=np.int64)
    train_counts = np.bincount(np.asarray(train_labels, dtype=np.int64), minlength=num_classes)
    guess = train_counts / train_counts.sum()  # q_k
    share = np.bincount(labels, minlength=num_classes) / max(labels.size, 1)  # s_k
    majority = int(np.argmax(train_counts))
    # Always `majority`: its precision is s_m and its recall 1; every other class scores 0.
    majority_f1 = 2 * share[majority] / (share[majority] + 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        stratified_f1 = np.nan_to_num(2 * share * guess / (share + guess))
    return {"majority": {"class": class_names[majority], "accuracy": float(share[majority]),
                         "f1_macro": float(majority_f1 / num_classes)},
            "stratified": {"accuracy": float(np.sum(share * guess)), "f1_macro": float(np.mean(stratified_f1))}}
