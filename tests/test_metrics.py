import math

import numpy as np
import pytest

from trainer.tasks.catalog import BUILTIN_TASKS
from trainer.tasks.spec import TaskSpec
from trainer.training.metrics import aggregate_score

MULTICLASS = TaskSpec.from_dict(dict(name="nli3", type="classification", text_columns=("a", "b"), label_column="y",
                                     labels=("e", "n", "c")))


def one_hot(preds, num):
    logits = np.zeros((len(preds), num))
    logits[np.arange(len(preds)), preds] = 1.0
    return logits


def test_binary_classification_by_hand():
    labels = np.array([1, 1, 1, 0, 0, 0, 1, 0])
    preds = np.array([1, 1, 0, 0, 0, 1, 1, 0])
    m = BUILTIN_TASKS["mrpc"].kind.compute_metrics(BUILTIN_TASKS["mrpc"], one_hot(preds, 2), labels)
    # TP=3 FN=1 FP=1 TN=3
    assert m["accuracy"] == pytest.approx(6 / 8)
    assert m["f1"] == pytest.approx(2 * 3 / (2 * 3 + 1 + 1))
    assert m["mcc"] == pytest.approx((3 * 3 - 1 * 1) / math.sqrt(4 * 4 * 4 * 4))
    assert BUILTIN_TASKS["mrpc"].metric == "f1" and BUILTIN_TASKS["cola"].metric == "mcc"


def test_multiclass_macro_f1_by_hand():
    labels = np.array([0, 0, 1, 1, 2, 2])
    preds = np.array([0, 1, 1, 1, 2, 0])
    m = MULTICLASS.kind.compute_metrics(MULTICLASS, one_hot(preds, 3), labels)
    f1_0 = 2 * 1 / (2 * 1 + 1 + 1)  # TP=1 FP=1 FN=1
    f1_1 = 2 * 2 / (2 * 2 + 1 + 0)  # TP=2 FP=1 FN=0
    f1_2 = 2 * 1 / (2 * 1 + 0 + 1)  # TP=1 FP=0 FN=1
    assert m["macro_f1"] == pytest.approx((f1_0 + f1_1 + f1_2) / 3)
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert MULTICLASS.metric == "macro_f1"


def test_regression_by_hand():
    labels = np.array([1.0, 2.0, 3.0, 4.0])
    preds = np.array([[1.0], [3.0], [2.0], [4.0]])
    m = BUILTIN_TASKS["stsb"].kind.compute_metrics(BUILTIN_TASKS["stsb"], preds, labels)
    # pearson: deviations (-1.5,-.5,.5,1.5) vs (-1.5,.5,-.5,1.5): cov 4, var 5 each -> 0.8
    assert m["pearson"] == pytest.approx(0.8)
    assert m["spearman"] == pytest.approx(1 - 6 * (0 + 1 + 1 + 0) / (4 * (16 - 1)))
    assert m["mse"] == pytest.approx(0.5)


def test_constant_predictions_do_not_crash():
    m = BUILTIN_TASKS["stsb"].kind.compute_metrics(BUILTIN_TASKS["stsb"], np.ones((3, 1)), np.array([0.0, 1.0, 2.0]))
    assert m["pearson"] == 0.0


def test_multiple_choice_and_aggregate():
    task = BUILTIN_TASKS["commonsense_qa"]
    logits = np.array([[0.1, 0.9, 0, 0, 0], [0.8, 0.1, 0, 0, 0], [0, 0, 0, 0, 1.0]])
    m = task.kind.compute_metrics(task, logits, np.array([1, 1, 4]))
    assert m["accuracy"] == pytest.approx(2 / 3)
    assert task.kind.chance_level(task) == pytest.approx(0.2)
    score = aggregate_score({"commonsense_qa": m, "stsb": {"pearson": 0.5}},
                            [task, BUILTIN_TASKS["stsb"]])
    assert score == pytest.approx((2 / 3 + 0.5) / 2)
