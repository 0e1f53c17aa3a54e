"""Multi-model serving in process: the App with sagehost.multimodel's routes and a real registry
(its shared directory, its load thread), driven through httpx's ASGI transport with really
trained models. The real processes, several workers and the local stand-in are in
tests/integration/test_multimodel.py."""

from __future__ import annotations

import asyncio
import fcntl
import io
import os
import shutil
import textwrap
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import joblib
import numpy as np
import pytest

from sagehost import contract
from sagehost.app import App
from sagehost.config import Settings
from sagehost.image.build import BuildRequest, build
from sagehost.multimodel import budget
from sagehost.multimodel.registry import Registry
from sagehost.multimodel.routes import Routes
from sagehost.multimodel.shared import Record, Shared
from sagehost.server import build_service, load_and_warm
from sagehost.service import Service
from tests.test_app import Lifespan, client_of, error, serving

anyio = pytest.mark.anyio
MIB = contract.MIB
ROWS = [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]]
CSV = "5.1,3.5,1.4,0.2\n6.7,3.0,5.2,2.3\n"

SCRIPT = """
import json, os, joblib

def model_fn(model_dir):
    return joblib.load(os.path.join(model_dir, "model.joblib"))

def transform_fn(model, body, content_type, accept):
    rows = json.loads(body)
    return json.dumps({"classes": [int(c) for c in model.predict(rows)]}), "application/json"
"""
GREEDY = """
import numpy as np

def model_fn(model_dir):
    return np.ones(6 * 1024 * 1024)  # 48 MiB, from a directory of a few bytes

def transform_fn(model, body, content_type, accept):
    return "[]", "application/json"
"""
SLOW = """
import time

def model_fn(model_dir):
    time.sleep(1.5)
    return "slow"

def transform_fn(model, body, content_type, accept):
    return '"slow"', "application/json"
"""


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory, iris_dir: Path, logistic_dir: Path) -> dict[str, Path]:
    """Model directories: the demo model, a numeric one, an inference.py, and special cases."""
    root = tmp_path_factory.mktemp("mm-models")
    dirs = {"iris": iris_dir, "logistic": logistic_dir}
    for name, source in (("script", SCRIPT), ("greedy", GREEDY), ("slow", SLOW)):
        (root / name / "code").mkdir(parents=True)
        (root / name / "code" / "inference.py").write_text(textwrap.dedent(source))
        shutil.copy(logistic_dir / "model.pickle", root / name / "model.joblib")
        dirs[name] = root / name
    for index in range(3):  # 8 MiB of files each: what they cost is their files' size
        padded = root / f"padded{index}"
        shutil.copytree(logistic_dir, padded)
        (padded / "padding.dat").write_bytes(b"\0" * (8 * MIB))
        dirs[f"padded{index}"] = padded
    (root / "unservable").mkdir()
    (root / "unservable" / "notes.md").write_text("no model here\n")
    dirs["unservable"] = root / "unservable"
    (root / "afile").write_text("x")
    dirs["afile"] = root / "afile"
    return dirs


def settings_for(tmp: Path) -> Settings:
    return Settings(workers=1, multi_model=True, scratch_dir=tmp / "scratch")


@asynccontextmanager
async def multi_model(tmp: Path, budget_mib: float = 1 << 20) -> AsyncIterator[httpx.AsyncClient]:
    """The App of one multi-model worker, its registry in `tmp`."""
    shared = Shared.create(tmp / f"registry-{time.monotonic_ns()}", 1, int(budget_mib * MIB))
    registry = Registry(shared, settings_for(tmp))

    async def load() -> Service:
        await registry.start()
        return registry.home

    try:
        async with serving(registry.settings, load, Routes(registry)) as client:
            yield client
    finally:
        registry.close()


async def load(client: httpx.AsyncClient, name: str, url: Path | str) -> httpx.Response:
    return await client.post("/models", json={"model_name": name, "url": str(url)})


# ---- the routes ---------------------------------------------------------------------------------


@anyio
async def test_ping_is_healthy_with_no_model_and_invocations_says_where_models_answer(tmp_path: Path) -> None:
    async with multi_model(tmp_path) as client:
        ping = await client.get("/ping")
        assert ping.status_code == 200 and ping.json() == {"status": "healthy"}
        assert (await client.get("/models")).json() == {"models": []}
        message = error(
            await client.post("/invocations", content=CSV, headers={"content-type": "text/csv"}), 404, "not_found"
        )
        assert "POST /models/NAME/invoke" in message


@anyio
async def test_load_describe_invoke_list_and_unload(tmp_path: Path, models: dict[str, Path]) -> None:
    async with multi_model(tmp_path) as client:
        loaded = await load(client, "iris", models["iris"])
        assert loaded.status_code == 200, loaded.text
        assert (await client.get("/models/iris")).json() == {"modelName": "iris", "modelUrl": str(models["iris"])}
        answer = await client.post("/models/iris/invoke", content=CSV, headers={"content-type": "text/csv"})
        assert answer.status_code == 200 and answer.json() == ["setosa", "virginica"]
        assert "is already loaded" in error(await load(client, "iris", models["logistic"]), 409, "model_already_loaded")
        assert (await load(client, "script", models["script"])).status_code == 200
        rows = np.linspace(-1, 1, 30).reshape(3, 10)
        script = await client.post("/models/script/invoke", json=rows.tolist())
        expected = joblib.load(models["logistic"] / "model.pickle").predict(rows)
        assert script.json() == {"classes": expected.tolist()}
        listed = (await client.get("/models")).json()
        assert listed == {
            "models": [
                {"modelName": "iris", "modelUrl": str(models["iris"])},
                {"modelName": "script", "modelUrl": str(models["script"])},
            ]
        }
        unloaded = await client.delete("/models/iris")
        assert unloaded.status_code == 200, unloaded.text
        error(await client.delete("/models/iris"), 404, "not_found")
        error(await client.get("/models/iris"), 404, "not_found")
        error(
            await client.post("/models/iris/invoke", content=CSV, headers={"content-type": "text/csv"}),
            404,
            "not_found",
        )
        assert [m["modelName"] for m in (await client.get("/models")).json()["models"]] == ["script"]
        assert (await load(client, "iris", models["logistic"])).status_code == 200  # the name is free again


@anyio
async def test_what_post_models_refuses(tmp_path: Path, models: dict[str, Path]) -> None:
    (tmp_path / "to-proc").symlink_to("/proc/self")
    async with multi_model(tmp_path) as client:
        assert "does not exist" in error(await load(client, "a", tmp_path / "missing"), 404, "not_found")
        for refused in ("/proc/self", "/dev", "/sys/kernel", "/opt/../dev/shm", str(tmp_path / "to-proc")):
            assert "/dev, /proc or /sys" in error(await load(client, "a", refused), 400, "invalid_payload")
        paragraph = error(await load(client, "a", models["unservable"]), 400, "model_unservable")
        assert "notes.md" in paragraph and "model.joblib" in paragraph  # what was found, what is expected
        assert "is a file" in error(await load(client, "a", models["afile"]), 400, "model_unservable")
        for body in (
            b"not json",
            b"[1]",
            b'{"url": "/x"}',
            b'{"model_name": "a"}',
            b'{"model_name": "a/b", "url": "/x"}',
        ):
            error(await client.post("/models", content=body), 400, "invalid_payload")
        error(await client.put("/models"), 405, "method_not_allowed")
        error(await client.post("/models/a"), 405, "method_not_allowed")
        error(await client.get("/models/a/invoke"), 405, "method_not_allowed")
        error(await client.get("/models/a/b/c"), 404, "not_found")
        assert (await client.get("/models")).json() == {"models": []}  # nothing half-loaded is left
        assert (await load(client, "a", models["iris"])).status_code == 200


@anyio
async def test_invoke_answers_as_invocations_does(tmp_path: Path, models: dict[str, Path]) -> None:
    """Every content type, Accept, method and error: byte for byte what /invocations answers."""
    single = Settings(model_dir=models["iris"], workers=1, scratch_dir=tmp_path / "scratch")
    iris = load_and_warm(single)

    async def service() -> Service:
        return build_service(iris, single)

    alone = App(single, service)
    lifespan = Lifespan(alone)
    await lifespan.begin()
    assert await lifespan.outcome() == "lifespan.startup.complete"
    npy = io.BytesIO()
    np.save(npy, np.array(ROWS))
    cases: list[tuple[bytes, dict[str, str], str]] = [
        (CSV.encode(), {"content-type": "text/csv"}, ""),
        (CSV.encode(), {"content-type": "text/csv", "accept": "text/csv"}, ""),
        (
            b'[{"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2}]',
            {"content-type": "application/json"},
            "",
        ),
        (
            b"[5.1,3.5,1.4,0.2]\n[6.7,3.0,5.2,2.3]\n",
            {"content-type": "application/jsonlines", "accept": "application/jsonlines"},
            "",
        ),
        (npy.getvalue(), {"content-type": "application/x-npy", "accept": "application/x-npy"}, ""),
        (CSV.encode(), {"content-type": "text/csv"}, "?method=predict_proba"),
        (CSV.encode(), {"content-type": "text/csv", contract.CUSTOM_ATTRIBUTES_HEADER: "method=predict_proba"}, ""),
        (b"1,2\n", {"content-type": "text/csv"}, ""),
        (b"a,b,c,d\n", {"content-type": "text/csv"}, ""),
        (b"", {"content-type": "text/csv"}, ""),
        (CSV.encode(), {"content-type": "image/png"}, ""),
        (CSV.encode(), {"content-type": "text/csv", "accept": "image/png"}, ""),
        (CSV.encode(), {"content-type": "text/csv"}, "?method=explain"),
    ]
    try:
        async with multi_model(tmp_path) as client, client_of(alone) as reference:
            assert (await load(client, "iris", models["iris"])).status_code == 200
            for body, headers, query in cases:
                want = await reference.post("/invocations" + query, content=body, headers=headers)
                got = await client.post("/models/iris/invoke" + query, content=body, headers=headers)
                assert (got.status_code, got.headers["content-type"]) == (
                    want.status_code,
                    want.headers["content-type"],
                )
                if want.status_code == 200:
                    assert got.content == want.content
                    assert got.headers.get(contract.CUSTOM_ATTRIBUTES_HEADER) == want.headers.get(
                        contract.CUSTOM_ATTRIBUTES_HEADER
                    )
                else:
                    assert got.json()["error"]["code"] == want.json()["error"]["code"]
                    assert got.json()["error"]["message"] == want.json()["error"]["message"]
    finally:
        await lifespan.end()


@anyio
async def test_list_pages(tmp_path: Path, models: dict[str, Path]) -> None:
    async with multi_model(tmp_path) as client:
        for index in range(5):
            assert (await load(client, f"m{index}", models["logistic"])).status_code == 200
        first = (await client.get("/models", params={"limit": 2})).json()
        assert [m["modelName"] for m in first["models"]] == ["m0", "m1"] and first["nextPageToken"] == "2"
        second = (await client.get("/models", params={"limit": 2, "next_page_token": first["nextPageToken"]})).json()
        assert [m["modelName"] for m in second["models"]] == ["m2", "m3"]
        last = (await client.get("/models", params={"limit": 2, "next_page_token": second["nextPageToken"]})).json()
        assert last == {"models": [{"modelName": "m4", "modelUrl": str(models["logistic"])}]}  # no token: the end
        for limit in ("0", "101", ""):  # as the AWS multi-model server: out of 1-100 means 100
            assert len((await client.get("/models", params={"limit": limit})).json()["models"]) == 5
        assert (await client.get("/models", params={"next_page_token": "9"})).json() == {"models": []}
        for bad in ({"limit": "x"}, {"next_page_token": "-1"}, {"next_page_token": "abc"}):
            error(await client.get("/models", params=bad), 400, "invalid_payload")


# ---- memory -------------------------------------------------------------------------------------


@anyio
async def test_507_when_the_files_would_not_fit_then_200_after_an_unload(
    tmp_path: Path, models: dict[str, Path]
) -> None:
    async with multi_model(tmp_path, budget_mib=20) as client:
        assert (await load(client, "p0", models["padded0"])).status_code == 200
        assert (await load(client, "p1", models["padded1"])).status_code == 200
        message = error(await load(client, "p2", models["padded2"]), 507, "insufficient_memory")
        assert "of the 20 MiB budget" in message and "DELETE /models/NAME" in message
        error(await client.get("/models/p2"), 404, "not_found")
        assert (await client.delete("/models/p0")).status_code == 200  # its memory is given back
        assert (await load(client, "p2", models["padded2"])).status_code == 200
        answer = await client.post(
            "/models/p2/invoke", content=",".join(["0.5"] * 10), headers={"content-type": "text/csv"}
        )
        assert answer.status_code == 200, answer.text


@anyio
async def test_507_when_the_loaded_model_measures_over_the_budget(tmp_path: Path, models: dict[str, Path]) -> None:
    """A few bytes of files, 48 MiB once loaded: refused after the load, and that memory goes back."""
    async with multi_model(tmp_path, budget_mib=32) as client:
        before = budget.resident_bytes()
        message = error(await load(client, "greedy", models["greedy"]), 507, "insufficient_memory")
        assert "takes" in message
        assert (await client.get("/models")).json() == {"models": []}
        assert budget.resident_bytes() - before < 24 * MIB
        assert (await load(client, "iris", models["iris"])).status_code == 200


@anyio
async def test_a_load_blocks_neither_ping_nor_the_other_models(tmp_path: Path, models: dict[str, Path]) -> None:
    async with multi_model(tmp_path) as client:
        assert (await load(client, "iris", models["iris"])).status_code == 200
        started = time.monotonic()
        slow = asyncio.ensure_future(load(client, "slow", models["slow"]))
        await asyncio.sleep(0.2)
        for _ in range(5):
            began = time.monotonic()
            assert (await client.get("/ping")).status_code == 200
            answer = await client.post("/models/iris/invoke", content=CSV, headers={"content-type": "text/csv"})
            assert answer.status_code == 200 and time.monotonic() - began < 0.5
        assert not slow.done()
        assert (await slow).status_code == 200 and time.monotonic() - started >= 1.5


def test_cost_is_what_the_load_keeps_and_never_less_than_its_files(tmp_path: Path) -> None:
    (tmp_path / "weights.dat").write_bytes(b"\0" * (3 * MIB))
    _, floor = budget.measured(lambda: None, tmp_path)
    assert floor == 3 * MIB
    kept, cost = budget.measured(lambda: np.ones(8 * MIB // 8) + 1, tmp_path)
    assert kept.nbytes == 8 * MIB and 7 * MIB < cost < 16 * MIB


def write(root: Path, relative: str, text: str) -> None:
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


@pytest.mark.parametrize(
    ("files", "limit"),
    [
        ({"proc/self/cgroup": "0::/\n", "sys/fs/cgroup/memory.max": "2147483648\n"}, 2 * 1024 * MIB),
        ({"proc/self/cgroup": "0::/\n", "sys/fs/cgroup/memory.max": "max\n"}, None),
        (
            {
                "proc/self/cgroup": "0::/kubepods/pod1/c1\n",
                "sys/fs/cgroup/kubepods/memory.max": "1073741824\n",
                "sys/fs/cgroup/kubepods/pod1/c1/memory.max": "max\n",
            },
            1024 * MIB,
        ),
        (
            {
                "proc/self/cgroup": "12:cpu,cpuacct:/\n4:memory:/docker/abc\n0::/\n",
                "sys/fs/cgroup/memory/memory.limit_in_bytes": "9223372036854771712\n",
                "sys/fs/cgroup/memory/docker/abc/memory.limit_in_bytes": "536870912\n",
            },
            512 * MIB,
        ),
        (
            {"proc/self/cgroup": "4:memory:/\n", "sys/fs/cgroup/memory/memory.limit_in_bytes": "9223372036854771712"},
            None,
        ),
        ({}, None),
    ],
)
def test_container_limit_from_cgroup_v2_and_v1(tmp_path: Path, files: dict[str, str], limit: int | None) -> None:
    for relative, text in files.items():
        write(tmp_path, relative, text)
    assert budget.container_limit(tmp_path) == limit


def test_budget_is_the_setting_else_a_share_of_the_tighter_of_cgroup_and_machine(tmp_path: Path) -> None:
    write(tmp_path, "proc/meminfo", "MemTotal:       16384000 kB\nMemFree:  1 kB\n")
    assert budget.budget_bytes(Settings(model_memory_mb=300), tmp_path) == 300 * MIB
    assert budget.budget_bytes(Settings(), tmp_path) == int(16384000 * 1024 * budget.DEFAULT_SHARE)
    write(tmp_path, "proc/self/cgroup", "0::/\n")
    write(tmp_path, "sys/fs/cgroup/memory.max", str(4096 * MIB))
    assert budget.budget_bytes(Settings(), tmp_path) == int(4096 * MIB * budget.DEFAULT_SHARE)
    assert budget.budget_bytes(Settings()) > 0  # this machine's own


# ---- the shared registry ------------------------------------------------------------------------


def test_a_worker_that_is_gone_no_longer_counts(tmp_path: Path) -> None:
    shared = Shared.create(tmp_path / "registry", 2, 100 * MIB)
    holder = os.open(tmp_path / "registry" / "workers" / "4242", os.O_CREAT | os.O_RDWR)
    fcntl.flock(holder, fcntl.LOCK_EX)  # a worker alive: it holds its file's lock
    with shared.changing() as state:
        state["a"] = Record("/m/a", "ready", 4242, "s1", 5 * MIB, copies={4242: 5 * MIB})
        state["b"] = Record("/m/b", "first", 4242, "s2", 3 * MIB)
    assert shared.live() == {4242}
    # a: one copy measured plus one still to load; b: two copies at its estimate
    assert shared.used(shared.read()) == 10 * MIB + 6 * MIB
    os.close(holder)  # the worker dies: the kernel drops its lock
    with shared.changing() as state:
        pass
    after = shared.read()
    assert shared.live() == set() and not (tmp_path / "registry" / "workers" / "4242").exists()
    assert after["a"].copies == {} and "b" not in after  # b's owner will never answer its POST


def test_build_multi_model_labels_the_image(tmp_path: Path) -> None:
    context = tmp_path / "context"
    request = BuildRequest("mm:1", None, context=context, render_only=True, multi_model=True)
    built = build(request, Settings(), lambda line: None)
    dockerfile = built.dockerfile.read_text()
    assert f'LABEL {contract.LABEL_MULTI_MODELS}="true"' in dockerfile
    assert f'LABEL {contract.LABEL_BIND_TO_PORT}="true"' in dockerfile
    assert "COPY model/" not in dockerfile


def test_build_multi_model_refuses_a_baked_model(tmp_path: Path, models: dict[str, Path]) -> None:
    from sagehost.errors import ConfigError

    with pytest.raises(ConfigError, match="loads its models at run time"):
        build(
            BuildRequest("mm:1", models["iris"], context=tmp_path / "c", render_only=True, multi_model=True),
            Settings(),
            print,
        )
