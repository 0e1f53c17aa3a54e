"""`sagehost local transform`: a Batch Transform job, run here as SageMaker runs it.

The container (or `sagehost serve`, with --no-container) starts as SageMaker starts it for a
transform job: `serve`, the model at /opt/ml/model, `SAGEMAKER_BATCH=true`, and of
SAGEMAKER_MAX_PAYLOAD_IN_MB / SAGEMAKER_BATCH_STRATEGY / SAGEMAKER_MAX_CONCURRENT_TRANSFORMS those
the job sets. Once /ping answers 200, `GET /execution-parameters` is read, and each setting is the
job's, else the container's, else SageMaker's default (MaxConcurrentTransforms 1, MaxPayloadInMB 6,
MultiRecord). Then every input file goes through transform_run; each gets `<name>.out`, or none
when a record fails, and the run exits 1.
https://docs.aws.amazon.com/sagemaker/latest/dg/your-algorithms-batch-code.html
https://docs.aws.amazon.com/sagemaker/latest/APIReference/API_CreateTransformJob.html
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from sagehost import contract
from sagehost.codecs import media
from sagehost.errors import ConfigError, StartupError, UpstreamTimeout, UpstreamTooLarge, UpstreamUnavailable
from sagehost.http.outbound import send
from sagehost.image.engine import find_engine
from sagehost.local import jsonpath, transform_io
from sagehost.local.launch import (
    HealthCheckFailed,
    Launched,
    free_port,
    launch_container,
    launch_process,
    ping,
    wait_healthy,
)
from sagehost.local.modes import STARTUP_DEADLINE_S, Run, sagemaker_run
from sagehost.local.processing import JSON_TYPES, Processing
from sagehost.local.progress import progress
from sagehost.local.records import SplitType
from sagehost.local.run import model_folder
from sagehost.local.transform_run import FileReport, Plan, run_files

Say = Callable[[str], None]
Strategy = Literal["MultiRecord", "SingleRecord"]
STRATEGIES: tuple[Strategy, ...] = ("MultiRecord", "SingleRecord")
ASSEMBLIES = ("None", "Line")
JOIN_SOURCES = ("None", "Input")
DEFAULT_CONCURRENCY = 1
DEFAULT_PAYLOAD_MB = 6
MAX_PAYLOAD_MB = 100  # also the bound of MaxConcurrentTransforms x MaxPayloadInMB
DEFAULT_TIMEOUT_S = 600.0  # ModelClientConfig.InvocationsTimeoutInSeconds
DEFAULT_RETRIES = 3  # ModelClientConfig.InvocationsMaxRetries
_CONTAINER_ENUM = {"MultiRecord": "MULTI_RECORD", "SingleRecord": "SINGLE_RECORD"}
_PARAMETERS_ANSWER_BYTES = 64 * 1024


@dataclass(frozen=True)
class TransformRequest:
    image: str | None  # None: --no-container
    input: str
    output: str
    model_data: Path | None = None
    content_type: str | None = None
    accept: str | None = None
    split_type: SplitType = "None"
    strategy: Strategy | None = None
    max_payload_mb: int | None = None
    concurrency: int | None = None
    assemble_with: str = "None"
    input_filter: str | None = None
    output_filter: str | None = None
    join_source: str = "None"
    gzip: bool = False
    retries: int = DEFAULT_RETRIES
    invocation_timeout_s: float = DEFAULT_TIMEOUT_S
    builder: str | None = None
    env: dict[str, str] = field(default_factory=dict)
    startup_timeout_s: float = STARTUP_DEADLINE_S
    url: str | None = None
    """A server already running (http://HOST:PORT) to send the job to: nothing is started."""


# ---- SageMaker's rules, before anything starts -------------------------------------------------


def check(request: TransformRequest) -> Processing | None:
    """Refuse what CreateTransformJob would refuse; the DataProcessing to apply, if any."""
    if request.strategy is not None and request.split_type == "None":
        raise ConfigError(
            f"--strategy {request.strategy} needs --split-type (Line or RecordIO): without a split, "
            "SageMaker sends each input file whole, one per request."
        )
    if request.concurrency and request.max_payload_mb != 0:
        payload = DEFAULT_PAYLOAD_MB if request.max_payload_mb is None else request.max_payload_mb
        if request.concurrency * payload > MAX_PAYLOAD_MB:
            raise ConfigError(
                f"--concurrency {request.concurrency} x {payload} MB is over SageMaker's {MAX_PAYLOAD_MB} MB: use "
                f"--concurrency {MAX_PAYLOAD_MB // payload} or less, or a smaller --max-payload-mb."
            )
    if request.url is not None:
        if request.image is not None or request.model_data is not None:
            raise ConfigError("--url sends the job to a server already running: give no IMAGE or --model-data with it.")
        if not request.url.startswith("http://"):
            raise ConfigError(f"--url {request.url[:100]!r}: give the running server's http://HOST:PORT.")
    elif request.image is None and request.model_data is None:
        raise ConfigError("--no-container needs --model-data (a model.tar.gz or a model directory).")
    return processing(request)


def processing(request: TransformRequest) -> Processing | None:
    input_filter = _path(request.input_filter, "--input-filter")
    output_filter = _path(request.output_filter, "--output-filter")
    join = request.join_source == "Input"
    used = [
        option
        for option, active in (
            ("--input-filter", input_filter is not None and not input_filter.whole),
            ("--output-filter", output_filter is not None and not output_filter.whole),
            ("--join-source Input", join),
        )
        if active
    ]
    if not used:
        return None
    kind = media.media_type(request.content_type)
    subject = " and ".join(used)
    if kind != media.CSV and kind not in JSON_TYPES:
        raise ConfigError(
            f"{subject}: SageMaker filters and joins CSV and JSON only; give --content-type text/csv, "
            "application/json or application/jsonlines."
        )
    answer = media.media_type(request.accept)
    if answer not in ((media.CSV,) if kind == media.CSV else JSON_TYPES):
        raise ConfigError(
            f"{subject}: the answers must be in the input's format, as SageMaker reads them back per record: "
            f"give --accept {'text/csv' if kind == media.CSV else 'application/jsonlines'}."
        )
    if kind == media.CSV:
        if request.split_type != "Line" or request.assemble_with != "Line":
            raise ConfigError(f"{subject} on CSV need --split-type Line and --assemble-with Line (one record a line).")
        for option, path in (("--input-filter", input_filter), ("--output-filter", output_filter)):
            if path is not None and not path.indexes_only:
                raise ConfigError(
                    f"{option} {path.text!r}: a CSV row is an array of cells, so use indexes: $[1:], $[0,3]."
                )
    elif request.split_type == "RecordIO":
        raise ConfigError(
            f"{subject} read JSON records: use --split-type Line (JSON Lines) or None (one JSON document)."
        )
    return Processing(kind == media.CSV, input_filter, output_filter, join)


def _path(text: str | None, option: str) -> jsonpath.JsonPath | None:
    return None if text is None else jsonpath.parse(text, option)


# ---- settings: the job's, else the container's, else SageMaker's ---------------------------------


@dataclass(frozen=True)
class Resolved:
    concurrency: int
    payload_mb: int
    strategy: Strategy
    sources: tuple[str, str, str]

    def describe(self) -> str:
        strategy = _CONTAINER_ENUM[self.strategy]
        concurrency, payload, batch = self.sources
        return (
            f"MaxConcurrentTransforms={self.concurrency} ({concurrency}), MaxPayloadInMB={self.payload_mb} "
            f"({payload}), BatchStrategy={strategy} ({batch})"
        )


def resolve(request: TransformRequest, parameters: Mapping[str, Any]) -> Resolved:
    """Precedence as SageMaker documents it: the job's values, then the container's
    /execution-parameters, then the defaults. https://docs.aws.amazon.com/sagemaker/latest/dg/your-algorithms-batch-code.html"""
    from_container = _container_values(parameters)
    concurrency, c_from = _pick(request.concurrency or None, "--concurrency", from_container.get("concurrency"))
    payload, p_from = _pick(request.max_payload_mb, "--max-payload-mb", from_container.get("payload"))
    strategy, s_from = _pick(request.strategy, "--strategy", from_container.get("strategy"))
    return Resolved(
        int(concurrency if concurrency is not None else DEFAULT_CONCURRENCY),
        int(payload if payload is not None else DEFAULT_PAYLOAD_MB),
        strategy if strategy in STRATEGIES else "MultiRecord",
        (c_from, p_from, s_from),
    )


def _pick(flag: Any, option: str, container: Any) -> tuple[Any, str]:
    if flag is not None:
        return flag, option
    if container is not None:
        return container, "GET /execution-parameters"
    return None, "default"


def _container_values(parameters: Mapping[str, Any]) -> dict[str, Any]:
    """The values of /execution-parameters SageMaker would accept; others are ignored."""
    found: dict[str, Any] = {}
    concurrency = parameters.get("MaxConcurrentTransforms")
    if isinstance(concurrency, int) and not isinstance(concurrency, bool) and concurrency >= 1:
        found["concurrency"] = concurrency
    payload = parameters.get("MaxPayloadInMB")
    if isinstance(payload, int) and not isinstance(payload, bool) and 0 <= payload <= MAX_PAYLOAD_MB:
        found["payload"] = payload
    strategy = {v: k for k, v in _CONTAINER_ENUM.items()}.get(str(parameters.get("BatchStrategy")))
    if strategy is not None:
        found["strategy"] = strategy
    return found


def execution_parameters(url: str) -> dict[str, Any]:
    """The container's answer, or nothing: the route is optional (a 404 is fine)."""
    import orjson

    try:
        answer = send(
            "GET", url + "/execution-parameters", timeout=contract.PING_TIMEOUT_S, max_body=_PARAMETERS_ANSWER_BYTES
        )
    except (UpstreamTimeout, UpstreamTooLarge, UpstreamUnavailable):
        return {}
    if answer.status != 200:
        return {}
    try:
        found = orjson.loads(answer.body)
    except orjson.JSONDecodeError:
        return {}
    return found if isinstance(found, dict) else {}


# ---- the run -------------------------------------------------------------------------------------


def local_transform(request: TransformRequest, say: Say) -> int:
    for name in ("httpx", "httpcore"):  # a line per request otherwise
        logging.getLogger(name).setLevel(logging.WARNING)
    processing_ = check(request)
    inputs, output = _endpoints(request)
    if request.url is not None:
        url = request.url.rstrip("/")
        return _against_running(request, url, inputs=inputs, output=output, processing_=processing_, say=say)
    run = _batch_run(request)
    with model_folder(request.model_data, say) as model_dir:
        launched = _launch(request, run, model_dir)
        try:
            ready_in = wait_healthy(launched, request.startup_timeout_s)
            reports, seconds = _transform(
                request,
                launched.url,
                ready=f"Ready in {ready_in:.1f} s.",
                inputs=inputs,
                output=output,
                processing_=processing_,
                say=say,
            )
            if launched.process.poll() is not None:
                say(
                    f"The {launched.label} exited during the run (code {launched.process.returncode}): SageMaker "
                    f"would fail the job. Last lines of its log:\n{launched.log_tail()}"
                )
        except HealthCheckFailed as exc:
            launched.stop()
            say(f"{exc}\nLast lines of its log:\n{launched.log_tail()}")
            return 1
        finally:
            launched.stop()
    return _summary(reports, seconds, output.label, say)


def _against_running(
    request: TransformRequest,
    url: str,
    *,
    inputs: list[transform_io.InputFile],
    output: transform_io.Output,
    processing_: Processing | None,
    say: Say,
) -> int:
    """The job against a server already running (`url`): started by someone else, so it is
    neither started nor stopped here, and it must answer /ping with 200 now."""
    status = ping(url)
    if status != 200:
        answer = f"HTTP {status}" if status else "nothing within 2 s"
        say(f"{url}/ping answered {answer}, not 200: start the server first, or let local transform start it.")
        return 1
    reports, seconds = _transform(
        request, url, ready=f"{url} answers /ping.", inputs=inputs, output=output, processing_=processing_, say=say
    )
    return _summary(reports, seconds, output.label, say)


def _transform(
    request: TransformRequest,
    url: str,
    *,
    ready: str,
    inputs: list[transform_io.InputFile],
    output: transform_io.Output,
    processing_: Processing | None,
    say: Say,
) -> tuple[list[FileReport], float]:
    """Every file through the server at `url`: the reports, and the seconds the run took."""
    resolved = resolve(request, execution_parameters(url))
    say(f"{ready} {resolved.describe()}")
    _warn_about_assembly(request, say)
    plan = _plan(request, resolved, url, processing_)
    started = time.monotonic()
    shown = progress(len(inputs), say)
    try:
        reports = asyncio.run(run_files(plan, inputs, output, shown))
    finally:
        shown.close()
    return reports, time.monotonic() - started


def _endpoints(request: TransformRequest) -> tuple[list[transform_io.InputFile], transform_io.Output]:
    remote = any(place.startswith("s3://") for place in (request.input, request.output))
    aws = transform_io.connect() if remote else None
    transform_io.check_s3_apart(request.input, request.output)
    if request.input.startswith("s3://"):
        assert aws is not None
        inputs = transform_io.s3_inputs(aws, request.input)
    else:
        if not request.output.startswith("s3://"):
            transform_io.check_apart(Path(request.input), Path(request.output))
        inputs = transform_io.local_inputs(Path(request.input))
    if request.output.startswith("s3://"):
        assert aws is not None
        return inputs, transform_io.S3Output(aws, request.output)
    return inputs, transform_io.LocalOutput(Path(request.output))


def _batch_run(request: TransformRequest) -> Run:
    """SageMaker's batch environment, with only the batch variables this job sets."""
    run = sagemaker_run(
        "batch",
        max_payload_mb=request.max_payload_mb or 0,
        batch_strategy=_CONTAINER_ENUM[request.strategy or "MultiRecord"],
        max_concurrent_transforms=request.concurrency or 1,
    )
    given = {
        "SAGEMAKER_MAX_PAYLOAD_IN_MB": request.max_payload_mb is not None,
        "SAGEMAKER_BATCH_STRATEGY": request.strategy is not None,
        "SAGEMAKER_MAX_CONCURRENT_TRANSFORMS": bool(request.concurrency),
    }
    env = {key: value for key, value in run.env.items() if given.get(key, True)}
    return Run(run.mode, env, run.container_port, run.limits)


def _launch(request: TransformRequest, run: Run, model_dir: Path | None) -> Launched:
    port = free_port()
    if request.image is None:
        if model_dir is None:
            raise StartupError("--no-container needs --model-data (a model.tar.gz or a model directory).")
        return launch_process(run, model_dir, port, request.env)
    return launch_container(find_engine(request.builder), request.image, run, model_dir, port, extra_env=request.env)


def _plan(request: TransformRequest, resolved: Resolved, url: str, processing_: Processing | None) -> Plan:
    return Plan(
        url=url,
        split=request.split_type,
        single=resolved.strategy == "SingleRecord",
        payload_limit=resolved.payload_mb * contract.MIB if resolved.payload_mb else None,
        concurrency=resolved.concurrency,
        assemble_lines=request.assemble_with == "Line",
        content_type=request.content_type,
        accept=request.accept,
        processing=processing_,
        gzip=request.gzip,
        retries=request.retries,
        timeout_s=request.invocation_timeout_s,
    )


def _warn_about_assembly(request: TransformRequest, say: Say) -> None:
    if request.split_type != "None" and request.assemble_with == "None":
        say(
            "Note: --assemble-with None writes the answers back to back, as they are; for one line per record "
            "(CSV, JSON Lines) use --assemble-with Line."
        )


def _summary(reports: list[FileReport], seconds: float, where: str, say: Say) -> int:
    failed = [r for r in reports if r.failure is not None]
    records = sum(r.records for r in reports)
    for report in reports:
        for warning in report.warnings:
            say(f"Warning: {report.source.label}, {warning}")
    for report in failed:
        say(f"Failed: {report.source.label}, {(report.failure or '').rstrip('.')}. No .out for it (as on SageMaker).")
    rate = f" ({records / seconds:,.0f} records/s)" if seconds > 0 and records else ""
    say(
        f"{len(reports) - len(failed)} of {len(reports)} files transformed, {records:,} records in {seconds:.1f} s"
        f"{rate}; output under {where}."
    )
    warned = any(r.warnings for r in reports)
    return 1 if failed or warned else 0
