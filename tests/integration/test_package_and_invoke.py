"""`sagehost package` writes what SageMaker unpacks correctly; `sagehost invoke` sends a file."""

from __future__ import annotations

import subprocess
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import SAGEHOST, Server, free_port, running


def sagehost(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([SAGEHOST, *args], capture_output=True, text=True, timeout=60, check=False)


def test_package_puts_files_at_the_root_and_serve_reads_it(iris_dir: Path, tmp_path: Path) -> None:
    (iris_dir / "__pycache__").mkdir(exist_ok=True)
    (iris_dir / "__pycache__" / "junk.pyc").write_bytes(b"x")
    archive = tmp_path / "out" / "model.tar.gz"
    done = sagehost("package", str(iris_dir), "-o", str(archive))
    assert done.returncode == 0, done.stderr
    assert "model.joblib as sklearn" in done.stdout
    with tarfile.open(archive) as tar:
        names = tar.getnames()
    assert "model.joblib" in names and "input_example.json" in names
    assert not any("/" in name and not name.startswith("code/") for name in names)
    assert not any("__pycache__" in name for name in names)
    delivered = tmp_path / "opt-ml-model"
    delivered.mkdir()
    archive.rename(delivered / "model.tar.gz")
    with running(delivered, tmp_path) as server:
        assert server.client.post("/invocations", json=[5.1, 3.5, 1.4, 0.2]).json() == ["setosa"]


def test_package_refuses_the_nested_folder_mistake_and_an_empty_dir(iris_dir: Path, tmp_path: Path) -> None:
    outer = tmp_path / "outer"
    (outer / "model").mkdir(parents=True)
    (outer / "model" / "model.joblib").write_bytes((iris_dir / "model.joblib").read_bytes())
    nested = sagehost("package", str(outer), "-o", str(tmp_path / "a.tar.gz"))
    assert nested.returncode == 1 and "package that folder instead" in nested.stderr
    empty = tmp_path / "empty"
    empty.mkdir()
    refused = sagehost("package", str(empty), "-o", str(tmp_path / "b.tar.gz"))
    assert refused.returncode == 1 and "holds no model" in refused.stderr
    assert not (tmp_path / "b.tar.gz").exists()


@pytest.fixture(scope="module")
def demo(iris_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with running(iris_dir, tmp_path_factory.mktemp("logs")) as server:
        yield server


def test_invoke_prints_the_answer(demo: Server, tmp_path: Path) -> None:
    payload = tmp_path / "rows.csv"
    payload.write_text("5.1,3.5,1.4,0.2\n6.7,3.0,5.2,2.3\n")
    done = sagehost("invoke", "--url", demo.url, str(payload), "--content-type", "text/csv", "--accept", "text/csv")
    assert done.returncode == 0, done.stderr
    assert done.stdout == "setosa\nvirginica\n"
    attributes = sagehost("invoke", "--url", demo.url + "/invocations", str(payload), "--custom-attributes",
                          "method=predict_proba")  # fmt: skip
    assert attributes.stdout.startswith("[[")


def test_invoke_reports_errors_on_stderr_with_a_non_zero_exit(demo: Server, tmp_path: Path) -> None:
    payload = tmp_path / "rows.txt"
    payload.write_text("hello")
    done = sagehost("invoke", "--url", demo.url, str(payload), "--content-type", "text/plain")
    assert done.returncode == 1
    assert done.stdout == "" and "HTTP 415" in done.stderr and "unsupported_media_type" in done.stderr


def test_invoke_says_when_nothing_answers(tmp_path: Path) -> None:
    payload = tmp_path / "rows.csv"
    payload.write_text("5.1,3.5,1.4,0.2\n")
    port = free_port()
    done = sagehost("invoke", "--url", f"http://127.0.0.1:{port}", str(payload))
    assert done.returncode == 1 and done.stdout == ""
    assert f"No answer from http://127.0.0.1:{port}/invocations: Connection refused." in done.stderr
    assert "Traceback" not in done.stderr
