"""`sagehost local transform`: real processes (the runner, and the `sagehost serve` it starts in
batch mode, with --no-container or in an image built by `sagehost build`) with the demo model
packaged by `sagehost package`, and the exact bytes of each .out as SageMaker writes them: one
prediction per record, in input order."""

from __future__ import annotations

import gzip
import logging
import os
import shutil
import subprocess
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3  # type: ignore[import-untyped]
import orjson
import pandas as pd
import pytest
from moto.server import ThreadedMotoServer

from tests.conftest import SAGEHOST, running
from tests.integration.test_container import BASE, build, podman

MIB = 1024 * 1024
KEY_ID = "AKIALOCALTRANSFORM7Q"
SECRET = "localTransformSecretZq8Wx2Lp5Nk"
COLUMNS = ["sepal_length", "sepal_width", "petal_length", "petal_width"]


@dataclass
class Ran:
    code: int
    log: str


@pytest.fixture(scope="module")
def archive(iris_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("packaged") / "model.tar.gz"
    subprocess.run([SAGEHOST, "package", str(iris_dir), "-o", str(out)], check=True, capture_output=True)
    return out


def transform(archive: Path, *args: str, env: dict[str, str] | None = None, image: str | None = None) -> Ran:
    """`local transform` of `archive`: in `image`, else with --no-container."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("SAGEMAKER_", "SAGEHOST_", "SM_", "AWS_"))}
    clean.update({"SAGEHOST_WORKERS": "1", **(env or {})})
    done = subprocess.run(
        [SAGEHOST, "local", "transform", image or "--no-container", "--model-data", str(archive), *args],
        capture_output=True,
        text=True,
        env=clean,
        check=False,
        timeout=180,
    )
    return Ran(done.returncode, done.stdout + done.stderr)


def csv_text(frame: pd.DataFrame) -> bytes:
    return frame.to_csv(header=False, index=False).encode()


def labels(model: Any, frame: pd.DataFrame) -> list[str]:
    return [str(v) for v in model.predict(frame[COLUMNS])]


def lines(values: Sequence[str]) -> bytes:
    """SageMaker's AssembleWith=Line: each record's prediction, then a newline."""
    return "".join(f"{v}\n" for v in values).encode()


def test_csv_in_csv_out_is_one_line_per_record_across_mini_batches_and_a_bad_record_fails_its_file(
    archive: Path, iris_model: Any, iris_frame: pd.DataFrame, tmp_path: Path
) -> None:
    big = pd.concat([iris_frame] * 500, ignore_index=True)  # 75,000 rows, 1.2 MB: two 1 MB mini-batches
    data = csv_text(big)
    assert MIB < len(data) < 2 * MIB
    (tmp_path / "in" / "day=2").mkdir(parents=True)
    (tmp_path / "in" / "iris.csv").write_bytes(data)
    (tmp_path / "in" / "day=2" / "bad.csv").write_bytes(
        b"5.1,3.5,1.4,0.2\n6.7,3.0,5.2,2.3\n\n1.0,2.0\n5.9,3.0,4.2,1.5\n"
    )
    (tmp_path / "in" / "day=2" / "small.csv").write_bytes(csv_text(iris_frame.head(3)))

    ran = transform(
        archive,
        *("--input", str(tmp_path / "in"), "--output", str(tmp_path / "out"), "--concurrency", "2"),
        *("--content-type", "text/csv", "--accept", "text/csv", "--split-type", "Line", "--assemble-with", "Line"),
        "--max-payload-mb",
        "1",
    )

    assert ran.code == 1, ran.log
    assert (tmp_path / "out" / "iris.csv.out").read_bytes() == lines(labels(iris_model, big))
    assert (tmp_path / "out" / "day=2" / "small.csv.out").read_bytes() == b"setosa\nsetosa\nsetosa\n"
    assert sorted(p.name for p in (tmp_path / "out").rglob("*")) == ["day=2", "iris.csv.out", "small.csv.out"]
    bad = str(tmp_path / "in" / "day=2" / "bad.csv")
    assert (
        f"Failed: {bad}, line 4: the container answered HTTP 400: schema_mismatch: Expected 4 values per row, got 2"
        in ran.log
    )
    assert "MaxConcurrentTransforms=2 (--concurrency), MaxPayloadInMB=1 (--max-payload-mb)" in ran.log
    assert "2 of 3 files transformed, 75,003 records" in ran.log


def test_json_lines_joined_to_their_input_one_record_a_request(
    archive: Path, iris_model: Any, iris_frame: pd.DataFrame, tmp_path: Path
) -> None:
    rows = iris_frame.iloc[::10]
    features = [list(row) for row in rows[COLUMNS].itertuples(index=False)]
    source = tmp_path / "rows.jsonl"
    source.write_bytes(b"".join(orjson.dumps({"id": i, "features": f}) + b"\n" for i, f in enumerate(features)))

    ran = transform(
        archive,
        *("--input", str(source), "--output", str(tmp_path / "out"), "--strategy", "SingleRecord"),
        *("--content-type", "application/jsonlines", "--accept", "application/jsonlines", "--concurrency", "4"),
        *("--split-type", "Line", "--assemble-with", "Line", "--input-filter", "$.features", "--join-source", "Input"),
    )

    assert ran.code == 0, ran.log
    predicted = labels(iris_model, rows)
    expected = b"".join(
        b'{"id":%d,"features":%s,"SageMakerOutput":"%s"}\n' % (i, orjson.dumps(f), p.encode())
        for i, (f, p) in enumerate(zip(features, predicted, strict=True))
    )
    assert (tmp_path / "out" / "rows.jsonl.out").read_bytes() == expected
    assert expected.startswith(b'{"id":0,"features":[5.1,3.5,1.4,0.2],"SageMakerOutput":"setosa"}\n')
    assert "BatchStrategy=SINGLE_RECORD (--strategy)" in ran.log


def test_assemble_with_none_writes_the_answers_back_to_back(
    archive: Path, iris_model: Any, iris_frame: pd.DataFrame, tmp_path: Path
) -> None:
    (tmp_path / "in").mkdir()
    whole = csv_text(iris_frame)
    (tmp_path / "in" / "whole.csv").write_bytes(whole)
    big = pd.concat([iris_frame] * 500, ignore_index=True)
    (tmp_path / "split").mkdir()
    (tmp_path / "split" / "big.csv").write_bytes(csv_text(big))
    accept = ("--content-type", "text/csv", "--accept", "application/json")

    # No split: each file is one request, and its .out is that answer, byte for byte.
    ran = transform(archive, "--input", str(tmp_path / "in"), "--output", str(tmp_path / "out"), *accept)
    assert ran.code == 0, ran.log
    assert (tmp_path / "out" / "whole.csv.out").read_bytes() == orjson.dumps(labels(iris_model, iris_frame))

    # Split by line, no assembly: the mini-batches' answers follow each other as they are.
    split = ("--split-type", "Line", "--max-payload-mb", "1")
    ran = transform(archive, "--input", str(tmp_path / "split"), "--output", str(tmp_path / "out2"), *accept, *split)
    assert ran.code == 0, ran.log
    assert "--assemble-with None writes the answers back to back" in ran.log
    first = packed_rows(csv_text(big), MIB)
    predicted = labels(iris_model, big)
    expected = orjson.dumps(predicted[:first]) + orjson.dumps(predicted[first:])
    assert (tmp_path / "out2" / "big.csv.out").read_bytes() == expected


def packed_rows(data: bytes, limit: int) -> int:
    """Records in the first mini-batch: whole lines while they fit in `limit` bytes."""
    size = count = 0
    for line in data.splitlines(keepends=True):
        if size + len(line) > limit:
            break
        size, count = size + len(line), count + 1
    return count


def test_zero_mb_streams_gzip_input_in_one_chunked_request(
    archive: Path, iris_model: Any, iris_frame: pd.DataFrame, tmp_path: Path
) -> None:
    big = pd.concat([iris_frame] * 2700, ignore_index=True)
    data = csv_text(big)
    assert len(data) > 6 * MIB  # more than a request may hold with any limit in place
    packed = tmp_path / "rows.csv.gz"
    packed.write_bytes(gzip.compress(data))

    ran = transform(
        archive,
        *("--input", str(packed), "--output", str(tmp_path / "out"), "--gzip", "--max-payload-mb", "0"),
        *("--content-type", "text/csv", "--accept", "text/csv", "--split-type", "Line", "--assemble-with", "Line"),
    )

    assert ran.code == 0, ran.log
    assert "MaxPayloadInMB=0 (--max-payload-mb)" in ran.log
    assert (tmp_path / "out" / "rows.csv.gz.out").read_bytes() == lines(labels(iris_model, big))


# ---- S3 in and out, against moto on loopback ---------------------------------------------------------


@pytest.fixture
def s3_env(tmp_path: Path) -> Iterator[dict[str, str]]:
    """moto's S3 on 127.0.0.1, and the environment boto3 reads to reach it (nothing from ~/.aws)."""
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield {
            "AWS_ENDPOINT_URL": f"http://{host}:{port}",
            "AWS_ACCESS_KEY_ID": KEY_ID,
            "AWS_SECRET_ACCESS_KEY": SECRET,
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_EC2_METADATA_DISABLED": "true",
            "AWS_CONFIG_FILE": str(tmp_path / "no-aws-config"),
            "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "no-aws-credentials"),
        }
    finally:
        server.stop()


def test_url_sends_the_job_to_a_server_someone_else_started(
    iris_dir: Path, iris_model: Any, iris_frame: pd.DataFrame, tmp_path: Path
) -> None:
    """`--url`: the job goes to a server already running; the runner starts and stops nothing."""
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.csv").write_bytes(csv_text(iris_frame))
    env = {"SAGEMAKER_BATCH": "true", "SAGEHOST_WORKERS": "1"}
    with running(iris_dir, tmp_path, env) as server:
        done = subprocess.run(
            [
                SAGEHOST,
                "local",
                "transform",
                "--url",
                server.url,
                "--input",
                str(tmp_path / "in"),
                "--output",
                str(tmp_path / "out"),
                "--content-type",
                "text/csv",
                "--accept",
                "text/csv",
                "--split-type",
                "Line",
                "--assemble-with",
                "Line",
            ],
            capture_output=True,
            text=True,
            check=False,
            timeout=120,
        )
        assert done.returncode == 0, done.stdout + done.stderr
        assert server.process.poll() is None  # still running: not the runner's to stop
        assert server.client.get("/ping").status_code == 200
    assert (tmp_path / "out" / "a.csv.out").read_bytes() == lines(labels(iris_model, iris_frame))


def test_s3_input_and_output(archive: Path, iris_model: Any, iris_frame: pd.DataFrame, s3_env: dict[str, str]) -> None:
    s3 = boto3.client(
        "s3",
        region_name="us-east-1",
        endpoint_url=s3_env["AWS_ENDPOINT_URL"],
        aws_access_key_id=KEY_ID,
        aws_secret_access_key=SECRET,
    )
    s3.create_bucket(Bucket="transform-data")
    first, second = iris_frame.head(40), iris_frame.tail(40)
    s3.put_object(Bucket="transform-data", Key="input/a.csv", Body=csv_text(first))
    s3.put_object(Bucket="transform-data", Key="input/2026/b.csv", Body=csv_text(second))

    ran = transform(
        archive,
        *("--input", "s3://transform-data/input/", "--output", "s3://transform-data/output"),
        *("--content-type", "text/csv", "--accept", "text/csv", "--split-type", "Line", "--assemble-with", "Line"),
        env=s3_env,
    )

    assert ran.code == 0, ran.log
    listed = s3.list_objects_v2(Bucket="transform-data", Prefix="output/")
    assert sorted(o["Key"] for o in listed["Contents"]) == ["output/2026/b.csv.out", "output/a.csv.out"]
    body = s3.get_object(Bucket="transform-data", Key="output/a.csv.out")["Body"].read()
    assert body == lines(labels(iris_model, first))
    body = s3.get_object(Bucket="transform-data", Key="output/2026/b.csv.out")["Body"].read()
    assert body == lines(labels(iris_model, second))
    assert KEY_ID not in ran.log and SECRET not in ran.log


# ---- in a container: an image `sagehost build` made, run as SageMaker runs a transform job -----------


@pytest.fixture(scope="module")
def code_image(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A code-only image: the job's model.tar.gz is mounted read-only at /opt/ml/model."""
    assert shutil.which("podman"), "podman is missing: run scripts/setup-containers"
    assert podman("image", "exists", BASE, check=False).returncode == 0, f"no {BASE}: run scripts/setup-containers"
    tag = f"localhost/sagehost-transform-test-{os.getpid()}"
    build(tag, tmp_path_factory.mktemp("transform-context"))
    yield tag
    podman("rmi", "-f", tag, check=False)


@pytest.mark.container
@pytest.mark.slow
def test_a_built_image_transforms_line_by_line_and_a_bad_record_fails_its_file(
    code_image: str, archive: Path, iris_model: Any, iris_frame: pd.DataFrame, tmp_path: Path
) -> None:
    big = pd.concat([iris_frame] * 500, ignore_index=True)  # 1.2 MB: two 1 MB mini-batches
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "iris.csv").write_bytes(csv_text(big))
    (tmp_path / "in" / "bad.csv").write_bytes(b"5.1,3.5,1.4,0.2\n6.7,3.0,5.2,2.3\n\n1.0,2.0\n5.9,3.0,4.2,1.5\n")

    ran = transform(
        archive,
        *("--input", str(tmp_path / "in"), "--output", str(tmp_path / "out"), "--max-payload-mb", "1"),
        *("--content-type", "text/csv", "--accept", "text/csv", "--split-type", "Line", "--strategy", "MultiRecord"),
        *("--assemble-with", "Line"),
        image=code_image,
    )

    assert ran.code == 1, ran.log
    assert "[container] " in ran.log  # the image's server answered, not a local process
    # Each record's prediction on its own line, no blank line where a mini-batch's answer ended.
    assert (tmp_path / "out" / "iris.csv.out").read_bytes() == lines(labels(iris_model, big))
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["iris.csv.out"]
    bad = str(tmp_path / "in" / "bad.csv")
    assert (
        f"Failed: {bad}, line 4: the container answered HTTP 400: schema_mismatch: Expected 4 values per row, got 2"
        in ran.log
    )
    assert "BatchStrategy=MULTI_RECORD (--strategy)" in ran.log
    assert "1 of 2 files transformed" in ran.log
