"""`sagehost local serve --mode multi-model --model-data DIR|s3://BUCKET/PREFIX/`: a multi-model
endpoint on this machine, SageMaker's side played by the runtime stand-in (sagehost.local.gateway).

The model data is a prefix holding many model.tar.gz; an invocation's TargetModel is a path
under it (`model-a.tar.gz`). On first use the model is fetched, unpacked into
`/opt/ml/models/<name>/model` (a folder of this machine mounted read-only there; without a
container, the folder itself) and loaded with POST /models under an opaque name, as SageMaker
does; when the container answers 507, the least recently used model is unloaded and the load
retried. https://docs.aws.amazon.com/sagemaker/latest/dg/multi-model-endpoints.html
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import secrets
import shutil
import tarfile
import tempfile
from collections.abc import Callable
from pathlib import Path, PurePosixPath

from sagehost.errors import StartupError
from sagehost.image.engine import find_engine
from sagehost.local.gateway import Gateway, ModelsConfig, listen
from sagehost.local.launch import HealthCheckFailed, Launched, free_port, launch_process, start_process, wait_healthy
from sagehost.local.modes import Run, sagemaker_run
from sagehost.local.run import ServeRequest, serve_until_stopped

Say = Callable[[str], None]
MODELS_ROOT = "/opt/ml/models"  # where SageMaker puts a multi-model endpoint's models
_S3_READ_LIMIT = 8 * 1024**3


class ModelStore:
    """Models fetched from `source` (a directory or an s3:// prefix) and unpacked under `root`,
    which the server sees as `seen_as`."""

    def __init__(self, source: str, root: Path, seen_as: str, read_s3: Callable[[str, int], bytes] | None = None):
        self.source = source
        self.root = root
        self.seen_as = seen_as.rstrip("/")
        self._read_s3 = read_s3

    def fetch(self, target: str) -> tuple[str, str]:
        """Unpack the archive `target` names; (its model name, its directory as the server sees it)."""
        key = _key(target)
        name = model_name(target)
        folder = self.root / name / "model"
        shutil.rmtree(self.root / name, ignore_errors=True)
        folder.mkdir(parents=True)
        try:
            with self._open(key) as tar:
                tar.extractall(folder, filter="data")  # refuses absolute paths, .. and device files
        except (tarfile.TarError, OSError) as exc:
            self.discard(target)
            raise StartupError(f"{self._where(key)} could not be unpacked ({exc}): is it a model.tar.gz?") from None
        for path in (self.root / name, folder, *(p for p in folder.rglob("*") if p.is_dir())):
            path.chmod(0o755)  # a container's non-root user reads it
        return name, f"{self.seen_as}/{name}/model"

    def discard(self, target: str) -> None:
        shutil.rmtree(self.root / model_name(target), ignore_errors=True)

    def _open(self, key: str) -> tarfile.TarFile:
        if self.source.startswith("s3://"):
            if self._read_s3 is None:
                raise StartupError("Reading models from S3 needs boto3: pip install 'sagehost[aws]'")
            return tarfile.open(fileobj=io.BytesIO(self._read_s3(self._where(key), _S3_READ_LIMIT)))
        path = Path(self.source) / key
        if not path.is_file():
            raise StartupError(f"there is no {key} in {self.source}")
        return tarfile.open(path)

    def _where(self, key: str) -> str:
        return f"{self.source.rstrip('/')}/{key}"


def model_name(target: str) -> str:
    """The opaque name a TargetModel is loaded as (SageMaker's is a hash too, not the path)."""
    return hashlib.sha256(target.encode()).hexdigest()[:32]


def _key(target: str) -> str:
    parts = PurePosixPath(target).parts
    if not parts or target.startswith("/") or ".." in parts or "\\" in target:
        raise StartupError(f"TargetModel {target[:200]!r} must be a path under the model prefix, like model-a.tar.gz")
    return target


def local_serve_models(request: ServeRequest, source: str, say: Say) -> int:
    """Serve IMAGE (or `sagehost serve`) as a multi-model endpoint until Ctrl-C; the exit code."""
    run = sagemaker_run("multi-model", timeout_s=request.invocation_timeout_s)
    read_s3 = _s3_reader() if source.startswith("s3://") else None
    if read_s3 is None and not Path(source).is_dir():
        raise StartupError(f"--model-data {source} must be a directory or an s3:// prefix holding model.tar.gz files.")
    with listen(request.port) as sock, tempfile.TemporaryDirectory(prefix="sagehost-models-") as tmp:
        root = Path(tmp)
        root.chmod(0o755)
        store = ModelStore(source, root, MODELS_ROOT if request.image else str(root), read_s3)
        launched = _launch(request, run, root)
        try:
            ready_in = wait_healthy(launched, request.startup_timeout_s)
            say(
                f"Ready in {ready_in:.1f} s (multi-model, models from {source}). Invoke one: sagehost invoke --url "
                f"http://127.0.0.1:{sock.getsockname()[1]} FILE --target-model model-a.tar.gz   (Ctrl-C stops it)"
            )
            gateway = Gateway(run.limits, launched.url, models=ModelsConfig(store.fetch, store.discard))
            exited_alone = asyncio.run(serve_until_stopped(gateway, sock, launched, say))
        except HealthCheckFailed as exc:
            launched.stop()
            say(f"{exc}\nLast lines of its log:\n{launched.log_tail()}")
            return 1
        finally:
            seconds, code = launched.stop()
    if exited_alone:
        say(f"The {launched.label} exited on its own (code {code}): SageMaker would replace the instance.")
        return 1
    say(f"Stopped after SIGTERM in {seconds:.1f} s, exit code {code}.")
    return 0 if seconds < 30 else 1


def _launch(request: ServeRequest, run: Run, root: Path) -> Launched:
    port = free_port()
    if request.image is None:
        return launch_process(run, root, port, request.env)
    # As launch_container, with the models' folder where SageMaker puts it instead of /opt/ml/model.
    engine = find_engine(request.builder)
    name = f"sagehost-local-{secrets.token_hex(4)}"
    args = ["run", "--rm", "--name", name, "--network", "bridge", "-p", f"127.0.0.1:{port}:{run.container_port}"]
    args += ["--read-only", "--tmpfs", "/tmp:rw,exec", "-v", f"{root.resolve()}:{MODELS_ROOT}:ro"]
    for key, value in {**run.env, **request.env}.items():
        args += ["-e", f"{key}={value}"]
    launched = start_process(
        engine.command(*args, request.image, "serve"), None, f"http://127.0.0.1:{port}", "container"
    )
    launched.container, launched.engine = name, engine
    return launched


def _s3_reader() -> Callable[[str, int], bytes]:
    try:
        from sagehost.aws.invoke import S3Objects
        from sagehost.aws.session import Aws
    except ModuleNotFoundError as exc:
        if (exc.name or "").split(".")[0] in ("boto3", "botocore"):
            raise StartupError("--model-data s3://… is read with boto3: pip install 'sagehost[aws]'") from None
        raise
    return S3Objects(Aws.connect()).read
