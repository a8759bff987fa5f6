"""Structural checks of tree model files, before their library predicts with them.

Neither XGBoost nor LightGBM checks, when it loads a model file, that a tree's child and
feature indices are in range: it follows them when it predicts, and an index out of range reads
memory it does not own. That may crash the process (SIGSEGV) or answer garbage, depending on
what lies there, so trying the file in a child process (``trees.probe``) cannot be trusted to
catch it. These checks can: each tree must be a tree (every child index a node of it, no node
the child of two, the root of none), every split on a feature the model has, and the tables the
trees index (XGBoost's output groups and categories, LightGBM's category boundaries) long enough.
Each returns what is wrong, naming the tree and node, or ``None``.
"""

from __future__ import annotations

from itertools import pairwise
from typing import Any

import numpy as np


def xgboost_problem(model: dict[str, Any]) -> str | None:
    """What is wrong with the trees of an XGBoost model in its JSON form
    (``Booster.save_raw("json")``), or ``None``."""
    try:
        learner = model["learner"]
        params = learner["learner_model_param"]
        n_features = int(params["num_feature"])
        groups = max(1, int(params.get("num_class", 0)), int(params.get("num_target", 1)))
        booster = learner["gradient_booster"]
        if booster["name"] == "gblinear":
            return None
        trees_model = booster["gbtree"]["model"] if booster["name"] == "dart" else booster["model"]
        trees = trees_model["trees"]
        info = np.asarray(trees_model["tree_info"], dtype=np.int64)
        if len(info) != len(trees):
            return f"{len(trees)} trees but tree_info has {len(info)} entries"
        if len(info) and (info.min() < 0 or info.max() >= groups):
            return f"tree_info names an output group out of range (the model has {groups})"
        for index, tree in enumerate(trees):
            problem = _xgboost_tree(tree, n_features)
            if problem:
                return f"tree {index}: {problem}"
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        return f"not the layout of an XGBoost model ({type(exc).__name__}: {exc})"
    return None


def _xgboost_tree(tree: dict[str, Any], n_features: int) -> str | None:
    n = int(tree["tree_param"]["num_nodes"])
    leaf_size = max(1, int(tree["tree_param"].get("size_leaf_vector", 1)))
    if n < 1:
        return "no nodes"
    for key in ("left_children", "right_children", "split_indices", "split_conditions",
                "default_left", "split_type"):
        if len(tree[key]) != n:
            return f"{key} has {len(tree[key])} entries for {n} nodes"
    if len(tree["base_weights"]) not in (n, n * leaf_size):
        return f"base_weights has {len(tree['base_weights'])} entries for {n} nodes"
    left = np.asarray(tree["left_children"], dtype=np.int64)
    right = np.asarray(tree["right_children"], dtype=np.int64)
    # a multi-output tree's leaf keeps the index of its vector in leaf_weights as its right child
    leaf_vectors = len(tree["leaf_weights"]) // leaf_size if "leaf_weights" in tree else 0
    problem = _children_problem(left, right, leaf_vectors)
    if problem:
        return problem
    internal = left != -1
    features = np.asarray(tree["split_indices"], dtype=np.int64)[internal]
    if len(features) and (features.min() < 0 or features.max() >= n_features):
        node = int(np.flatnonzero(internal)[np.argmax((features < 0) | (features >= n_features))])
        return f"node {node} splits on feature {int(tree['split_indices'][node])} of {n_features}"
    return _xgboost_categories(tree, n)


def _children_problem(left: np.ndarray[Any, Any], right: np.ndarray[Any, Any],
                      leaf_vectors: int) -> str | None:
    """XGBoost's children: -1 at a leaf (its right child -1 too, or the index of its vector of
    ``leaf_vectors``), else two nodes of the tree; a tree: no node is the child of two, the
    root of none (then what the root reaches has no cycle)."""
    n = len(left)
    leaf = left == -1
    bad = ~leaf & ((left < 1) | (left >= n) | (right < 1) | (right >= n))
    bad |= leaf & ((right < 0) | (right >= leaf_vectors) if leaf_vectors else right != -1)
    if bad.any():
        node = int(np.argmax(bad))
        return (f"node {node}: children {int(left[node])}, {int(right[node])} are not nodes of "
                f"the tree (it has {n})")
    children = np.concatenate([left[~leaf], right[~leaf]])
    parents = np.bincount(children, minlength=n)
    if (parents > 1).any():
        return f"node {int(np.argmax(parents > 1))} is the child of two nodes: not a tree"
    if leaf_vectors and len(np.unique(right[leaf])) != int(leaf.sum()):
        return "two leaves share a leaf vector"
    return None


def _xgboost_categories(tree: dict[str, Any], n: int) -> str | None:
    nodes = np.asarray(tree["categories_nodes"], dtype=np.int64)
    starts = np.asarray(tree["categories_segments"], dtype=np.int64)
    sizes = np.asarray(tree["categories_sizes"], dtype=np.int64)
    if not len(nodes) == len(starts) == len(sizes):
        return "categories_nodes, categories_segments and categories_sizes differ in length"
    if len(nodes) and (nodes.min() < 0 or nodes.max() >= n or starts.min() < 0 or sizes.min() < 0
                       or (starts + sizes).max() > len(tree["categories"])):
        return "a categorical split's categories are out of range"
    return None


def lightgbm_problem(text: str) -> str | None:
    """What is wrong with the trees of a LightGBM text model file, or ``None``."""
    n_features: int | None = None
    tree: dict[str, str] = {}
    name = ""
    try:
        for line in text.splitlines():
            key, _, value = line.partition("=")
            if key == "max_feature_idx" and n_features is None:
                n_features = int(value) + 1
            elif key == "Tree":
                problem = _lightgbm_tree(tree, n_features) if tree else None
                if problem:
                    return f"{name}: {problem}"
                tree, name = {}, f"tree {value}"
            elif key == "end of trees":
                break
            elif name and value:
                tree[key] = value
        problem = _lightgbm_tree(tree, n_features) if tree else None
    except ValueError as exc:
        return f"{name or 'the header'}: {exc}"
    return f"{name}: {problem}" if problem else None


def _lightgbm_tree(tree: dict[str, str], n_features: int | None) -> str | None:
    if n_features is None:
        return "no max_feature_idx before the trees"
    leaves = int(tree.get("num_leaves", "0"))
    if leaves < 1:
        return "no leaves"
    if leaves == 1:
        return None
    fields: dict[str, list[int]] = {}
    for key in ("split_feature", "left_child", "right_child", "decision_type"):
        values = _ints(tree, key, leaves - 1)
        if isinstance(values, str):
            return values
        fields[key] = values
    left, right = np.asarray(fields["left_child"]), np.asarray(fields["right_child"])
    # LightGBM's children: i >= 0 an internal node (never the root), ~i a leaf
    nodes = np.concatenate([left, right])
    out = ((nodes >= 0) & ((nodes < 1) | (nodes >= leaves - 1))) | ((nodes < 0) & (~nodes >= leaves))
    if out.any():
        return f"child {int(nodes[np.argmax(out)])} is not a node of the tree ({leaves} leaves)"
    if len(np.unique(nodes)) != len(nodes):
        return "a node is the child of two nodes: not a tree"
    features = np.asarray(fields["split_feature"])
    if features.min() < 0 or features.max() >= n_features:
        return f"a split on a feature out of range (the model has {n_features})"
    return _lightgbm_categories(tree, np.asarray(fields["decision_type"]), leaves)


def _lightgbm_categories(tree: dict[str, str], decision: np.ndarray[Any, Any], leaves: int) -> str | None:
    categorical = (decision & 1).astype(bool)
    n_cat = int(tree.get("num_cat", "0"))
    if not categorical.any():
        return None
    if n_cat < 1:
        return "categorical splits but num_cat=0"
    bounds = _ints(tree, "cat_boundaries", n_cat + 1)
    if isinstance(bounds, str):
        return bounds
    words = len(tree.get("cat_threshold", "").split())
    if bounds[0] != 0 or any(a > b for a, b in pairwise(bounds)) or bounds[-1] != words:
        return "cat_boundaries do not cut cat_threshold"
    thresholds = tree.get("threshold", "").split()
    if len(thresholds) != leaves - 1:
        return f"threshold has {len(thresholds)} entries for {leaves - 1} splits"
    for node in np.flatnonzero(categorical):
        if not 0 <= int(float(thresholds[node])) < n_cat:
            return f"node {int(node)} names category set {thresholds[node]} of {n_cat}"
    return None


def _ints(tree: dict[str, str], key: str, count: int) -> list[int] | str:
    values = [int(word) for word in tree.get(key, "").split()]
    if len(values) != count:
        return f"{key} has {len(values)} entries, not {count}"
    return values
