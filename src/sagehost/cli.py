"""The `sagehost` command, and the `serve` / `train` executables SageMaker runs in an image."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from sagehost import contract
from sagehost.config import FLAVORS, METHODS, Settings, thread_limits
from sagehost.errors import ConfigError
from sagehost.image.engine import ENGINES
from sagehost.image.plan import DEFAULT_BASE_IMAGE, DEFAULT_PLATFORM
from sagehost.local.modes import MODES, STARTUP_DEADLINE_S


def _settings(**flags: Any) -> Settings:
    try:
        return Settings.from_environ(overrides=flags)
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from None


def _logging(level: str) -> None:
    logging.basicConfig(
        level=level,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s [%(process)d] %(name)s: %(message)s",
        force=True,
    )


def _listening(workers: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """The options every server command shares: where it listens and how many workers answer."""
    return lambda command: _with_listening(command, workers)


def _with_listening(command: Callable[..., Any], workers: str) -> Callable[..., Any]:
    for option in reversed(
        (
            click.option("--host", help=f"Address to bind [SAGEHOST_HOST; {contract.DEFAULT_HOST}]."),
            click.option("--port", type=int, help="Port [SAGEHOST_PORT; 8080]. SAGEMAKER_BIND_TO_PORT wins when set."),
            click.option("--workers", type=click.IntRange(min=1), help=f"Worker processes [{workers}]."),
        )
    ):
        command = option(command)
    return command


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="sagehost")
def main() -> None:
    """Serve any trained model behind the Amazon SageMaker hosting contract."""


@main.command()
@click.option("--model-dir", type=click.Path(path_type=Path), help="Model directory [SM_MODEL_DIR; /opt/ml/model].")
@click.option(
    "--flavor", type=click.Choice(FLAVORS), help="Model format, when the dir holds several [SAGEHOST_FLAVOR]."
)
@_listening("SAGEMAKER_MODEL_SERVER_WORKERS; CPUs")
@click.option("--timeout", "timeout_s", type=float, help="Prediction timeout, s [SAGEMAKER_MODEL_SERVER_TIMEOUT; 60].")
@click.option("--max-payload-mb", type=click.IntRange(min=1), help="Body limit, MB [SAGEMAKER_MAX_PAYLOAD_IN_MB; 6].")
@click.option("--default-accept", help="Answer type for */* [SAGEMAKER_DEFAULT_INVOCATIONS_ACCEPT].")
@click.option("--default-method", type=click.Choice(METHODS), help="[SAGEHOST_DEFAULT_METHOD; the model's own].")
@click.option("--target-name", help="Label prefix for named probabilities [SAGEHOST_TARGET_NAME].")
@click.option("--max-batch-rows", type=click.IntRange(min=1), help="Rows per model call [SAGEHOST_MAX_BATCH_ROWS; 64].")
@click.option("--max-batch-wait-ms", type=click.FloatRange(min=0), help="[SAGEHOST_MAX_BATCH_WAIT_MS; 0].")
@click.option("--max-queue", type=click.IntRange(min=1), help="Waiting requests per worker [SAGEHOST_MAX_QUEUE].")
@click.option("--inline-below-us", type=click.FloatRange(min=0), help="[SAGEHOST_INLINE_BELOW_US; 100].")
@click.option("--preload/--no-preload", default=None, help="Load before forking [SAGEHOST_PRELOAD; auto].")
@click.option("--fast-path/--no-fast-path", default=None, help="Lean tree/linear paths [SAGEHOST_FAST_PATH; on].")
@click.option("--log-level", help="[SAGEHOST_LOG_LEVEL / SAGEMAKER_CONTAINER_LOG_LEVEL; INFO].")
def serve(max_payload_mb: int | None, **flags: Any) -> None:
    """Serve GET /ping and POST /invocations (SageMaker's contract) on :8080."""
    if max_payload_mb is not None:
        flags["max_payload_bytes"] = max_payload_mb * contract.MIB
    settings = _settings(**flags)
    _logging(settings.log_level)
    os.environ.update(thread_limits(settings))  # before numpy loads in the server's imports
    if settings.upstream:  # an image's `serve` becomes a proxy when SAGEHOST_UPSTREAM says so
        from sagehost.proxy.run import proxy as run_proxy

        if flags.get("workers") is None:
            settings = settings.replace(workers=int(os.environ.get("SAGEHOST_WORKERS", "1")))
        sys.exit(run_proxy(settings))
    from sagehost.server import serve as run

    sys.exit(run(settings))


@main.command()
@click.option("--upstream", help="The scoring server's URL, e.g. http://127.0.0.1:9090/score [SAGEHOST_UPSTREAM].")
@click.option("--upstream-cmd", help="Command that starts it; sagehost supervises it [SAGEHOST_UPSTREAM_CMD].")
@click.option("--upstream-health", help="Its health path; else a TCP connect [SAGEHOST_UPSTREAM_HEALTH].")
@click.option("--adapter", type=click.Choice(["scr", "h2o", "none"]), help="Payload translation [SAGEHOST_ADAPTER].")
@click.option("--adapter-request", help="module:function for request bodies [SAGEHOST_ADAPTER_REQUEST].")
@click.option("--adapter-response", help="module:function for response bodies [SAGEHOST_ADAPTER_RESPONSE].")
@click.option("--upstream-columns", help="Names for headerless rows, a,b,c [SAGEHOST_UPSTREAM_COLUMNS].")
@click.option("--upstream-scratch", type=click.Path(path_type=Path), help="Its temp dir [SAGEHOST_UPSTREAM_SCRATCH].")
@click.option(
    "--upstream-max-connection-age",
    type=click.FloatRange(min=0),
    help="Seconds before a pooled connection is replaced; 0 never [SAGEHOST_UPSTREAM_MAX_CONNECTION_AGE; 1].",
)
@click.option(
    "--yield-cpu/--no-yield-cpu",
    default=None,
    help="Workers yield the CPU to the scoring server, Linux SCHED_BATCH [SAGEHOST_YIELD_CPU; on].",
)
@_listening("SAGEHOST_WORKERS; 1")
@click.option("--timeout", "timeout_s", type=float, help="Upstream timeout, s [SAGEMAKER_MODEL_SERVER_TIMEOUT; 60].")
@click.option("--max-payload-mb", type=click.IntRange(min=1), help="Body limit, MB [SAGEMAKER_MAX_PAYLOAD_IN_MB; 6].")
@click.option("--log-level", help="[SAGEHOST_LOG_LEVEL / SAGEMAKER_CONTAINER_LOG_LEVEL; INFO].")
def proxy(max_payload_mb: int | None, upstream_columns: str | None, **flags: Any) -> None:
    """The SageMaker contract in front of an external scoring server (started and supervised)."""
    if max_payload_mb is not None:
        flags["max_payload_bytes"] = max_payload_mb * contract.MIB
    if upstream_columns is not None:
        flags["upstream_columns"] = tuple(c.strip() for c in upstream_columns.split(",") if c.strip())
    if flags.get("workers") is None:
        # One event loop forwards thousands of requests a second; more workers would only take CPU
        # from the scoring server beside us (bench/README.md: beside MLflow, one kept 95% of its
        # direct requests/s and two 77%).
        flags["workers"] = int(os.environ.get("SAGEHOST_WORKERS", "1"))
    settings = _settings(**flags)
    _logging(settings.log_level)
    from sagehost.proxy.run import proxy as run

    sys.exit(run(settings))


@main.command()
@click.option("--source", type=click.Path(path_type=Path), help="A model baked into the image, instead of a channel.")
@click.option("--channel", help="Input channel holding the model [SAGEHOST_CHANNEL; training].")
def train(source: Path | None, channel: str | None) -> None:
    """Copy a pre-trained model into /opt/ml/model (SageMaker's `train`)."""
    settings = _settings(channel=channel)
    _logging(settings.log_level)
    from sagehost.train import train as run

    sys.exit(run(settings, source))


@main.command()
@click.argument("model_dir", type=click.Path(path_type=Path, exists=True, file_okay=False))
@click.option("-o", "--output", type=click.Path(path_type=Path), default=Path("model.tar.gz"), show_default=True)
@click.option("--flavor", type=click.Choice(FLAVORS), help="Model format, when the dir holds several.")
def package(model_dir: Path, output: Path, flavor: str | None) -> None:
    """Write MODEL_DIR as a model.tar.gz SageMaker unpacks correctly (files at the root)."""
    from sagehost.errors import StartupError
    from sagehost.package import package as write

    try:
        click.echo(write(model_dir, output, _settings(flavor=flavor)))
    except StartupError as exc:
        raise click.ClickException(str(exc)) from None


@main.command()
@click.argument("model_dir", required=False, type=click.Path(path_type=Path, exists=True, file_okay=False))
@click.option("-t", "--tag", required=True, help="Image name, e.g. my-model:1.")
@click.option("--base-image", default=DEFAULT_BASE_IMAGE, show_default=True, help="Must have python3 with venv.")
@click.option("--builder", type=click.Choice(ENGINES), help="[docker if its daemon answers, else podman].")
@click.option("--platform", "target_platform", default=DEFAULT_PLATFORM, show_default=True)
@click.option("--extra", "extras", multiple=True, help="More sagehost extras (xgboost, onnx …); repeatable.")
@click.option(
    "--requirements", type=click.Path(path_type=Path, exists=True, dir_okay=False), help="[code/requirements.txt]."
)
@click.option("--context", type=click.Path(path_type=Path), default=Path("sagehost-build"), show_default=True)
@click.option("--flavor", type=click.Choice(FLAVORS), help="Model format, when the dir holds several.")
@click.option("--dockerfile-only", is_flag=True, help="Write the context and Dockerfile; do not build.")
def build(model_dir: Path | None, tag: str, target_platform: str, dockerfile_only: bool, **options: Any) -> None:
    """Build an image SageMaker accepts; MODEL_DIR is baked in, else model.tar.gz comes at run time."""
    from sagehost.errors import StartupError
    from sagehost.image.build import BuildRequest, build as run

    settings = _settings(flavor=options.pop("flavor"))
    options["extras"] = tuple(options["extras"])
    request = BuildRequest(tag, model_dir, platform=target_platform, render_only=dockerfile_only, **options)
    try:
        run(request, settings, lambda line: click.echo(line, err=True))
    except StartupError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(tag)


@main.command()
@click.argument("payload", type=click.Path(path_type=Path, exists=True, dir_okay=False))
@click.option("--url", default="http://127.0.0.1:8080", show_default=True, help="A running server.")
@click.option("--content-type", "-t", default="text/csv", show_default=True)
@click.option("--accept", "-a", help="Answer type (default: the server's).")
@click.option("--custom-attributes", help="X-Amzn-SageMaker-Custom-Attributes, e.g. method=predict_proba.")
def invoke(payload: Path, url: str, content_type: str, accept: str | None, custom_attributes: str | None) -> None:
    """POST a payload file to /invocations and print the answer (errors on stderr, exit 1)."""
    from sagehost.invoke import invoke as send

    try:
        answer = send(url, payload, content_type, accept=accept, custom_attributes=custom_attributes)
    except OSError as exc:
        raise click.ClickException(f"{url} is not reachable: {exc}") from None
    text = answer.body.decode("utf-8", errors="replace")
    if not answer.ok:
        click.echo(f"HTTP {answer.status}: {text}", err=True)
        sys.exit(1)
    click.echo(text if text.endswith("\n") else text + "\n", nl=False)


@main.command()
@click.argument("target", metavar="URL|IMAGE")
@click.option(
    "--payload",
    "payloads",
    multiple=True,
    type=(click.Path(path_type=Path, exists=True, dir_okay=False), str),
    metavar="FILE CONTENT_TYPE",
    help="A valid request and its Content-Type; repeat for each type you support.",
)
@click.option("--model-data", type=click.Path(path_type=Path, exists=True), help="IMAGE: model.tar.gz or dir.")
@click.option("--builder", type=click.Choice(ENGINES), help="IMAGE: the container engine.")
def verify(target: str, payloads: tuple[tuple[Path, str], ...], model_data: Path | None, builder: str | None) -> None:
    """Check a running server (URL) or an image against SageMaker's hosting contract; exit 1 on failure."""
    from sagehost.errors import StartupError
    from sagehost.verify import report, verify_url

    if target.startswith(("http://", "https://")):
        checks = verify_url(target, list(payloads))
    else:
        from sagehost.verify_image import verify_image

        try:
            checks = verify_image(target, list(payloads), model_data, builder)
        except StartupError as exc:
            port_like = target.rsplit(":", maxsplit=1)[-1].isdigit()
            hint = f" To check a running server, give its URL: http://{target}" if port_like else ""
            raise click.ClickException(str(exc) + hint) from None
    click.echo(report(checks))
    sys.exit(0 if all(c.passed for c in checks) else 1)


@main.group()
def local() -> None:
    """Run an image (or, with --no-container, `serve` itself) as SageMaker would, on this machine."""


def _env_pairs(pairs: tuple[str, ...]) -> dict[str, str]:
    if bad := [p for p in pairs if "=" not in p]:
        raise click.UsageError(f"-e takes KEY=VALUE, not {bad[0]!r}.")
    return dict(p.split("=", 1) for p in pairs)


def _run_local(run: Callable[[Any, Callable[[str], None]], int], request: Any) -> None:
    from sagehost.errors import StartupError

    _logging("INFO")
    try:
        sys.exit(run(request, lambda line: click.echo(line, err=True)))
    except StartupError as exc:
        raise click.ClickException(str(exc)) from None


@local.command("serve")
@click.argument("image", required=False)
@click.option("--model-data", type=click.Path(path_type=Path, exists=True), help="model.tar.gz or a model dir.")
@click.option("--port", type=int, default=8080, show_default=True, help="Where the local endpoint answers.")
@click.option("--mode", type=click.Choice(MODES), default="realtime", show_default=True)
@click.option("--no-container", is_flag=True, help="Run `sagehost serve` directly, with the same env and checks.")
@click.option("--builder", type=click.Choice(ENGINES), help="[docker if its daemon answers, else podman].")
@click.option("-e", "--env", "env_pairs", multiple=True, metavar="KEY=VALUE", help="Container environment.")
@click.option("--startup-timeout", type=float, default=STARTUP_DEADLINE_S, show_default=True, help="Seconds to 200.")
@click.option("--max-payload-mb", type=click.IntRange(1, 100), default=6, show_default=True, help="Batch mode's.")
@click.option("--batch-strategy", type=click.Choice(contract.BATCH_STRATEGIES), default="MULTI_RECORD")
@click.option("--invocation-timeout", "invocation_timeout_s", type=float, help="Seconds [60; batch 600].")
def local_serve(
    image: str | None, no_container: bool, env_pairs: tuple[str, ...], startup_timeout: float, **options: Any
) -> None:
    """Serve IMAGE as an endpoint would: read-only model, SageMaker's env, limits and errors."""
    from sagehost.local.run import ServeRequest, local_serve

    if image is None and not no_container:
        raise click.UsageError("Give an IMAGE, or --no-container to run `sagehost serve` directly.")
    env = _env_pairs(env_pairs)
    request = ServeRequest(None if no_container else image, env=env, startup_timeout_s=startup_timeout, **options)
    _run_local(local_serve, request)


@local.command("train")
@click.argument("image", required=False)
@click.option("--data", type=click.Path(path_type=Path, exists=True, file_okay=False), required=True)
@click.option("--channel", default="training", show_default=True)
@click.option("-H", "--hyperparameter", "hyper", multiple=True, metavar="KEY=VALUE")
@click.option("-o", "--output", type=click.Path(path_type=Path), default=Path("model.tar.gz"), show_default=True)
@click.option("--no-container", is_flag=True, help="Run `sagehost train` directly over a local /opt/ml tree.")
@click.option("--builder", type=click.Choice(ENGINES))
def local_train(image: str | None, no_container: bool, hyper: tuple[str, ...], **options: Any) -> None:
    """Run IMAGE's `train` over a local /opt/ml tree; write the model it leaves as model.tar.gz."""
    from sagehost.local.run import TrainRequest, local_train

    if image is None and not no_container:
        raise click.UsageError("Give an IMAGE, or --no-container to run `sagehost train` directly.")
    _run_local(local_train, TrainRequest(None if no_container else image, hyperparameters=_env_pairs(hyper), **options))


def serve_entry() -> None:
    """`serve` on PATH: SageMaker starts images as `docker run IMAGE serve`."""
    main(["serve", *sys.argv[1:]], prog_name="sagehost")


def train_entry() -> None:
    main(["train", *sys.argv[1:]], prog_name="sagehost")
