"""An unchanged AWS-toolkit inference.py, and the pre-trained-model `train` job."""

from __future__ import annotations

import subprocess
import textwrap
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import SAGEHOST, running

# Written as the AWS examples write them: CSV arrives as str, output_fn returns (body, type).
TOOLKIT_SCRIPT = '''
import json
import os
from io import StringIO

import joblib
import pandas as pd

FEATURES = ["sepal_length", "sepal_width", "petal_length", "petal_width"]


class BadInput(Exception):
    """Shaped like sagemaker_inference.errors.BaseInferenceToolkitError."""

    def __init__(self, message):
        super().__init__(message)
        self.status_code = 422


def model_fn(model_dir):
    return joblib.load(os.path.join(model_dir, "model.joblib"))


def input_fn(request_body, request_content_type):
    if request_content_type == "text/csv":
        return pd.read_csv(StringIO(request_body), header=None, names=FEATURES)
    if request_content_type == "application/json":
        return pd.DataFrame(json.loads(request_body)["rows"], columns=FEATURES)
    raise BadInput("unsupported content type " + request_content_type)


def predict_fn(input_data, model):
    return model.predict_proba(input_data)


def output_fn(prediction, accept):
    if accept == "text/csv":
        return "\\n".join(",".join(str(p) for p in row) for row in prediction), accept
    return json.dumps({"probabilities": prediction.tolist()}), "application/json"
'''

TRANSFORM_SCRIPT = """
import json, os, joblib

def model_fn(model_dir, context):
    return joblib.load(os.path.join(model_dir, "model.joblib"))

def transform_fn(model, request_body, content_type, accept):
    rows = json.loads(request_body)
    return json.dumps({"labels": [str(x) for x in model.predict_proba(rows).argmax(axis=1)]}), accept
"""


def script_dir(tmp_path: Path, iris_dir: Path, source: str, model: str = "model.joblib") -> Path:
    model_dir = tmp_path / "model"
    (model_dir / "code").mkdir(parents=True)
    (model_dir / model).write_bytes((iris_dir / "model.joblib").read_bytes())
    (model_dir / "code" / "inference.py").write_text(textwrap.dedent(source))
    (model_dir / "code" / "requirements.txt").write_text("scikit-learn\n")
    return model_dir


def test_unchanged_toolkit_script_serves(iris_dir: Path, iris_model: object, tmp_path: Path) -> None:
    model_dir = script_dir(tmp_path, iris_dir, TOOLKIT_SCRIPT)
    with running(model_dir, tmp_path) as server:
        csv = server.client.post(
            "/invocations", content=b"5.1,3.5,1.4,0.2\n", headers={"content-type": "text/csv", "accept": "text/csv"}
        )
        assert csv.headers["content-type"] == "text/csv"
        assert len(csv.text.split(",")) == 3
        as_json = server.client.post("/invocations", json={"rows": [[5.1, 3.5, 1.4, 0.2]]}, headers={"accept": "*/*"})
        assert as_json.headers["content-type"] == "application/json"
        probabilities = np.array(as_json.json()["probabilities"])
        assert np.allclose(probabilities, [float(x) for x in csv.text.split(",")])
        refused = server.client.post("/invocations", content=b"x", headers={"content-type": "text/plain"})
        assert refused.status_code == 422
        assert "input_fn raised BadInput" in refused.json()["error"]["message"]
        assert "requirements.txt is not installed at start" in server.log


def test_transform_fn_with_context_argument(iris_dir: Path, tmp_path: Path) -> None:
    model_dir = script_dir(tmp_path, iris_dir, TRANSFORM_SCRIPT)
    with running(model_dir, tmp_path) as server:
        response = server.client.post(
            "/invocations", json=[[5.1, 3.5, 1.4, 0.2]], headers={"accept": "application/json"}
        )
        assert response.json() == {"labels": ["0"]}


def test_model_fn_only_script_takes_the_batched_path(iris_dir: Path, tmp_path: Path) -> None:
    source = "import joblib, os\ndef model_fn(d):\n    return joblib.load(os.path.join(d, 'custom.bin'))\n"
    model_dir = script_dir(tmp_path, iris_dir, source, model="custom.bin")
    with running(model_dir, tmp_path) as server:
        assert server.client.post(
            "/invocations", json={"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2}
        ).json() == ["setosa"]


def test_program_from_sagemaker_program(iris_dir: Path, tmp_path: Path) -> None:
    model_dir = script_dir(tmp_path, iris_dir, TRANSFORM_SCRIPT)
    (model_dir / "code" / "inference.py").rename(model_dir / "code" / "serve_me.py")
    with running(model_dir, tmp_path, {"SAGEMAKER_PROGRAM": "serve_me.py"}) as server:
        assert server.client.post("/invocations", json=[[5.1, 3.5, 1.4, 0.2]]).json() == {"labels": ["0"]}


def run_train(base: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {"SAGEMAKER_BASE_DIR": str(base), "PATH": str(Path(SAGEHOST).parent)}
    return subprocess.run([SAGEHOST, "train", *args], check=False, env=env, capture_output=True, text=True, timeout=120)


def test_train_copies_the_channel_into_model_dir(iris_dir: Path, tmp_path: Path) -> None:
    channel = tmp_path / "input" / "data" / "training"
    channel.mkdir(parents=True)
    (channel / "model.joblib").write_bytes((iris_dir / "model.joblib").read_bytes())
    result = run_train(tmp_path)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "model" / "model.joblib").is_file()


@pytest.mark.parametrize("contents", [None, "not a pickle"])
def test_train_failure_writes_the_reason(tmp_path: Path, contents: str | None) -> None:
    if contents is not None:
        channel = tmp_path / "input" / "data" / "training"
        channel.mkdir(parents=True)
        (channel / "model.pkl").write_text(contents)
    result = run_train(tmp_path)
    assert result.returncode == 1
    reason = (tmp_path / "output" / "failure").read_text()
    assert ("missing or empty" in reason) if contents is None else ("could not be unpickled" in reason)
