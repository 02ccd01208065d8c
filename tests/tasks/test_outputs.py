"""What a task's outputs say, asked of the task itself: the decision (`decide`, with the task's threshold), predict's
description and table cells, explain's targets and analyze's agreement measure. Every registered task answers."""

from __future__ import annotations

import pytest
import torch

from visionbench.data.base import DatasetInfo
from visionbench.registry import TASKS
from visionbench.tasks import create_task

NAMES = ("a", "b", "c")


def _task(name: str, outputs: int = 3, **kwargs):
    return create_task(name, DatasetInfo("t", name, outputs, NAMES[:outputs], (1, 8, 8)), **kwargs)


def _outputs(name: str, task, n: int = 6) -> tuple[torch.Tensor, torch.Tensor]:
    """(activated outputs, targets) of `n` images, as each task's metrics take them."""
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(n, len(NAMES), generator=g)
    targets = {
        "classification": torch.arange(n) % len(NAMES),
        "multilabel": (torch.rand(n, len(NAMES), generator=g) > 0.5).float(),
        "regression": torch.randn(n, len(NAMES), generator=g),
    }[name]
    return task.activate(logits), targets


@pytest.mark.parametrize("name", TASKS.list())
def test_every_task_names_itself_describes_decides_agrees_and_picks_explain_targets(name):
    task = _task(name)
    assert task.name == name, "the registry key, as predict's JSON and the export metadata say it"
    outputs, targets = _outputs(name, task)
    decided = task.decide(outputs)
    assert len(decided) == len(outputs)
    assert task.agreement(decided, decided)[0] == (0.0 if name == "regression" else 1.0)
    record = task.describe(outputs[0], top_k=2)
    assert record["predictions"], record
    for rank, prediction in enumerate(record["predictions"]):
        assert len(task.cells(rank, prediction)) == len(task.columns), "one cell per column of predict's table"
    for predicted in (True, False):
        groups = task.explain_targets(outputs, targets, 4, None, predicted)
        assert groups and all(len(panels) <= 4 for panels in groups.values()), groups
        for index, target, caption in (p for panels in groups.values() for p in panels):
            assert 0 <= index < len(outputs) and 0 <= target < len(NAMES) and f"#{index}" in caption


def test_multilabel_positives_are_over_the_tasks_threshold_everywhere():
    """predict, analyze and explain once disagreed: predict used task.threshold, the others logit > 0."""
    task = _task("multilabel", threshold=0.3)
    probs = torch.tensor([[0.2, 0.29, 0.31], [0.45, 0.6, 0.1]])
    expected = torch.tensor([[False, False, True], [True, True, False]])  # "over", as the F1 metric counts
    assert torch.equal(task.decide(probs), expected)
    described = [[p["positive"] for p in task.describe(row, top_k=1)["predictions"]] for row in probs]
    assert described == expected.tolist() and task.describe(probs[0], 1)["threshold"] == 0.3
    groups = task.explain_targets(probs, torch.zeros(2, 3), 10, None, predicted=True)
    assert [(i, j) for i, j, _ in groups["labels"]] == [(0, 2), (1, 0), (1, 1)], "p = 0.45 is positive at 0.3"
    assert task.explain_targets(probs, torch.zeros(2, 3), 10, None, predicted=False) == {"labels": []}
    assert task.agreement(expected, expected) == (1.0, "unchanged")
    assert task.agreement(expected, ~expected)[0] == 0.0


def test_classification_decides_the_most_probable_class_and_groups_explain_targets():
    task = _task("classification")
    probs = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.3, 0.6], [0.2, 0.5, 0.3]])
    targets = torch.tensor([0, 1, 1])
    assert task.decide(probs).tolist() == [0, 2, 1]
    top = task.describe(probs[1], top_k=2)["predictions"]
    assert [(p["label"], p["index"]) for p in top] == [("c", 2), ("b", 1)]
    assert task.cells(0, top[0]) == ["1", "c", "0.6000"]
    groups = task.explain_targets(probs, targets, 5, None, predicted=True)
    assert {k: [(i, t) for i, t, _ in v] for k, v in groups.items()} == {"correct": [(0, 0), (2, 1)], "wrong": [(1, 2)]}
    by_class = task.explain_targets(probs, targets, 5, ["b"], predicted=False)
    assert [(i, t) for i, t, _ in by_class["class-b"]] == [(1, 1), (2, 1)], "true class b, its true output"
    assert task.agreement(torch.tensor([0, 1]), torch.tensor([0, 2])) == (0.5, "unchanged")


def test_regression_agreement_is_the_mean_absolute_change():
    task = _task("regression", outputs=1)
    assert task.agreement(torch.tensor([[1.0], [2.0]]), torch.tensor([[1.5], [1.0]])) == (0.75, "mean |change|")
    assert task.describe(torch.tensor([2.5]), top_k=1) == {"predictions": [{"label": "a", "index": 0, "value": 2.5}]}
