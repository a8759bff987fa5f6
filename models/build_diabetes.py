"""Train the demo regression model on scikit-learn's bundled diabetes data.

Usage: python models/build_diabetes.py [OUTPUT]  (default models/artifacts/diabetes.joblib)
"""

from __future__ import annotations

import sys
from pathlib import Path

import joblib
from sklearn.datasets import load_diabetes
from sklearn.linear_model import LinearRegression

DEFAULT_OUTPUT = Path(__file__).parent / "artifacts" / "diabetes.joblib"


def build(output: Path = DEFAULT_OUTPUT) -> Path:
    features, target = load_diabetes(return_X_y=True)
    estimator = LinearRegression().fit(features, target)
    output.parent.mkdir(parents=True, exist_ok=True)
    joblib.dump(estimator, output)
    return output


if __name__ == "__main__":
    print(build(Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_OUTPUT))
