"""tree_checks: every model the libraries write passes (boosters, objectives, categorical
splits, multi-output trees), and a tree whose indices point outside it is named, with the tree
and the node, before the library is let predict with it."""

from __future__ import annotations

import json
from typing import Any

import lightgbm
import numpy as np
import pandas as pd
import pytest
import xgboost
from batchserve.backends.tree_checks import lightgbm_problem, xgboost_problem

RNG = np.random.default_rng(3)
X = RNG.normal(size=(400, 5))
CATEGORIES = pd.DataFrame({"c": pd.Categorical(RNG.integers(0, 6, 400)), "x": X[:, 1]})
CLASSES = (X[:, 0] > 0).astype(int) + (X[:, 1] > 0)


def xgb_json(params: dict[str, Any], y: np.ndarray[Any, Any], data: Any = X) -> dict[str, Any]:
    matrix = xgboost.DMatrix(data, y, enable_categorical=True)
    booster = xgboost.train(params, matrix, 4)
    model: dict[str, Any] = json.loads(booster.save_raw("json"))
    return model


def lgb_text(params: dict[str, Any], y: np.ndarray[Any, Any], data: Any = X) -> str:
    booster = lightgbm.train({"verbose": -1, "num_leaves": 6, "min_data_in_leaf": 5, **params},
                             lightgbm.Dataset(data, y), 4)
    text: str = booster.model_to_string()
    return text


def first_tree(model: dict[str, Any]) -> dict[str, Any]:
    tree: dict[str, Any] = model["learner"]["gradient_booster"]["model"]["trees"][0]
    return tree


XGB_MODELS = {
    "regression": lambda: xgb_json({"objective": "reg:squarederror"}, X[:, 0]),
    "multiclass": lambda: xgb_json({"objective": "multi:softprob", "num_class": 3}, CLASSES),
    "quantiles": lambda: xgb_json({"objective": "reg:quantileerror", "quantile_alpha": [0.1, 0.9]},
                                  X[:, 0]),
    "multi-output trees": lambda: xgb_json({"multi_strategy": "multi_output_tree"}, X[:, :2]),
    "dart": lambda: xgb_json({"booster": "dart"}, X[:, 0]),
    "gblinear": lambda: xgb_json({"booster": "gblinear"}, X[:, 0]),
    "categorical": lambda: xgb_json({"max_cat_to_onehot": 1}, X[:, 0], CATEGORIES),
}
LGB_MODELS = {
    "regression": lambda: lgb_text({"objective": "regression"}, X[:, 0]),
    "multiclass": lambda: lgb_text({"objective": "multiclass", "num_class": 3}, CLASSES),
    "categorical": lambda: lgb_text({"objective": "regression"}, X[:, 0], CATEGORIES),
    "linear trees": lambda: lgb_text({"objective": "regression", "linear_tree": True}, X[:, 0]),
}


@pytest.mark.parametrize("kind", XGB_MODELS)
def test_every_xgboost_model_passes(kind: str) -> None:
    assert xgboost_problem(XGB_MODELS[kind]()) is None


@pytest.mark.parametrize("kind", LGB_MODELS)
def test_every_lightgbm_model_passes(kind: str) -> None:
    text = LGB_MODELS[kind]()
    assert "Tree=3" in text
    assert lightgbm_problem(text) is None


def test_the_categorical_xgboost_model_has_categorical_splits() -> None:
    assert first_tree(XGB_MODELS["categorical"]())["categories_nodes"], "the check saw no categories"


@pytest.mark.parametrize(("field", "value", "said"), [
    ("left_children", 99999, "node 0: children 99999"),
    ("right_children", -5, "node 0: children"),
    ("left_children", 0, "node 0: children 0"),  # the root as its own child: a cycle
    ("split_indices", 5, "node 0 splits on feature 5 of 5"),
])
def test_an_xgboost_index_out_of_its_tree_is_named(field: str, value: int, said: str) -> None:
    model = XGB_MODELS["regression"]()
    first_tree(model)[field][0] = value
    assert str(xgboost_problem(model)).startswith(f"tree 0: {said}")


def test_an_xgboost_node_with_two_parents_is_no_tree() -> None:
    model = XGB_MODELS["regression"]()
    tree = first_tree(model)
    internal = [i for i, child in enumerate(tree["left_children"]) if child != -1]
    tree["left_children"][internal[1]] = tree["left_children"][internal[0]]
    assert "is the child of two nodes" in str(xgboost_problem(model))


def test_xgboost_tables_the_trees_index_must_be_long_enough() -> None:
    model = XGB_MODELS["multiclass"]()
    model["learner"]["gradient_booster"]["model"]["tree_info"][2] = 3
    assert "output group out of range" in str(xgboost_problem(model))
    model = XGB_MODELS["categorical"]()
    first_tree(model)["categories_sizes"][0] += 1000
    assert "categories are out of range" in str(xgboost_problem(model))
    model = XGB_MODELS["regression"]()
    del first_tree(model)["split_conditions"][-1]
    assert "split_conditions has" in str(xgboost_problem(model))
    assert "not the layout of an XGBoost model" in str(xgboost_problem({"learner": {}}))


def replace_in_tree(text: str, tree: int, key: str, old_to_new: Any) -> str:
    """``text`` with the line ``key=...`` of tree ``tree`` rewritten by ``old_to_new``."""
    head, _, rest = text.partition(f"Tree={tree}\n")
    lines = rest.split("\n")
    index = next(i for i, line in enumerate(lines) if line.startswith(f"{key}="))
    lines[index] = f"{key}=" + old_to_new(lines[index].removeprefix(f"{key}="))
    return f"{head}Tree={tree}\n" + "\n".join(lines)


@pytest.mark.parametrize(("key", "edit", "said"), [
    ("left_child", lambda v: "99 " + v.split(" ", 1)[1], "tree 1: child 99 is not a node"),
    ("right_child", lambda v: "-99 " + v.split(" ", 1)[1], "tree 1: child -99 is not a node"),
    ("left_child", lambda v: "0 " + v.split(" ", 1)[1], "tree 1: child 0 is not a node"),
    ("split_feature", lambda v: "7 " + v.split(" ", 1)[1], "tree 1: a split on a feature out of range"),
    ("left_child", lambda v: v.rsplit(" ", 1)[0], "tree 1: left_child has 4 entries, not 5"),
    ("num_leaves", lambda v: "0", "tree 1: no leaves"),
])
def test_a_lightgbm_index_out_of_its_tree_is_named(key: str, edit: Any, said: str) -> None:
    text = LGB_MODELS["regression"]()
    assert lightgbm_problem(replace_in_tree(text, 1, key, lambda v: v)) is None
    assert str(lightgbm_problem(replace_in_tree(text, 1, key, edit))).startswith(said)


def test_a_lightgbm_node_with_two_parents_is_no_tree() -> None:
    text = LGB_MODELS["regression"]()
    tree = text.partition("Tree=2\n")[2]
    left = next(line for line in tree.split("\n") if line.startswith("left_child=")).split("=")[1].split()
    twice = replace_in_tree(text, 2, "right_child", lambda v: " ".join([left[0], *v.split()[1:]]))
    assert "child of two nodes" in str(lightgbm_problem(twice))


def test_a_lightgbm_categorical_split_must_name_a_category_set() -> None:
    text = LGB_MODELS["categorical"]()
    tree = next(i for i in range(4) if "num_cat=0" not in text.partition(f"Tree={i}\n")[2][:40])
    broken = replace_in_tree(text, tree, "cat_boundaries", lambda v: " ".join([*v.split()[:-1], "999"]))
    assert "cat_boundaries do not cut cat_threshold" in str(lightgbm_problem(broken))
