"""Train the bundled demo model: iris, a StandardScaler + LogisticRegression pipeline.

Iris ships inside scikit-learn, so this needs no download. Columns get plain names so they
are easy to send as JSON fields or query parameters; classes are the species names.

    python examples/demo/train_demo.py [OUT_DIR]      # default: examples/demo/model
"""

from __future__ import annotations

import sys
from pathlib import Path

import joblib
import orjson
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler


def main(out_dir: Path) -> None:
    iris = load_iris(as_frame=True)
    features = iris.data.rename(columns=lambda c: c.replace(" (cm)", "").replace(" ", "_"))
    species = iris.target.map(dict(enumerate(iris.target_names)))
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000)).fit(features, species)
    out_dir.mkdir(parents=True, exist_ok=True)
    joblib.dump(model, out_dir / "model.joblib")
    # A known-good row: the server predicts it once before /ping turns healthy.
    (out_dir / "input_example.json").write_bytes(orjson.dumps(features.iloc[0].to_dict()))
    print(f"demo model written to {out_dir} (features: {', '.join(features.columns)})")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).parent / "model")
