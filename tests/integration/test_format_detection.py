"""Which format a directory holds, what happens when it is ambiguous or unservable, and the
XGBoost container's own content types end to end."""

from __future__ import annotations

import warnings
from pathlib import Path

import joblib
import numpy as np
import pytest
import scipy.sparse
from sklearn.linear_model import LogisticRegression

from sagehost.errors import ModelLoadError
from sagehost.models.extras import require
from tests.conftest import running, start_server
from tests.integration.test_formats import data, onnx_from_sklearn, xgboost_json
from tests.recordio_reference import dense, sparse


def test_an_ambiguous_directory_lists_what_it_found_and_flavor_decides(tmp_path: Path) -> None:
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    reference = onnx_from_sklearn(model_dir)
    x, y = data()
    joblib.dump(LogisticRegression().fit(x, y), model_dir / "model.joblib")
    server = start_server(model_dir, tmp_path, wait=False)
    assert server.exited() == 1
    assert "onnx: model.onnx" in server.log and "sklearn: model.joblib" in server.log
    assert "SAGEHOST_FLAVOR" in server.log
    with running(model_dir, tmp_path, {"SAGEHOST_FLAVOR": "onnx"}) as chosen:
        answer = chosen.client.post("/invocations", json=x[:5].tolist())
        np.testing.assert_array_equal(answer.json(), reference.predict(x[:5]))


def test_an_unknown_flavor_is_named(tmp_path: Path) -> None:
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    xgboost_json(model_dir)
    server = start_server(model_dir, tmp_path, {"SAGEHOST_FLAVOR": "tensorflow"}, wait=False)
    assert server.exited() == 2  # refused with the settings (click's usage error), before any model code
    assert "SAGEHOST_FLAVOR='tensorflow'" in server.log and "xgboost" in server.log


def test_a_pickled_torch_module_points_to_inference_py(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    torch.save(torch.nn.Linear(3, 1), model_dir / "model.pt")
    server = start_server(model_dir, tmp_path, wait=False)
    assert server.process.wait(timeout=60) == 1
    assert "not a TorchScript archive" in server.log and "code/inference.py" in server.log


def test_a_missing_runtime_names_the_pip_command() -> None:
    with pytest.raises(ModelLoadError, match=r"pip install 'sagehost\[onnx\]'"):
        require("onnxruntime_not_installed_here", "onnx", "model.onnx (an ONNX model)")


@pytest.fixture(scope="module")
def xgboost_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("xgb")
    xgboost_json(out)
    return out


def test_libsvm_rows_score_as_xgboost_scores_the_same_sparse_matrix(xgboost_dir: Path, tmp_path: Path) -> None:
    import xgboost as xgb

    booster = xgb.Booster(model_file=str(xgboost_dir / "model.json"))
    matrix = scipy.sparse.csr_matrix(np.array([[1.5, 0, 0, -2.0, 0, 0], [0, 0.25, 0, 0, 0, 3.0], [0, 0, 0, 0, 0, 0]]))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = booster.predict(xgb.DMatrix(matrix))  # absent entries are "missing"
    body = "1 0:1.5 3:-2.0\n0 1:0.25 5:3.0\n0\n"
    with running(xgboost_dir, tmp_path) as server:
        answer = server.client.post("/invocations", content=body, headers={"Content-Type": "text/libsvm"})
        assert answer.status_code == 200, answer.text
        np.testing.assert_allclose(answer.json(), expected, rtol=1e-6)
        rows = data()[0][:4]
        proto = server.client.post(
            "/invocations", content=dense(rows), headers={"Content-Type": "application/x-recordio-protobuf"}
        )
        np.testing.assert_allclose(proto.json(), booster.predict(xgb.DMatrix(rows.astype(np.float32))), rtol=1e-6)
        sparse_body = sparse([{0: 1.5, 3: -2.0}, {1: 0.25, 5: 3.0}], width=6)
        sparse_answer = server.client.post(
            "/invocations", content=sparse_body, headers={"Content-Type": "application/x-recordio-protobuf"}
        )
        np.testing.assert_allclose(sparse_answer.json(), expected[:2], rtol=1e-6)


def test_an_inference_py_whose_model_fn_returns_a_booster_serves_it_with_two_workers(
    xgboost_dir: Path, tmp_path: Path
) -> None:
    """The usual script for SageMaker's XGBoost container: only model_fn, loading a Booster."""
    import xgboost as xgb

    model_dir = tmp_path / "model"
    (model_dir / "code").mkdir(parents=True)
    (model_dir / "xgb.bin").write_bytes((xgboost_dir / "model.json").read_bytes())
    (model_dir / "code" / "inference.py").write_text(
        "import os\nimport xgboost as xgb\n\n\ndef model_fn(model_dir):\n"
        "    booster = xgb.Booster()\n    booster.load_model(os.path.join(model_dir, 'xgb.bin'))\n    return booster\n"
    )
    rows = data()[0][:8]
    expected = xgb.Booster(model_file=str(xgboost_dir / "model.json")).predict(xgb.DMatrix(rows.astype(np.float32)))
    with running(model_dir, tmp_path, {"SAGEHOST_WORKERS": "2"}) as server:
        for _ in range(4):  # reaches both workers
            answer = server.client.post("/invocations", json=rows.tolist())
            np.testing.assert_allclose(answer.json(), expected, rtol=1e-6)


def test_an_onnx_graph_with_one_named_input_per_column_takes_records_with_text(tmp_path: Path) -> None:
    """skl2onnx's per-column graph of a ColumnTransformer pipeline, with a string column."""
    import pandas as pd
    from skl2onnx import to_onnx
    from skl2onnx.common.data_types import FloatTensorType, StringTensorType
    from sklearn.compose import ColumnTransformer
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder

    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"colour": rng.choice(["red", "green", "blue"], 300), "size": rng.random(300) * 10})
    target = ((frame.colour == "red") ^ (frame["size"] > 5)).astype(int)
    encode = ColumnTransformer([("onehot", OneHotEncoder(), ["colour"])], remainder="passthrough")
    pipeline = Pipeline([("encode", encode), ("model", LogisticRegression())]).fit(frame, target)
    types = [("colour", StringTensorType([None, 1])), ("size", FloatTensorType([None, 1]))]
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    (model_dir / "model.onnx").write_bytes(to_onnx(pipeline, initial_types=types).SerializeToString())
    sample = frame.head(10)
    records = [{"size": float(row["size"]), "colour": row["colour"]} for _, row in sample.iterrows()]
    with running(model_dir, tmp_path, {"SAGEHOST_WORKERS": "2"}) as server:
        labels = server.client.post("/invocations", json=records)
        assert labels.status_code == 200, labels.text
        assert labels.json() == pipeline.predict(sample).tolist()
        proba = server.client.post("/invocations?method=predict_proba", json=records[0])
        expected = pipeline.predict_proba(sample.head(1))[0]
        assert proba.json() == pytest.approx({"0": expected[0], "1": expected[1]}, rel=1e-5)
