"""Where `sagehost local transform` reads its input files and writes their .out files: a local
file or directory, or an S3 prefix (through sagehost.aws, boto3's usual chain and AWS_ENDPOINT_URL).

As SageMaker does: every object under the input (S3Prefix) is one input file; each gets
`<its name>.out` under the output, its path below the input mirrored; gzip input
(CompressionType=Gzip) is decompressed as it is read; and a .out appears only once its whole
file succeeded (it is written aside, then moved or uploaded).
https://docs.aws.amazon.com/sagemaker/latest/APIReference/API_TransformOutput.html
"""

from __future__ import annotations

import contextlib
import gzip
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, BinaryIO

from sagehost.errors import ConfigError, StartupError

if TYPE_CHECKING:
    from sagehost.aws.session import Aws

OUT_SUFFIX = ".out"
_COPY_CHUNK = 1024 * 1024


@dataclass(frozen=True)
class InputFile:
    name: str
    """Its path below the input ("a.csv", "day=1/b.csv"): the .out's path below the output."""
    label: str
    """Where it is, for messages."""
    opener: Callable[[], contextlib.AbstractContextManager[BinaryIO]]

    def open(self, gzipped: bool) -> contextlib.AbstractContextManager[BinaryIO]:
        return _gunzipped(self) if gzipped else self.opener()


@contextlib.contextmanager
def _gunzipped(found: InputFile) -> Iterator[BinaryIO]:
    with found.opener() as raw, gzip.GzipFile(fileobj=raw, mode="rb") as unpacked:
        yield unpacked  # type: ignore[misc]  # GzipFile is a BinaryIO in all but name


class Output:
    """A destination for .out files: each is written aside and appears whole, or not at all."""

    label: str

    def pending(self, name: str) -> Pending:
        raise NotImplementedError


class Pending:
    """One .out being written: `file` takes its bytes; `commit` publishes it, `discard` drops it."""

    def __init__(self, file: IO[bytes], publish: Callable[[Path], str]) -> None:
        self.file = file
        self._publish = publish

    def commit(self) -> str:
        """Where the .out now is."""
        self.file.close()
        try:
            return self._publish(Path(self.file.name))
        finally:
            Path(self.file.name).unlink(missing_ok=True)

    def discard(self) -> None:
        self.file.close()
        Path(self.file.name).unlink(missing_ok=True)


# ---- local ------------------------------------------------------------------------------------


def local_inputs(path: Path) -> list[InputFile]:
    if path.is_file():
        return [_local(path, path.name)]
    if not path.is_dir():
        raise ConfigError(f"--input {path} is neither a file nor a directory.")
    files = sorted(p for p in path.rglob("*") if p.is_file())
    if not files:
        raise ConfigError(f"--input {path} holds no files to transform.")
    return [_local(p, p.relative_to(path).as_posix()) for p in files]


def _local(path: Path, name: str) -> InputFile:
    return InputFile(name, str(path), lambda: path.open("rb"))


class LocalOutput(Output):
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.label = str(directory)
        directory.mkdir(parents=True, exist_ok=True)
        umask = os.umask(0o022)
        os.umask(umask)
        self._mode = 0o666 & ~umask  # as any file this user writes: temporary files are 0600

    def pending(self, name: str) -> Pending:
        target = self.directory / (name + OUT_SUFFIX)
        target.parent.mkdir(parents=True, exist_ok=True)
        file = tempfile.NamedTemporaryFile(dir=target.parent, prefix=f".{target.name}.", delete=False)  # noqa: SIM115

        def publish(written: Path) -> str:
            written.chmod(self._mode)
            os.replace(written, target)
            return str(target)

        return Pending(file, publish)


def check_apart(input_path: Path, output_dir: Path) -> None:
    """An output inside the input would be read as input by the next run."""
    inside = input_path.resolve() if input_path.is_dir() else None
    if inside is not None and output_dir.resolve().is_relative_to(inside):
        raise ConfigError(
            f"--output {output_dir} is inside --input {input_path}: the next run would read these .out files "
            "as input. Write the output elsewhere."
        )


# ---- S3 ---------------------------------------------------------------------------------------


def connect() -> Aws:
    try:
        from sagehost.aws.session import Aws
    except ModuleNotFoundError as exc:
        if (exc.name or "").split(".")[0] in ("boto3", "botocore"):
            raise StartupError("s3:// input and output go through boto3: pip install 'sagehost[aws]'") from None
        raise
    aws = Aws.connect()
    aws.client("s3")  # made now, on this thread: making a client is not thread-safe in boto3
    return aws


def s3_inputs(aws: Aws, uri: str) -> list[InputFile]:
    from sagehost.aws.errors import AwsNotFound
    from sagehost.aws.spec import s3_uri

    location = s3_uri(uri, "--input")
    base = location.key[: location.key.rfind("/") + 1]  # names keep what follows the prefix's folder
    keys: list[str] = []
    token: dict[str, str] = {}
    while True:
        page = aws.find("s3", "list_objects_v2", Bucket=location.bucket, Prefix=location.key, **token)
        if page is None:
            raise AwsNotFound(f"There is no bucket {location.bucket} for --input {uri}.")
        keys += [str(item["Key"]) for item in page.get("Contents", []) if not str(item["Key"]).endswith("/")]
        if not page.get("IsTruncated"):
            break
        token = {"ContinuationToken": str(page["NextContinuationToken"])}
    if not keys:
        raise ConfigError(f"There is nothing under --input {uri} to transform: upload the input there first.")
    return [_s3(aws, location.bucket, key, key[len(base) :]) for key in sorted(keys)]


def _s3(aws: Aws, bucket: str, key: str, name: str) -> InputFile:
    @contextlib.contextmanager
    def opener() -> Iterator[BinaryIO]:
        # Read to a local file first: the records are read at the pace of the container, and an
        # S3 stream held open for minutes may be cut.
        with tempfile.TemporaryFile() as local:
            _download(aws, bucket, key, local)
            local.seek(0)
            yield local

    return InputFile(name, f"s3://{bucket}/{key}", opener)


def _download(aws: Aws, bucket: str, key: str, into: IO[bytes]) -> None:
    from sagehost.aws.boundary import translated

    found: Any = aws.read("s3", "get_object", Bucket=bucket, Key=key)
    with translated("s3", "GetObject"):
        body = found["Body"]
        shutil.copyfileobj(body, into, _COPY_CHUNK)
        body.close()


class S3Output(Output):
    def __init__(self, aws: Aws, uri: str) -> None:
        from sagehost.aws.spec import s3_uri

        location = s3_uri(uri, "--output")
        self.aws = aws
        self.bucket = location.bucket
        self.prefix = location.key if not location.key or location.key.endswith("/") else location.key + "/"
        self.label = uri

    def pending(self, name: str) -> Pending:
        key = self.prefix + name + OUT_SUFFIX
        file = tempfile.NamedTemporaryFile(prefix="sagehost-out-", delete=False)  # noqa: SIM115

        def publish(written: Path) -> str:
            self.aws.write("s3", "upload_file", Filename=str(written), Bucket=self.bucket, Key=key)
            return f"s3://{self.bucket}/{key}"

        return Pending(file, publish)


def check_s3_apart(input_uri: str, output_uri: str) -> None:
    given, written = input_uri.rstrip("/"), output_uri.rstrip("/")
    if input_uri.startswith("s3://") and (written == given or written.startswith(given + "/")):
        raise ConfigError(
            f"--output {output_uri} is under --input {input_uri}: the next run would read these .out files as "
            "input. Write the output under another prefix."
        )
