import numpy as np

from din_export.training.metrics import MIN_GAUC_USERS, accuracy, auc, evaluate, gauc, logloss


def pairwise_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    positive, negative = scores[labels == 1], scores[labels == 0]
    wins = (positive[:, None] > negative[None, :]).sum() + 0.5 * (positive[:, None] == negative[None, :]).sum()
    return wins / (len(positive) * len(negative))


def test_auc_matches_pairwise_definition_with_ties() -> None:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 500)
    scores = np.round(rng.random(500) + 0.3 * labels, 1)  # rounding makes many ties
    assert abs(auc(labels, scores) - pairwise_auc(labels, scores)) < 1e-12


def test_gauc_weights_each_user_by_rows_and_skips_single_class_users() -> None:
    labels = np.array([1, 0, 1, 0, 0, 1, 1])
    scores = np.array([0.9, 0.1, 0.2, 0.8, 0.5, 0.6, 0.7])
    groups = np.array([0, 0, 1, 1, 1, 2, 2])
    # user 0: AUC 1 over 2 rows; user 1: its positive ranks below both negatives, AUC 0 over 3 rows;
    # user 2 has one class and is skipped
    value, users = gauc(labels, scores, groups)
    assert abs(value - (1.0 * 2 + 0.0 * 3) / 5) < 1e-12
    assert users == 2


def test_gauc_needs_enough_users_with_both_labels() -> None:
    rng = np.random.default_rng(0)
    labels, scores = rng.integers(0, 2, 200), rng.random(200)
    one_user = np.zeros(200, dtype=int)
    one_user[:150] = np.arange(150)  # 150 single-row users (one class each) and one user with 50 rows
    few = evaluate(labels, scores, one_user)
    assert few["gauc"] is None and few["gauc_users"] == 1
    many = evaluate(labels, scores, np.arange(200) % MIN_GAUC_USERS)
    assert many["gauc_users"] == MIN_GAUC_USERS and 0 <= many["gauc"] <= 1


def test_logloss_accuracy_and_undefined_auc() -> None:
    labels = np.array([1.0, 0.0])
    assert abs(logloss(labels, np.array([0.8, 0.4])) - (-(np.log(0.8) + np.log(0.6)) / 2)) < 1e-12
    assert accuracy(labels, np.array([0.8, 0.6])) == 0.5
    assert evaluate(np.ones(3), np.array([0.1, 0.2, 0.3]), None)["auc"] is None
