"""An H2O-3 MOJO trained by H2O itself, served with no code: named fields in, the H2O scorer's
labelled probabilities out, matching what H2O predicts. Starts a JVM: marked slow."""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from tests.conftest import Server, free_port, start_server

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def mojo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, pd.DataFrame, pd.DataFrame]]:
    h2o = pytest.importorskip("h2o")
    from h2o.estimators import H2OGradientBoostingEstimator

    rng = np.random.default_rng(0)
    frame = pd.DataFrame(
        {
            "age": rng.integers(18, 80, 300).astype(float),
            "gender": rng.choice(["M", "F"], 300),
            "amount": np.round(rng.random(300) * 100, 2),
        }
    )
    frame["fraud"] = ((frame.amount > 60) & (frame.gender == "M")).astype(int).astype(str)
    out = tmp_path_factory.mktemp("mojo")
    with warnings.catch_warnings():  # H2O's client warns about its age and single-threaded pandas export
        warnings.simplefilter("ignore")
        h2o.init(ip="127.0.0.1", port=free_port(), nthreads=1, max_mem_size="1G", verbose=False)
        try:
            training = h2o.H2OFrame(frame, column_types={"gender": "enum", "fraud": "enum"})
            model = H2OGradientBoostingEstimator(ntrees=5, seed=1)
            model.train(x=["age", "gender", "amount"], y="fraud", training_frame=training)
            model.download_mojo(path=str(out), get_genmodel_jar=True)
            expected = model.predict(training[:20, :]).as_data_frame()
        finally:
            h2o.cluster().shutdown()
    yield out, frame.head(20), expected


@pytest.fixture(scope="module", params=["1", "2"], ids=["one worker, JVM in the server", "two workers, a JVM each"])
def served(
    mojo: tuple[Path, pd.DataFrame, pd.DataFrame],
    tmp_path_factory: pytest.TempPathFactory,
    request: pytest.FixtureRequest,
) -> Iterator[Server]:
    server = start_server(mojo[0], tmp_path_factory.mktemp("logs"), {"SAGEHOST_WORKERS": request.param})
    try:
        yield server
    finally:
        # SIGTERM drains and exits 0: a JVM in the process must not hold the exit up (DestroyJavaVM).
        assert server.stop() == 0


def records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    return [{str(k): v for k, v in row.items() if k != "fraud"} for row in frame.to_dict("records")]


def test_one_named_record_gets_labelled_probabilities(
    served: Server, mojo: tuple[Path, pd.DataFrame, pd.DataFrame]
) -> None:
    _, frame, expected = mojo
    # The H2O scorer's curl example posts JSON as application/octet-stream.
    answer = served.client.post(
        "/invocations",
        content=json.dumps(records(frame)[0]),
        headers={"Content-Type": "application/octet-stream"},
    )
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert set(body) == {"fraud.0", "fraud.1"}
    np.testing.assert_allclose(
        [body["fraud.0"], body["fraud.1"]], expected.loc[0, ["p0", "p1"]].astype(float), rtol=1e-6
    )


def test_many_records_and_labels_match_h2o(served: Server, mojo: tuple[Path, pd.DataFrame, pd.DataFrame]) -> None:
    _, frame, expected = mojo
    answer = served.client.post("/invocations", json=records(frame))
    assert answer.status_code == 200, answer.text
    probabilities = [[row["fraud.0"], row["fraud.1"]] for row in answer.json()]
    np.testing.assert_allclose(probabilities, expected[["p0", "p1"]].astype(float).to_numpy(), rtol=1e-6)
    labels = served.client.post("/invocations?method=predict", json=records(frame)).json()
    assert [str(label) for label in labels] == [str(v) for v in expected["predict"]]


def test_csv_with_a_header_maps_columns_by_name(served: Server, mojo: tuple[Path, pd.DataFrame, pd.DataFrame]) -> None:
    _, frame, expected = mojo
    body = frame[["gender", "amount", "age"]].to_csv(index=False)
    answer = served.client.post("/invocations?method=predict", content=body, headers={"Content-Type": "text/csv"})
    assert [str(label) for label in answer.json()] == [str(v) for v in expected["predict"]]


def test_a_mojo_without_its_genmodel_jar_says_how_to_get_one(
    mojo: tuple[Path, pd.DataFrame, pd.DataFrame], tmp_path: Path
) -> None:
    from tests.conftest import start_server

    lonely = tmp_path / "model"
    lonely.mkdir()
    for zip_file in mojo[0].glob("*.zip"):
        (lonely / zip_file.name).write_bytes(zip_file.read_bytes())
    server = start_server(lonely, tmp_path, wait=False)
    assert server.exited() == 1
    assert "h2o-genmodel.jar" in server.log
    assert "get_genmodel_jar=True" in server.log
