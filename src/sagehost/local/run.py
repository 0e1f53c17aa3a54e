"""`sagehost local serve` and `sagehost local train`: the classic recipe's local-test kit
(serve-local, train-local, a test dir mimicking /opt/ml) as two commands that behave as SageMaker.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from sagehost.config import Settings
from sagehost.errors import StartupError
from sagehost.image.engine import find_engine
from sagehost.local.gateway import AsyncConfig, Gateway, gateway_server, listen
from sagehost.local.launch import (
    HealthCheckFailed,
    Launched,
    free_port,
    launch_container,
    launch_process,
    ping,
    wait_healthy as wait_for_ping,
)
from sagehost.local.modes import STARTUP_DEADLINE_S, Mode, Run, sagemaker_run

Say = Callable[[str], None]
_HEALTH_EVERY_S = 5.0  # SageMaker keeps pinging a container in service


@dataclass(frozen=True)
class ServeRequest:
    image: str | None  # None: --no-container
    model_data: Path | None = None
    port: int = 8080
    mode: Mode = "realtime"
    builder: str | None = None
    env: dict[str, str] = field(default_factory=dict)
    startup_timeout_s: float = STARTUP_DEADLINE_S
    max_payload_mb: int = 6
    batch_strategy: str = "MULTI_RECORD"
    invocation_timeout_s: float | None = None
    async_output: str | None = None  # s3://…: also answer InvokeEndpointAsync, writing answers here
    async_failure: str | None = None


def local_serve(request: ServeRequest, say: Say) -> int:
    run = sagemaker_run(
        request.mode,
        max_payload_mb=request.max_payload_mb,
        batch_strategy=request.batch_strategy,
        timeout_s=request.invocation_timeout_s,
    )
    async_config = _async_config(request)
    # The gateway's socket is bound first: a taken port fails before anything starts.
    with listen(request.port) as sock, model_folder(request.model_data, say) as model_dir:
        launched = _launch(request, run, model_dir)
        try:
            ready_in = wait_for_ping(launched, request.startup_timeout_s)
            say(
                f"Ready in {ready_in:.1f} s ({request.mode}). Invoke it: sagehost invoke --url "
                f"http://127.0.0.1:{sock.getsockname()[1]} FILE --content-type text/csv   (Ctrl-C stops it)"
            )
            if async_config is not None:
                failures = async_config.failure or async_config.output
                say(
                    f"InvokeEndpointAsync too: answers go to {async_config.output}, failures to {failures}. "
                    f"Try: AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME=http://127.0.0.1:{sock.getsockname()[1]} "
                    "sagehost invoke NAME FILE --async"
                )
            gateway = Gateway(run.limits, launched.url, async_config)
            exited_alone = asyncio.run(serve_until_stopped(gateway, sock, launched, say))
        except HealthCheckFailed as exc:
            launched.stop()  # first, so the log's last lines include how it ended
            say(f"{exc}\nLast lines of its log:\n{launched.log_tail()}")
            return 1
        finally:  # also on Ctrl-C while it starts: its own session does not get the signal
            seconds, code = launched.stop()
    if exited_alone:
        say(f"The {launched.label} exited on its own (code {code}): SageMaker would replace the instance.")
        return 1
    say(f"Stopped after SIGTERM in {seconds:.1f} s, exit code {code}.")
    return 0 if seconds < 30 else 1


def _async_config(request: ServeRequest) -> AsyncConfig | None:
    """S3 through sagehost.aws (boto3's usual chain: AWS_PROFILE, AWS_DEFAULT_REGION,
    AWS_ENDPOINT_URL), checked before anything starts."""
    if request.async_output is None:
        if request.async_failure is not None:
            raise StartupError("--async-failure goes with --async-output s3://…")
        return None
    try:
        from sagehost.aws.invoke import S3Objects
        from sagehost.aws.session import Aws
        from sagehost.aws.spec import s3_uri
    except ModuleNotFoundError as exc:
        if (exc.name or "").split(".")[0] in ("boto3", "botocore"):
            raise StartupError("--async-output reads and writes S3 with boto3: pip install 'sagehost[aws]'") from None
        raise
    output = str(s3_uri(request.async_output, "--async-output"))
    failure = None if request.async_failure is None else str(s3_uri(request.async_failure, "--async-failure"))
    objects = S3Objects(Aws.connect())
    return AsyncConfig(output, failure, objects.read, objects.write)


def _launch(request: ServeRequest, run: Run, model_dir: Path | None) -> Launched:
    internal = free_port()
    if request.image is None:
        if model_dir is None:
            raise StartupError("--no-container needs --model-data (a model.tar.gz or a model directory).")
        return launch_process(run, model_dir, internal, request.env)
    return launch_container(
        find_engine(request.builder), request.image, run, model_dir, internal, extra_env=request.env
    )


async def serve_until_stopped(gateway: Gateway, sock: socket.socket, launched: Launched, say: Say) -> bool:
    """The gateway until SIGINT/SIGTERM (False) or the server's own exit (True), pinging the
    server meanwhile as SageMaker does. Either way the gateway drains first."""
    server = gateway_server(gateway)
    serving = asyncio.ensure_future(server.serve(sock))  # it stops on SIGINT/SIGTERM
    exited = asyncio.ensure_future(_watch(launched, say))
    await asyncio.wait({serving, exited}, return_when=asyncio.FIRST_COMPLETED)
    exited_alone = exited.done()
    if exited_alone:
        server.stop()
    else:
        exited.cancel()
    await serving
    return exited_alone


async def _watch(launched: Launched, say: Say) -> None:
    """Returns when the server exits on its own; pings it every few seconds until then."""
    while True:
        await asyncio.sleep(_HEALTH_EVERY_S)
        if launched.process.poll() is not None:
            return
        status = await asyncio.to_thread(ping, launched.url)
        if status != 200:
            say(f"Health check failed (HTTP {status or 'timeout'}): SageMaker would take this instance out.")


@contextmanager
def model_folder(model_data: Path | None, say: Say) -> Iterator[Path | None]:
    """The folder SageMaker would mount at /opt/ml/model: model.tar.gz unpacked, or the folder given."""
    if model_data is None:
        yield None
        return
    if model_data.is_dir():
        _warn_unservable(model_data, say)
        yield model_data
        return
    if not tarfile.is_tarfile(model_data):
        raise StartupError(f"{model_data} is neither a directory nor a model.tar.gz.")
    unpacked = Path(tempfile.mkdtemp(prefix="sagehost-model-"))
    try:
        with tarfile.open(model_data) as tar:
            tar.extractall(unpacked, filter="data")
        unpacked.chmod(0o755)  # mkdtemp's 0700 would hide it from a container's non-root user
        _warn_unservable(unpacked, say)
        yield unpacked
    finally:
        shutil.rmtree(unpacked, ignore_errors=True)


def _warn_unservable(model_dir: Path, say: Say) -> None:
    from sagehost.models import describe

    try:
        say(f"/opt/ml/model holds {describe(model_dir, Settings())}")
    except StartupError as exc:
        say(f"Warning: a sagehost image would not find a model here: {exc}")


# ---- train ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrainRequest:
    image: str | None  # None: --no-container
    data: Path
    output: Path = Path("model.tar.gz")
    channel: str = "training"
    hyperparameters: dict[str, str] = field(default_factory=dict)
    builder: str | None = None


def local_train(request: TrainRequest, say: Say) -> int:
    """`IMAGE train` over a local /opt/ml tree; the model it leaves, as SageMaker's model.tar.gz."""
    # The container may write as root: files a non-root host user cannot remove are left to the OS.
    with tempfile.TemporaryDirectory(prefix="sagehost-train-", ignore_cleanup_errors=True) as tmp:
        base = Path(tmp)
        _training_tree(base, request)
        code = _run_training(base, request)
        failure = base / "output" / "failure"
        if code != 0:
            reason = failure.read_text() if failure.is_file() else "(no /opt/ml/output/failure written)"
            say(f"Training failed (exit {code}); FailureReason: {reason}")
            return code or 1
        request.output.parent.mkdir(parents=True, exist_ok=True)
        with tarfile.open(request.output, "w:gz") as tar:
            for path in sorted((base / "model").rglob("*")):
                tar.add(path, arcname=str(path.relative_to(base / "model")), recursive=False)
    say(f"Training completed: {request.output} (serve it: sagehost local serve IMAGE --model-data {request.output})")
    return 0


def _training_tree(base: Path, request: TrainRequest) -> None:
    """/opt/ml/input/config/*.json as SageMaker writes them (hyperparameter values are strings)."""
    config = base / "input" / "config"
    config.mkdir(parents=True)
    for sub in ("model", "output"):
        (base / sub).mkdir()
        (base / sub).chmod(0o777)  # the image's user, root or not, writes here
    hyper = {k: str(v) for k, v in request.hyperparameters.items()}
    channels = {request.channel: {"TrainingInputMode": "File", "S3DistributionType": "FullyReplicated"}}
    resources = {"current_host": "algo-1", "hosts": ["algo-1"], "network_interface_name": "eth0"}
    for name, content in (("hyperparameters", hyper), ("inputdataconfig", channels), ("resourceconfig", resources)):
        (config / f"{name}.json").write_text(json.dumps(content))


def _run_training(base: Path, request: TrainRequest) -> int:
    job = f"local-{secrets.token_hex(4)}"
    if request.image is None:
        data = base / "input" / "data" / request.channel
        shutil.copytree(request.data, data)
        env = {**os.environ, "SAGEMAKER_BASE_DIR": str(base), "TRAINING_JOB_NAME": job}
        return subprocess.run([sys.executable, "-m", "sagehost", "train"], env=env, check=False).returncode
    engine = find_engine(request.builder)
    mounts = [
        f"{request.data.resolve()}:/opt/ml/input/data/{request.channel}:ro",
        f"{base / 'input' / 'config'}:/opt/ml/input/config:ro",
        f"{base / 'model'}:/opt/ml/model",
        f"{base / 'output'}:/opt/ml/output",
    ]
    args = ["run", "--rm", "--name", f"sagehost-{job}", "--network", "bridge", "-e", f"TRAINING_JOB_NAME={job}"]
    for mount in mounts:
        args += ["-v", mount]
    return subprocess.run(engine.command(*args, request.image, "train"), check=False).returncode
