"""The `sagehost` command, and the `serve` / `train` executables SageMaker runs in an image."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import click

from sagehost import contract
from sagehost.aws.cli import _aws_options, _reported, attach as _attach_aws
from sagehost.config import BY_FLAG, Settings, Source, thread_limits
from sagehost.errors import ConfigError
from sagehost.image.engine import ENGINES
from sagehost.image.plan import DEFAULT_BASE_IMAGE, DEFAULT_PLATFORM
from sagehost.local.modes import MODES, STARTUP_DEADLINE_S

Decorator = Callable[[Callable[..., Any]], Callable[..., Any]]

# `sagehost proxy`'s own default: one event loop forwards thousands of requests a second; more
# workers would only take CPU from the scoring server beside us (bench/README.md: beside MLflow,
# one kept 95% of its direct requests/s and two 77%).
PROXY_DEFAULTS: Mapping[str, Any] = {"workers": 1}

LISTENING = ("--host", "--port", "--workers")
"""Where every server command listens and how many workers answer."""
HTTP_LIMITS = ("--max-header-kb", "--header-timeout", "--body-timeout", "--min-body-rate-kb", "--keep-alive-timeout")
"""What one connection may cost, for `serve` and `proxy` alike."""


def _environ() -> Mapping[str, str] | None:
    """The environment a command reads: the root context's `obj` when it is a mapping (tests pass
    one: `main(args, obj={...})`), else the process's own, read by config.py."""
    context = click.get_current_context(silent=True)
    obj = context.find_root().obj if context is not None else None
    return obj if isinstance(obj, Mapping) else None


def _settings(params: Mapping[str, Any], defaults: Mapping[str, Any] | None = None) -> Settings:
    """Settings from a command's flags, each still the text typed (a switch: True or False), read
    by config.py's parser for it, the same one its environment twin goes through."""
    flags = {field: _flag_text(value) for field, value in params.items()}
    try:
        return Settings.from_environ(_environ(), flags, defaults)
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from None


def _flag_text(value: object) -> str | None:
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    raise TypeError(f"a setting's flag gave {value!r}; settings flags are text")


def _flags(*names: str, defaults: Mapping[str, Any] | None = None) -> Decorator:
    """Click options for the settings these flags set, generated from config.SOURCES: each takes
    text, which `_settings` hands to the setting's one parser. `defaults`: the command's own."""

    def decorate(command: Callable[..., Any]) -> Callable[..., Any]:
        for name in reversed(names):  # click lists options in the order their decorators read
            command = _option(BY_FLAG[name], defaults or {})(command)
        return command

    return decorate


def _option(source: Source, defaults: Mapping[str, Any]) -> Decorator:
    assert source.flag is not None
    own = source.field in defaults
    names = [n for n in source.env if n.startswith("SAGEHOST_")] if own else list(source.env)
    default = str(defaults[source.field]) if own else source.default
    text = f"{source.help} [{', '.join(names)}; {default}]"
    if "/" in source.flag:
        return click.option(source.flag, source.field, default=None, help=text)
    return click.option(source.flag, source.field, metavar=source.metavar, help=text)


def _logging(level: str) -> None:
    logging.basicConfig(
        level=level,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s [%(process)d] %(name)s: %(message)s",
        force=True,
    )


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="sagehost")
def main() -> None:
    """Serve any trained model behind the Amazon SageMaker hosting contract."""


SERVE_FLAGS = (
    "--model-dir",
    "--flavor",
    *LISTENING,
    "--timeout",
    "--max-payload-mb",
    "--default-accept",
    "--default-method",
    "--target-name",
    "--max-batch-rows",
    "--max-batch-wait-ms",
    "--max-queue",
    "--inline-below-us",
    "--preload/--no-preload",
    "--fast-path/--no-fast-path",
    "--compiled-trees/--no-compiled-trees",
    "--multi-model/--no-multi-model",
    "--model-memory-mb",
    "--log-level",
    *HTTP_LIMITS,
)
PROXY_FLAGS = (
    "--upstream",
    "--upstream-cmd",
    "--upstream-health",
    "--adapter",
    "--adapter-request",
    "--adapter-response",
    "--upstream-columns",
    "--upstream-max-body-mb",
    "--upstream-scratch",
    "--upstream-max-connection-age",
    "--yield-cpu/--no-yield-cpu",
    *LISTENING,
    "--timeout",
    "--max-payload-mb",
    "--log-level",
    *HTTP_LIMITS,
)


@main.command()
@_flags(*SERVE_FLAGS)
def serve(**params: Any) -> None:
    """Serve GET /ping and POST /invocations (SageMaker's contract) on :8080."""
    settings = serve_settings(params)
    _logging(settings.log_level)
    os.environ.update(thread_limits(settings))  # a write, for numeric libraries: before numpy loads
    if settings.upstream:  # an image's `serve` becomes a proxy when SAGEHOST_UPSTREAM says so
        from sagehost.proxy.run import proxy as run_proxy

        sys.exit(run_proxy(settings))
    from sagehost.server import serve as run

    _exit_at_once(run(settings))


def _exit_at_once(code: int) -> None:
    """Leave without Python's teardown once the server has drained: a model runtime's own teardown
    at exit (a JVM's DestroyJavaVM, say) could hang or abort after a clean drain. Forked workers
    leave this way already."""
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def serve_settings(params: Mapping[str, Any]) -> Settings:
    """`serve`'s settings; with an upstream set it runs the proxy, with the proxy's defaults."""
    as_proxy = proxy_settings(params)  # first, as those read fewer names: see PROXY_DEFAULTS
    return as_proxy if as_proxy.upstream else _settings(params)


@main.command()
@_flags(*PROXY_FLAGS, defaults=PROXY_DEFAULTS)
def proxy(**params: Any) -> None:
    """The SageMaker contract in front of an external scoring server (started and supervised)."""
    settings = proxy_settings(params)
    _logging(settings.log_level)
    from sagehost.proxy.run import proxy as run

    sys.exit(run(settings))


def proxy_settings(params: Mapping[str, Any]) -> Settings:
    return _settings(params, PROXY_DEFAULTS)


@main.command()
@click.option("--source", type=click.Path(path_type=Path), help="A model baked into the image, instead of a channel.")
@_flags("--channel")
def train(source: Path | None, **params: Any) -> None:
    """Copy a pre-trained model into /opt/ml/model (SageMaker's `train`)."""
    settings = _settings(params)
    _logging(settings.log_level)
    from sagehost.train import train as run

    sys.exit(run(settings, source))


@main.command()
@click.argument("model_dir", type=click.Path(path_type=Path, exists=True, file_okay=False))
@click.option("-o", "--output", type=click.Path(path_type=Path), default=Path("model.tar.gz"), show_default=True)
@_flags("--flavor")
def package(model_dir: Path, output: Path, flavor: str | None) -> None:
    """Write MODEL_DIR as a model.tar.gz SageMaker unpacks correctly (files at the root)."""
    from sagehost.errors import StartupError
    from sagehost.package import package as write

    try:
        click.echo(write(model_dir, output, _settings({"flavor": flavor})))
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
@_flags("--flavor", "--multi-model/--no-multi-model")
@click.option("--dockerfile-only", is_flag=True, help="Write the context and Dockerfile; do not build.")
def build(model_dir: Path | None, tag: str, target_platform: str, dockerfile_only: bool, **options: Any) -> None:
    """Build an image SageMaker accepts; MODEL_DIR is baked in, else model.tar.gz comes at run time."""
    from sagehost.errors import StartupError
    from sagehost.image.build import BuildRequest, build as run

    settings = _settings({"flavor": options.pop("flavor"), "multi_model": options.pop("multi_model")})
    options["extras"] = tuple(options["extras"])
    options["multi_model"] = settings.multi_model
    request = BuildRequest(tag, model_dir, platform=target_platform, render_only=dockerfile_only, **options)
    try:
        run(request, settings, lambda line: click.echo(line, err=True))
    except StartupError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(tag)


@main.command()
@click.argument("target", metavar="NAME [FILE|-]")
@click.argument("payload", required=False, metavar="")
@click.option("--url", help="A running server (serve, local serve) instead of an endpoint: --url URL FILE.")
@click.option("--content-type", "-t", default="text/csv", show_default=True)
@click.option("--accept", "-a", help="Answer type (default: the server's).")
@click.option("--custom-attributes", help="X-Amzn-SageMaker-Custom-Attributes, e.g. method=predict_proba.")
@click.option("--target-model", help="On a multi-model endpoint: which model (its path under the model prefix).")
@click.option("--async", "asynchronous", is_flag=True, help="Through S3 and InvokeEndpointAsync; print the answer.")
@click.option("--wait", "wait_s", type=click.FloatRange(0), metavar="S", help="--async: seconds to wait [900; 0: no].")
@click.option("--bucket", help="--async: for the payload [sagemaker-REGION-ACCOUNT, made if missing].")
@_aws_options
@_reported
def invoke(**params: Any) -> None:
    """Send FILE (or stdin) to endpoint NAME, or with --url to a running server; print the answer.

    A model's error shows its status and message on stderr (exit 1)."""
    from sagehost.invoke import Command, run

    run(Command(**params))


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


def _model_data(context: click.Context, param: click.Parameter, value: str | None) -> Path | str | None:
    """A local path, which must exist, or an s3:// prefix (multi-model mode)."""
    if value is None or value.startswith("s3://"):
        return value
    if not Path(value).exists():
        raise click.BadParameter(f"{value} does not exist.")
    return Path(value)


@local.command("serve")
@click.argument("image", required=False)
@click.option("--model-data", callback=_model_data, help="model.tar.gz or model dir; multi-model: dir or s3:// prefix.")
@click.option("--port", type=int, default=8080, show_default=True, help="Where the local endpoint answers.")
@click.option("--mode", type=click.Choice(MODES), default="realtime", show_default=True)
@click.option("--no-container", is_flag=True, help="Run `sagehost serve` directly, with the same env and checks.")
@click.option("--builder", type=click.Choice(ENGINES), help="[docker if its daemon answers, else podman].")
@click.option("-e", "--env", "env_pairs", multiple=True, metavar="KEY=VALUE", help="Container environment.")
@click.option("--startup-timeout", type=float, default=STARTUP_DEADLINE_S, show_default=True, help="Seconds to 200.")
@click.option("--max-payload-mb", type=click.IntRange(1, 100), default=6, show_default=True, help="Batch mode's.")
@click.option("--batch-strategy", type=click.Choice(contract.BATCH_STRATEGIES), default="MULTI_RECORD")
@click.option("--invocation-timeout", "invocation_timeout_s", type=float, help="Seconds [60; batch 600].")
@click.option("--async-output", metavar="S3_URI", help="Also answer InvokeEndpointAsync, writing answers here.")
@click.option("--async-failure", metavar="S3_URI", help="Where failed async invocations go [beside the answers].")
def local_serve(
    image: str | None, no_container: bool, env_pairs: tuple[str, ...], startup_timeout: float, **options: Any
) -> None:
    """Serve IMAGE as an endpoint would: read-only model, SageMaker's env, limits and errors."""
    from sagehost.local.run import ServeRequest, local_serve

    if image is None and not no_container:
        raise click.UsageError("Give an IMAGE, or --no-container to run `sagehost serve` directly.")
    env = _env_pairs(env_pairs)
    if options["mode"] == "multi-model":
        from sagehost.local.multimodel import local_serve_models

        source = options.pop("model_data")
        if source is None:
            raise click.UsageError("--mode multi-model needs --model-data DIR|s3://BUCKET/PREFIX/ (of model.tar.gz).")
        request = ServeRequest(None if no_container else image, env=env, startup_timeout_s=startup_timeout, **options)
        _run_local(lambda request, say: local_serve_models(request, str(source), say), request)
        return
    if isinstance(options["model_data"], str):
        raise click.UsageError("--model-data s3://… goes with --mode multi-model; give a model.tar.gz or a directory.")
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


@local.command("transform")
@click.argument("image", required=False)
@click.option("--model-data", type=click.Path(path_type=Path, exists=True), help="model.tar.gz or a model dir.")
@click.option("--input", "input_", required=True, metavar="FILE|DIR|S3_URI", help="Every file under it is one input.")
@click.option("--output", required=True, metavar="DIR|S3_URI", help="Where each input's <name>.out goes.")
@click.option("--content-type", help="The input's media type, sent with each request (e.g. text/csv).")
@click.option("--accept", help="The answers' media type (e.g. text/csv, application/jsonlines) [the server's].")
@click.option(
    "--split-type",
    type=click.Choice(("None", "Line", "RecordIO")),
    default="None",
    show_default=True,
    help="Records: a whole file a request, a line, or a RecordIO frame.",
)
@click.option("--strategy", type=click.Choice(("MultiRecord", "SingleRecord")), help="[the container's, else Multi].")
@click.option("--max-payload-mb", type=click.IntRange(0, 100), help="Per request, 0-100; 0 streams [container's, 6].")
@click.option("--concurrency", type=click.IntRange(0), help="Requests in flight [the container's, else 1].")
@click.option(
    "--assemble-with",
    type=click.Choice(("None", "Line")),
    default="None",
    show_default=True,
    help="Line: each record's answer on its own line; None: the answers back to back.",
)
@click.option("--input-filter", metavar="JSONPATH", help="The part of each record sent, e.g. $[1:] (CSV), $.features.")
@click.option("--output-filter", metavar="JSONPATH", help="The part kept of each (joined) record, e.g. $[0,-1].")
@click.option(
    "--join-source",
    type=click.Choice(("None", "Input")),
    default="None",
    show_default=True,
    help="Input: each answer beside its input record.",
)
@click.option("--gzip", is_flag=True, help="The input files are gzip-compressed (CompressionType Gzip).")
@click.option("--retries", type=click.IntRange(0, 3), default=3, show_default=True, help="InvocationsMaxRetries.")
@click.option(
    "--invocation-timeout",
    "invocation_timeout_s",
    type=click.IntRange(1, 3600),
    default=600,
    show_default=True,
    help="Seconds per request (InvocationsTimeoutInSeconds).",
)
@click.option("--no-container", is_flag=True, help="Run `sagehost serve` directly, with the same env and checks.")
@click.option("--url", metavar="http://HOST:PORT", help="Send the job to a server already running there (starts none).")
@click.option("--builder", type=click.Choice(ENGINES), help="[docker if its daemon answers, else podman].")
@click.option("-e", "--env", "env_pairs", multiple=True, metavar="KEY=VALUE", help="Container environment.")
@click.option("--startup-timeout", type=float, default=STARTUP_DEADLINE_S, show_default=True, help="Seconds to 200.")
def local_transform(
    image: str | None,
    no_container: bool,
    env_pairs: tuple[str, ...],
    input_: str,
    startup_timeout: float,
    **options: Any,
) -> None:
    """A Batch Transform job over --input, as SageMaker runs it: <name>.out per file under --output."""
    from sagehost.local.transform import TransformRequest, local_transform

    if options.get("url") is None and (image is None) == (not no_container):
        raise click.UsageError(
            "Give an IMAGE, or --no-container to run `sagehost serve` directly (not both), "
            "or --url of a server already running."
        )
    request = TransformRequest(
        None if no_container else image,
        input_,
        env=_env_pairs(env_pairs),
        startup_timeout_s=startup_timeout,
        **options,
    )
    _run_local(local_transform, request)


# The cloud half: push, deploy, endpoints, logs, delete, transform, gateway (boto3 only in sagehost.aws).
_attach_aws(main)


def serve_entry() -> None:
    """`serve` on PATH: SageMaker starts images as `docker run IMAGE serve`."""
    main(["serve", *sys.argv[1:]], prog_name="sagehost")


def train_entry() -> None:
    main(["train", *sys.argv[1:]], prog_name="sagehost")
