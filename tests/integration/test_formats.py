"""Every zero-code format, served by a real `sagehost serve` with two workers, answers as its
own library predicts on the same rows: single rows, many rows, and concurrent micro-batched
requests, for predict and (where the format has it) predict_proba."""

from __future__ import annotations

import concurrent.futures
import io
import tarfile
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import joblib
import numpy as np
import pytest
from sklearn.datasets import make_classification

from tests.conftest import Server, running

Array = np.ndarray[Any, Any]
Predict = Callable[[Array], Any]


@dataclass
class Reference:
    """What the library itself answers; `proba` is None for formats without probabilities."""

    predict: Predict
    proba: Predict | None = None


def data(classes: int = 2) -> tuple[Array, Array]:
    x, y = make_classification(n_samples=400, n_features=6, n_informative=4, n_classes=classes, random_state=1)
    return x.astype(np.float32).astype(np.float64), y  # float32-exact, as the float32 runtimes see them


def xgboost_json(out: Path) -> Reference:
    import xgboost as xgb

    x, y = data()
    booster = xgb.train({"objective": "binary:logistic", "max_depth": 3}, xgb.DMatrix(x, y), 20)
    booster.save_model(out / "model.json")
    p: Predict = lambda rows: booster.predict(xgb.DMatrix(rows))  # noqa: E731
    return Reference(p, lambda rows: np.column_stack([1 - p(rows), p(rows)]))


def xgboost_container_file(out: Path) -> Reference:
    """What SageMaker's XGBoost algorithm writes: a pickled multi:softprob Booster, `xgboost-model`."""
    import xgboost as xgb

    x, y = data(classes=3)
    booster = xgb.train({"objective": "multi:softprob", "num_class": 3}, xgb.DMatrix(x, y), 15)
    joblib.dump(booster, out / "xgboost-model")
    p: Predict = lambda rows: booster.predict(xgb.DMatrix(rows))  # noqa: E731
    return Reference(p, p)


def xgboost_container_native_file(out: Path) -> Reference:
    """`xgboost-model` as a native (UBJSON) file with no extension, as newer containers write it."""
    import xgboost as xgb

    x, y = data()
    booster = xgb.train({"objective": "binary:logistic"}, xgb.DMatrix(x, y), 10)
    (out / "xgboost-model").write_bytes(booster.save_raw("ubj"))
    p: Predict = lambda rows: booster.predict(xgb.DMatrix(rows))  # noqa: E731
    return Reference(p, lambda rows: np.column_stack([1 - p(rows), p(rows)]))


def xgboost_ubj_regressor(out: Path) -> Reference:
    import xgboost as xgb

    x, y = data()
    booster = xgb.train({"objective": "reg:squarederror"}, xgb.DMatrix(x, y * 3.5), 10)
    booster.save_model(out / "model.ubj")
    return Reference(lambda rows: booster.predict(xgb.DMatrix(rows)))


def xgboost_sklearn_pickle(out: Path) -> Reference:
    import xgboost as xgb

    x, y = data(classes=3)
    model = xgb.XGBClassifier(n_estimators=10, max_depth=3).fit(x, y)
    joblib.dump(model, out / "model.joblib")
    return Reference(model.predict, model.predict_proba)


def lightgbm_text(out: Path) -> Reference:
    import lightgbm as lgb

    x, y = data()
    booster = lgb.train({"objective": "binary", "verbose": -1}, lgb.Dataset(x, y), 15)
    booster.save_model(out / "model.txt")
    p: Predict = lambda rows: np.asarray(booster.predict(rows))  # noqa: E731
    return Reference(p, lambda rows: np.column_stack([1 - p(rows), p(rows)]))


def lightgbm_sklearn_pickle(out: Path) -> Reference:
    import lightgbm as lgb

    x, y = data(classes=3)
    model = lgb.LGBMClassifier(n_estimators=10, verbose=-1).fit(x, y)
    joblib.dump(model, out / "model.pkl")
    return Reference(model.predict, model.predict_proba)


def catboost_cbm(out: Path) -> Reference:
    import catboost

    x, y = data(classes=3)
    labels = np.array(["low", "mid", "high"])[y]
    model = catboost.CatBoostClassifier(iterations=20, verbose=0, thread_count=1, allow_writing_files=False)
    model.fit(x, labels)
    model.save_model(str(out / "model.cbm"))
    return Reference(lambda rows: model.predict(rows).reshape(-1), model.predict_proba)


def onnx_from_sklearn(out: Path) -> Reference:
    from skl2onnx import to_onnx
    from sklearn.ensemble import GradientBoostingClassifier

    x, y = data(classes=3)
    model = GradientBoostingClassifier(n_estimators=10, random_state=0).fit(x, y)
    (out / "model.onnx").write_bytes(to_onnx(model, x[:1].astype(np.float32)).SerializeToString())
    return Reference(model.predict, model.predict_proba)


def torchscript(out: Path) -> Reference:
    import torch

    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.ReLU(), torch.nn.Linear(8, 1))
    with warnings.catch_warnings():  # torch 2.13 deprecates TorchScript; users still have the files
        warnings.simplefilter("ignore", DeprecationWarning)
        scripted = torch.jit.script(module.eval())
        torch.jit.save(scripted, str(out / "model.pt"))

    def predict(rows: Array) -> Array:
        with torch.inference_mode():
            result: Array = scripted(torch.from_numpy(rows.astype(np.float32))).numpy().reshape(-1)
            return result

    return Reference(predict)


def torch_export(out: Path) -> Reference:
    """torch.export's archive (`.pt2`), TorchScript's successor."""
    import torch

    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Linear(6, 4), torch.nn.Tanh(), torch.nn.Linear(4, 1)).eval()
    batch = torch.export.Dim("batch", min=1, max=1024)
    exported = torch.export.export(module, (torch.zeros(2, 6),), dynamic_shapes=({0: batch},))
    torch.export.save(exported, str(out / "model.pt2"))

    def predict(rows: Array) -> Array:
        with torch.inference_mode():
            result: Array = module(torch.from_numpy(rows.astype(np.float32))).numpy().reshape(-1)
            return result

    return Reference(predict)


def mlflow_sklearn(out: Path) -> Reference:
    import mlflow.sklearn
    import pandas as pd
    from mlflow.models import infer_signature
    from sklearn.linear_model import LogisticRegression

    x, y = data()
    frame = pd.DataFrame(x, columns=[f"f{i}" for i in range(6)])
    model = LogisticRegression().fit(frame, y)
    target = out / "mlflow-model"
    with warnings.catch_warnings():  # MLflow warns about its own internals and pickle safety on save
        warnings.simplefilter("ignore")
        mlflow.sklearn.save_model(
            model, str(target), signature=infer_signature(frame, y), serialization_format="cloudpickle"
        )
    for item in target.iterdir():
        item.rename(out / item.name)
    target.rmdir()
    names = list(frame.columns)
    return Reference(
        lambda rows: model.predict(pd.DataFrame(rows, columns=names)),
        lambda rows: model.predict_proba(pd.DataFrame(rows, columns=names)),
    )


FORMATS: dict[str, Callable[[Path], Reference]] = {
    "xgboost-json": xgboost_json,
    "xgboost-container-file": xgboost_container_file,
    "xgboost-container-native-file": xgboost_container_native_file,
    "xgboost-ubj-regressor": xgboost_ubj_regressor,
    "xgboost-sklearn-pickle": xgboost_sklearn_pickle,
    "lightgbm-text": lightgbm_text,
    "lightgbm-sklearn-pickle": lightgbm_sklearn_pickle,
    "catboost-cbm": catboost_cbm,
    "onnx-skl2onnx": onnx_from_sklearn,
    "torchscript": torchscript,
    "torch-export": torch_export,
    "mlflow-sklearn": mlflow_sklearn,
}


@pytest.fixture(scope="module", params=sorted(FORMATS))
def served(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Server, Reference]]:
    out = tmp_path_factory.mktemp(request.param)
    reference = FORMATS[request.param](out)
    with running(out, tmp_path_factory.mktemp("logs"), {"SAGEHOST_WORKERS": "2"}) as server:
        yield server, reference


ROWS = data()[0][:25]


def same(answer: Any, expected: Any) -> None:
    expected = np.asarray(expected)
    if expected.dtype.kind in "OUS":
        assert [str(a) for a in answer] == [str(e) for e in expected.reshape(-1)]
    else:
        np.testing.assert_allclose(
            np.asarray(answer, dtype=np.float64), expected.astype(np.float64), rtol=1e-5, atol=1e-6
        )


def test_single_row_json(served: tuple[Server, Reference]) -> None:
    server, reference = served
    answer = server.client.post("/invocations", json=ROWS[0].tolist())
    assert answer.status_code == 200, answer.text
    same(answer.json(), reference.predict(ROWS[:1]))


def test_many_rows_csv(served: tuple[Server, Reference]) -> None:
    server, reference = served
    body = "\n".join(",".join(repr(float(v)) for v in row) for row in ROWS)
    answer = server.client.post("/invocations", content=body, headers={"Content-Type": "text/csv"})
    assert answer.status_code == 200, answer.text
    same(answer.json(), reference.predict(ROWS))


def test_npy_rows_with_csv_answer(served: tuple[Server, Reference]) -> None:
    server, reference = served
    buffer = io.BytesIO()
    np.save(buffer, ROWS[:5])
    headers = {"Content-Type": "application/x-npy", "Accept": "application/json"}
    answer = server.client.post("/invocations", content=buffer.getvalue(), headers=headers)
    assert answer.status_code == 200, answer.text
    same(answer.json(), reference.predict(ROWS[:5]))


def test_concurrent_single_rows_are_batched_and_each_answer_is_its_own(served: tuple[Server, Reference]) -> None:
    server, reference = served
    expected = np.asarray(reference.predict(ROWS))

    def ask(i: int) -> Any:
        return httpx.post(server.url + "/invocations", json=[ROWS[i].tolist()], timeout=30).json()

    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(ask, range(len(ROWS))))
    for i, answer in enumerate(answers):
        same(answer, expected[i : i + 1])


def test_probabilities(served: tuple[Server, Reference]) -> None:
    server, reference = served
    answer = server.client.post("/invocations?method=predict_proba", json=ROWS.tolist())
    if reference.proba is None:
        assert answer.status_code == 400
        assert answer.json()["error"]["code"] == "unsupported_method"
        return
    assert answer.status_code == 200, answer.text
    same(answer.json(), reference.proba(ROWS))


def test_model_tar_gz_as_sagemaker_delivers_it(tmp_path: Path) -> None:
    source = tmp_path / "source"
    source.mkdir()
    reference = xgboost_json(source)
    delivered = tmp_path / "model"
    delivered.mkdir()
    with tarfile.open(delivered / "model.tar.gz", "w:gz") as tar:
        for item in source.iterdir():
            tar.add(item, arcname=item.name)
    with running(delivered, tmp_path, {"SAGEHOST_WORKERS": "2"}) as server:
        answer = server.client.post("/invocations", json=ROWS.tolist())
        same(answer.json(), reference.predict(ROWS))
