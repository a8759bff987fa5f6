"""Train the demo XGBoost classifier on scikit-learn's bundled breast-cancer data.

Saved as XGBoost's own JSON model file (``Booster.save_model``), which the ``xgboost`` backend
loads without unpickling anything. 30 features, named as scikit-learn names them with spaces
as underscores (``mean_radius``, ...); classes 0 = malignant, 1 = benign. Deterministic: one
thread, a fixed seed.

Usage: python models/build_xgboost.py [OUTPUT]  (default models/artifacts/cancer.json)
"""

from __future__ import annotations

import sys
from pathlib import Path

import xgboost
from sklearn.datasets import load_breast_cancer

DEFAULT_OUTPUT = Path(__file__).parent / "artifacts" / "cancer.json"
PARAMS = {"objective": "binary:logistic", "max_depth": 3, "eta": 0.3, "nthread": 1, "seed": 0,
          "tree_method": "hist"}
ROUNDS = 50


def build(output: Path = DEFAULT_OUTPUT) -> Path:
    data = load_breast_cancer()
    names = [str(name).replace(" ", "_") for name in data.feature_names]
    train = xgboost.DMatrix(data.data, label=data.target, feature_names=names)
    booster = xgboost.train(PARAMS, train, num_boost_round=ROUNDS)
    output.parent.mkdir(parents=True, exist_ok=True)
    booster.save_model(str(output))
    return output


if __name__ == "__main__":
    print(build(Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_OUTPUT))
