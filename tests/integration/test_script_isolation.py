"""Two models whose code/inference.py import same-named sibling modules (helpers.py, a pkg
package) of different behaviour, loaded into one `sagehost serve --multi-model` process: each
answers its own way, on every worker."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from tests.conftest import Server
from tests.integration.test_multimodel import multi_model, only
from tests.integration.test_proxy import children_of
from tests.test_script_isolation import ANSWERS, ROWS, model_dir

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("isolation")
    return {letter: model_dir(root, letter) for letter in ANSWERS}


def fresh(server: Server, method: str, path: str, **kwargs: object) -> httpx.Response:
    """One request on a new connection, so that it may reach any worker."""
    with httpx.Client(timeout=60) as client:
        return client.request(method, server.url + path, **kwargs)  # type: ignore[arg-type]


def load(server: Server, name: str, folder: Path) -> int:
    return fresh(server, "POST", "/models", json={"model_name": name, "url": str(folder)}).status_code


def invoke(server: Server, name: str) -> list[str]:
    answer = fresh(
        server, "POST", f"/models/{name}/invoke", content=json.dumps(ROWS), headers={"content-type": "application/json"}
    )
    assert answer.status_code == 200, answer.text
    result: list[str] = answer.json()
    return result


def test_two_script_models_with_same_named_helpers_each_answer_their_own_way(
    tmp_path: Path, models: dict[str, Path]
) -> None:
    with multi_model(tmp_path) as server:
        assert [load(server, letter, folder) for letter, folder in models.items()] == [200, 200], server.log[-3000:]
        for worker in children_of(server.process.pid):
            with only(server, worker):
                # Alternating: a module shared by the two would show in one of the answers.
                assert [invoke(server, letter) for letter in [*ANSWERS, *ANSWERS]] == [*ANSWERS.values()] * 2
        # Unloaded, then loaded again under another name: its own code still, the other's too.
        assert fresh(server, "DELETE", "/models/a").status_code == 200
        assert load(server, "a-again", models["a"]) == 200
        assert [invoke(server, "a-again"), invoke(server, "b")] == [ANSWERS["a"], ANSWERS["b"]]
