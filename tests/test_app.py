"""The in-process tier: sagehost's ASGI app serving the really trained demo model, driven through
httpx's ASGI transport with its lifespan run as a server runs it. No socket, no subprocess: the
contract's routes, content types and errors, fast. The real-process tier (tests/integration)
keeps what needs a socket: HTTP framing, limits, process lifecycle."""

from __future__ import annotations

import asyncio
import io
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pytest

from sagehost.app import App, Message
from sagehost.config import Settings
from sagehost.models import Loaded
from sagehost.multimodel.routes import Routes
from sagehost.server import build_service, load_and_warm
from sagehost.service import Service

pytestmark = pytest.mark.anyio

ROW = {"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2}
VALUES = list(ROW.values())
VIRGINICA = [6.7, 3.0, 5.2, 2.3]
SECRET = "4711.0815"  # a value no message of ours has any business repeating


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # sagehost's workers run asyncio (uvloop)


@pytest.fixture(scope="module")
def settings(iris_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    return Settings(model_dir=iris_dir, workers=2, scratch_dir=tmp_path_factory.mktemp("scratch"))


@pytest.fixture(scope="module")
def iris(settings: Settings) -> Loaded:
    return load_and_warm(settings)


class Lifespan:
    """The app's ASGI lifespan, driven as sagehost's server drives it."""

    def __init__(self, app: App) -> None:
        self._inbox: asyncio.Queue[Message] = asyncio.Queue()
        self._outbox: asyncio.Queue[Message] = asyncio.Queue()
        scope = {"type": "lifespan", "asgi": {"version": "3.0"}}
        self._task = asyncio.get_running_loop().create_task(app(scope, self._inbox.get, self._outbox.put))

    async def begin(self) -> None:
        await self._inbox.put({"type": "lifespan.startup"})

    async def outcome(self) -> str:
        """`lifespan.startup.complete` or `lifespan.startup.failed`."""
        message = await asyncio.wait_for(self._outbox.get(), timeout=10)
        kind: str = message["type"]
        return kind

    async def end(self) -> None:
        if not self._task.done():
            await self._inbox.put({"type": "lifespan.shutdown"})
            assert (await self._outbox.get())["type"] == "lifespan.shutdown.complete"
        await self._task


@asynccontextmanager
async def client_of(app: App) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://sagehost") as client:
        yield client


@asynccontextmanager
async def serving(
    settings: Settings, load: Callable[[], Awaitable[Service]], models: Routes | None = None
) -> AsyncIterator[httpx.AsyncClient]:
    app = App(settings, load, models)
    lifespan = Lifespan(app)
    await lifespan.begin()
    assert await lifespan.outcome() == "lifespan.startup.complete"
    try:
        async with client_of(app) as client:
            yield client
    finally:
        await lifespan.end()


@pytest.fixture
async def client(settings: Settings, iris: Loaded) -> AsyncIterator[httpx.AsyncClient]:
    async def load() -> Service:
        return build_service(iris, settings)

    async with serving(settings, load) as client:
        yield client


def error(response: httpx.Response, status: int, code: str) -> str:
    """The error's message, once its status, code and shape are checked."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()["error"]
    assert body["code"] == code
    assert body["request_id"] == response.headers["x-request-id"]
    assert "Traceback" not in response.text
    message: str = body["message"]
    return message


# ---- /ping and the model's load ------------------------------------------------------------------


async def test_ping_is_503_until_the_model_is_loaded_then_200(settings: Settings, iris: Loaded) -> None:
    release = asyncio.Event()

    async def load() -> Service:
        await release.wait()
        return build_service(iris, settings)

    app = App(settings, load)
    lifespan = Lifespan(app)
    await lifespan.begin()
    async with client_of(app) as client:
        error(await client.get("/ping"), 503, "model_not_ready")
        error(await client.post("/invocations", json=VALUES), 503, "model_not_ready")
        release.set()
        assert await lifespan.outcome() == "lifespan.startup.complete"
        ping = await client.get("/ping")
        assert ping.status_code == 200 and ping.json() == {"status": "healthy"}
        head = await client.head("/ping")
        assert head.status_code == 200 and head.content == b""
    await lifespan.end()


async def test_a_load_that_fails_fails_the_startup_and_ping_stays_503(settings: Settings) -> None:
    async def load() -> Service:
        raise RuntimeError("the model file is corrupt")

    app = App(settings, load)
    lifespan = Lifespan(app)
    await lifespan.begin()
    assert await lifespan.outcome() == "lifespan.startup.failed"
    assert app.failed
    async with client_of(app) as client:
        error(await client.get("/ping"), 503, "model_not_ready")
    await lifespan.end()


# ---- /invocations: every content type and JSON shape ----------------------------------------------


@pytest.mark.parametrize(
    ("body", "content_type", "expected"),
    [
        (b"[5.1, 3.5, 1.4, 0.2]", "application/json", ["setosa"]),
        (b"[[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]]", "application/json", ["setosa", "virginica"]),
        (b'{"data": [[5.1, 3.5, 1.4, 0.2]]}', "application/json", ["setosa"]),
        (b'{"instances": [[5.1, 3.5, 1.4, 0.2]]}', "application/json", {"predictions": ["setosa"]}),
        (b'{"inputs": [[5.1, 3.5, 1.4, 0.2]]}', "application/json", {"predictions": ["setosa"]}),
        (
            b'{"dataframe_split": {"columns": ["petal_width", "petal_length", "sepal_width", "sepal_length"],'
            b' "data": [[0.2, 1.4, 3.5, 5.1]]}}',
            "application/json",
            {"predictions": ["setosa"]},
        ),
        (
            b'{"dataframe_records": [{"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4,'
            b' "petal_width": 0.2}]}',
            "application/json",
            {"predictions": ["setosa"]},
        ),
        (
            b'{"petal_width": [0.2], "petal_length": [1.4], "sepal_width": [3.5], "sepal_length": [5.1]}',
            "application/json",
            ["setosa"],
        ),  # fmt: skip
        (
            b'[{"petal_width": 0.2, "petal_length": 1.4, "sepal_width": 3.5, "sepal_length": 5.1}]',
            "application/json",
            ["setosa"],
        ),  # fmt: skip
        (b"5.1,3.5,1.4,0.2\n6.7,3.0,5.2,2.3\n", "text/csv; charset=utf-8", ["setosa", "virginica"]),
        (b"petal_width,petal_length,sepal_width,sepal_length\n0.2,1.4,3.5,5.1\n", "text/csv", ["setosa"]),
        (b"[5.1, 3.5, 1.4, 0.2]\n[6.7, 3.0, 5.2, 2.3]\n", "application/jsonlines", ["setosa", "virginica"]),
        (
            b'{"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2}\n',
            "application/x-ndjson",
            ["setosa"],
        ),  # fmt: skip
        (b"[5.1, 3.5, 1.4, 0.2]", "application/octet-stream", ["setosa"]),
        (b"0 0:5.1 1:3.5 2:1.4 3:0.2\n", "text/libsvm", ["setosa"]),
    ],
)
async def test_every_content_type_and_json_shape(
    client: httpx.AsyncClient, body: bytes, content_type: str, expected: Any
) -> None:
    response = await client.post("/invocations", content=body, headers={"content-type": content_type})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    assert response.json() == expected


async def test_npy_in_and_every_accept_out(
    client: httpx.AsyncClient, iris_model: Any, iris_frame: pd.DataFrame
) -> None:
    buffer = io.BytesIO()
    np.save(buffer, iris_frame.to_numpy()[:5])
    expected = iris_model.predict(iris_frame.iloc[:5]).tolist()

    async def ask(accept: str | None) -> httpx.Response:
        headers = {"content-type": "application/x-npy", **({"accept": accept} if accept else {})}
        return await client.post("/invocations", content=buffer.getvalue(), headers=headers)

    assert (await ask(None)).json() == expected  # the default Accept: JSON
    assert (await ask("*/*")).json() == expected
    csv = await ask("text/csv")
    assert csv.headers["content-type"] == "text/csv" and csv.text.splitlines() == expected
    lines = await ask("application/jsonlines")
    assert [line.strip('"') for line in lines.text.splitlines()] == expected
    npy = await ask("application/x-npy")
    assert np.load(io.BytesIO(npy.content)).tolist() == expected
    picked = await ask("text/html;q=1, text/csv;q=0.5")
    assert picked.headers["content-type"] == "text/csv"


async def test_the_default_accept_is_a_setting(settings: Settings, iris: Loaded) -> None:
    changed = settings.replace(default_accept="text/csv")

    async def load() -> Service:
        return build_service(iris, changed)

    async with serving(changed, load) as client:
        answer = await client.post("/invocations", json=[VALUES, VIRGINICA])
        assert answer.headers["content-type"] == "text/csv"
        assert answer.text.splitlines() == ["setosa", "virginica"]


async def test_predictions_match_the_library_row_for_row(
    client: httpx.AsyncClient, iris_model: Any, iris_frame: pd.DataFrame
) -> None:
    csv = iris_frame.to_csv(index=False, header=False).encode()
    answer = await client.post("/invocations", content=csv, headers={"content-type": "text/csv"})
    assert answer.json() == iris_model.predict(iris_frame).tolist()
    rows = iris_frame.to_numpy().tolist()
    singles = await asyncio.gather(*(client.post("/invocations", json=row) for row in rows[:40]))
    assert [s.json()[0] for s in singles] == iris_model.predict(iris_frame.iloc[:40]).tolist()


# ---- the method, by query or custom attributes ------------------------------------------------------


async def test_method_by_query_or_custom_attributes_and_the_attributes_echoed(
    client: httpx.AsyncClient, iris_model: Any
) -> None:
    frame = pd.DataFrame([ROW])
    by_query = await client.post("/invocations?method=predict_proba", json=[VALUES])
    assert np.allclose(by_query.json(), iris_model.predict_proba(frame))
    attributes = "trace=1, method=predict_proba"
    by_header = await client.post(
        "/invocations", json=[VALUES], headers={"X-Amzn-SageMaker-Custom-Attributes": attributes}
    )
    assert by_header.json() == by_query.json()
    assert by_header.headers["x-amzn-sagemaker-custom-attributes"] == attributes
    plain = await client.post("/invocations", json=[VALUES])
    assert "x-amzn-sagemaker-custom-attributes" not in plain.headers
    decision = await client.post("/invocations?method=decision_function", json=[VALUES])
    assert np.allclose(decision.json(), iris_model.decision_function(frame))
    message = error(await client.post("/invocations?method=fit", json=[VALUES]), 400, "invalid_payload")
    assert "predict_proba" in message


async def test_a_named_record_gets_labelled_probabilities(client: httpx.AsyncClient, iris_model: Any) -> None:
    answer = (await client.post("/invocations?method=predict_proba", json=ROW)).json()
    assert list(answer) == ["setosa", "versicolor", "virginica"]
    assert np.allclose(list(answer.values()), iris_model.predict_proba(pd.DataFrame([ROW]))[0])


# ---- the other routes -------------------------------------------------------------------------------


async def test_execution_parameters(client: httpx.AsyncClient) -> None:
    answer = await client.get("/execution-parameters")
    assert answer.json() == {"MaxConcurrentTransforms": 2, "BatchStrategy": "MULTI_RECORD", "MaxPayloadInMB": 6}


async def test_predict_parameters_takes_one_row_from_the_query(client: httpx.AsyncClient) -> None:
    query = "&".join(f"{k}={v}" for k, v in ROW.items())
    assert (await client.get(f"/predict_parameters?{query}")).json() == ["setosa"]
    labelled = (await client.get(f"/predict_parameters?{query}&method=predict_proba")).json()
    assert list(labelled) == ["setosa", "versicolor", "virginica"]
    assert "query string" in error(await client.get("/predict_parameters"), 400, "invalid_payload")


# ---- errors: the right status, a message to act on, never the request's data -------------------------


async def test_routes_and_verbs(client: httpx.AsyncClient) -> None:
    assert "/invocations" in error(await client.get("/nope"), 404, "not_found")
    assert "POST" in error(await client.get("/invocations"), 405, "method_not_allowed")
    error(await client.post("/ping"), 405, "method_not_allowed")
    error(await client.put("/execution-parameters"), 405, "method_not_allowed")


async def test_content_type_and_accept(client: httpx.AsyncClient) -> None:
    plain = await client.post("/invocations", content=b"5.1", headers={"content-type": "text/plain"})
    assert "text/csv" in error(plain, 415, "unsupported_media_type")
    error(await client.post("/invocations", json=VALUES, headers={"accept": "text/html"}), 406, "not_acceptable")


async def test_a_body_over_the_payload_limit_is_413(client: httpx.AsyncClient, settings: Settings) -> None:
    body = b"5.1,3.5,1.4,0.2\n" * (settings.max_payload_bytes // 16 + 1)
    answer = await client.post("/invocations", content=body, headers={"content-type": "text/csv"})
    assert "6 MB" in error(answer, 413, "payload_too_large")
    assert answer.headers["connection"] == "close"
    assert (await client.post("/invocations", json=VALUES)).status_code == 200


@pytest.mark.parametrize(
    ("body", "content_type", "code"),
    [
        (b"", "application/json", "empty_payload"),
        (b"{oops " + SECRET.encode(), "application/json", "invalid_payload"),
        (b"[" + SECRET.encode() + b", 1]", "application/json", "schema_mismatch"),
        (b'{"sepal_length": "' + SECRET.encode() + b'x"}', "application/json", "schema_mismatch"),
        (
            f'[{{"sepal_length": "{SECRET}x", "sepal_width": 1, "petal_length": 1, "petal_width": 1}}]'.encode(),
            "application/json",
            "schema_mismatch",
        ),  # fmt: skip
        (f"{SECRET}x,1,2,3\n".encode(), "text/csv", "schema_mismatch"),
        (f"1,2,3,4\n{SECRET},1\n".encode(), "text/csv", "schema_mismatch"),
        (f"[1, 2, 3, 4]\n{{{SECRET}\n".encode(), "application/jsonlines", "invalid_payload"),
        (b"\x93NUMPY" + SECRET.encode(), "application/x-npy", "invalid_payload"),
        (f"1 0:{SECRET} x:y\n".encode(), "text/libsvm", "invalid_payload"),
        (SECRET.encode() + b"\xff\xfe", "application/octet-stream", "invalid_payload"),
    ],
)
async def test_bad_payloads_are_400_and_never_echoed(
    client: httpx.AsyncClient, body: bytes, content_type: str, code: str
) -> None:
    answer = await client.post("/invocations", content=body, headers={"content-type": content_type})
    error(answer, 400, code)
    assert SECRET not in answer.text
    assert (await client.post("/invocations", json=VALUES)).json() == ["setosa"]  # nothing broke


async def test_predict_parameters_never_echo_the_values(client: httpx.AsyncClient) -> None:
    answer = await client.get(f"/predict_parameters?sepal_length={SECRET}x&sepal_width=1")
    assert answer.status_code == 400
    assert SECRET not in answer.text


async def test_schema_errors_name_the_field_to_fix(client: httpx.AsyncClient) -> None:
    assert "Expected 4 values per row, got 2" in error(
        await client.post("/invocations", json=[1, 2]), 400, "schema_mismatch"
    )
    assert "petal_width" in error(await client.post("/invocations", json={"sepal_length": 1}), 400, "schema_mismatch")


# ---- a user's inference.py, run per request ---------------------------------------------------------


async def test_an_inference_script_is_served_through_its_hooks(iris_dir: Path, tmp_path: Path) -> None:
    model_dir = tmp_path / "model"
    (model_dir / "code").mkdir(parents=True)
    (model_dir / "model.joblib").write_bytes((iris_dir / "model.joblib").read_bytes())
    (model_dir / "code" / "inference.py").write_text(
        "import json, os, joblib, pandas\n"
        "def model_fn(model_dir):\n"
        "    return joblib.load(os.path.join(model_dir, 'model.joblib'))\n"
        "def input_fn(body, content_type):\n"
        "    return pandas.DataFrame([json.loads(body)['features']], columns=NAMES)\n"
        "NAMES = ['sepal_length', 'sepal_width', 'petal_length', 'petal_width']\n"
        "def predict_fn(rows, model):\n"
        "    return model.predict_proba(rows)[0].max()\n"
        "def output_fn(prediction, accept):\n"
        "    if prediction < 0:\n"
        "        raise ValueError('never')\n"
        "    return json.dumps({'confidence': round(float(prediction), 2)}), 'application/json'\n"
    )
    settings = Settings(model_dir=model_dir, scratch_dir=tmp_path / "scratch")
    loaded = load_and_warm(settings)

    async def load() -> Service:
        return build_service(loaded, settings)

    async with serving(settings, load) as client:
        answer = await client.post("/invocations", json={"features": VALUES})
        assert answer.status_code == 200, answer.text
        assert answer.json()["confidence"] > 0.5
        broken = await client.post("/invocations", json={"nothing": 1})
        assert "KeyError" in error(broken, 500, "model_error")
        assert "nothing" not in broken.text
