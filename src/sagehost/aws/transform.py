"""`sagehost transform MODEL_OR_ENDPOINT s3://in s3://out`: a SageMaker Batch Transform job.

The model is the one an endpoint runs now (an endpoint sagehost deployed, by its name), or a
SageMaker model named directly. SageMaker's rules are checked before the job is made, because a
refused parameter otherwise shows as a failed job minutes later: MaxPayloadInMB 0-100 and
MaxConcurrentTransforms x MaxPayloadInMB <= 100, a batch strategy only with a split type, the
JSONPath subset SageMaker's filters accept, joins and filters only for CSV and JSON (CSV split
and assembled by line), and the instance types Batch Transform offers.
https://docs.aws.amazon.com/sagemaker/latest/APIReference/API_CreateTransformJob.html
https://docs.aws.amazon.com/sagemaker/latest/dg/batch-transform-data-processing.html

The job's name is the model's or endpoint's, the time and a hash of the request; it is tagged
`sagehost:endpoint=NAME`. While it runs: the status, the elapsed time and the job's own lines of
/aws/sagemaker/TransformJobs; when it fails: FailureReason, the last lines and the likely cause.
Importing this module needs click only (boto3 is loaded when the command runs).
"""

from __future__ import annotations

import hashlib
import json
import re
import sys
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TextIO

import click

from sagehost.aws.diagnose import causes, diagnose
from sagehost.aws.errors import AwsNotFound, AwsOptionError, AwsPermissionDenied, DeployFailed
from sagehost.errors import ConfigError

if TYPE_CHECKING:
    from sagehost.aws.session import Aws
    from sagehost.aws.spec import S3Uri
    from sagehost.aws.wait import LogTail, Progress

LOG_GROUP = "/aws/sagemaker/TransformJobs"
DEFAULT_INSTANCE_TYPE = "ml.m5.large"
DEFAULT_PAYLOAD_MB = 6  # SageMaker's MaxPayloadInMB when neither the job nor the container sets one
MAX_PAYLOAD_MB = 100  # also the bound of MaxConcurrentTransforms x MaxPayloadInMB
DONE = frozenset({"Completed", "Failed", "Stopped"})
SPLIT_TYPES = ("None", "Line", "RecordIO", "TFRecord")
JOINABLE = ("text/csv", "application/json", "application/jsonlines")
_MEDIA_TYPE = re.compile(r"^[\w.+-]+/[\w.+*-]+(\s*;.*)?$")


@dataclass(frozen=True)
class TransformSpec:
    """What `sagehost transform` was asked for, checked against SageMaker's rules."""

    source: str
    input: S3Uri
    output: S3Uri
    content_type: str | None = None
    split_type: str | None = None
    strategy: str | None = None
    max_payload_mb: int | None = None
    concurrency: int | None = None
    assemble_with: str | None = None
    accept: str | None = None
    input_filter: str | None = None
    output_filter: str | None = None
    join_source: str | None = None
    instance_type: str = DEFAULT_INSTANCE_TYPE
    instance_count: int = 1
    tags: Mapping[str, str] = field(default_factory=dict)

    @property
    def processing(self) -> dict[str, str]:
        given = {"InputFilter": self.input_filter, "OutputFilter": self.output_filter, "JoinSource": self.join_source}
        return {key: value for key, value in given.items() if value is not None}

    def request(self, model: str) -> dict[str, Any]:
        """CreateTransformJob's parameters, less the name and tags; only what was given, so
        SageMaker's and the container's defaults (GET /execution-parameters) apply to the rest."""
        data_input: dict[str, Any] = {
            "DataSource": {"S3DataSource": {"S3DataType": "S3Prefix", "S3Uri": str(self.input)}}
        }
        _put(data_input, ContentType=self.content_type, SplitType=self.split_type)
        output: dict[str, Any] = {"S3OutputPath": str(self.output)}
        _put(output, Accept=self.accept, AssembleWith=self.assemble_with)
        request: dict[str, Any] = {
            "ModelName": model,
            "TransformInput": data_input,
            "TransformOutput": output,
            "TransformResources": {"InstanceType": self.instance_type, "InstanceCount": self.instance_count},
        }
        _put(
            request,
            BatchStrategy=self.strategy,
            MaxPayloadInMB=self.max_payload_mb,
            MaxConcurrentTransforms=self.concurrency,
            DataProcessing=self.processing or None,
        )
        return request


def _put(target: dict[str, Any], **values: Any) -> None:
    target.update({key: value for key, value in values.items() if value is not None})


# ---- checks before any call --------------------------------------------------------------------


def check(spec: TransformSpec) -> TransformSpec:
    """Refuse what SageMaker would refuse, each with the option and the fix."""
    _check_media(spec.content_type, "--content-type")
    _check_media(spec.accept, "--accept")
    _check_payload(spec)
    if spec.strategy is not None and spec.split_type in (None, "None"):
        raise AwsOptionError(
            f"--strategy {spec.strategy} needs --split-type (Line, RecordIO or TFRecord): without a split, "
            "SageMaker sends each input object whole, one per request."
        )
    if spec.output.bucket == spec.input.bucket and spec.output.key.startswith(spec.input.key):
        raise AwsOptionError(
            f"The output {spec.output} is under the input {spec.input}: the next job would read this one's "
            ".out files as input. Write the output under another prefix."
        )
    for option, path in (("--input-filter", spec.input_filter), ("--output-filter", spec.output_filter)):
        if path is not None:
            _check_filter(option, path, spec.content_type)
    if spec.processing:
        _check_joinable(spec)
    _check_instance_type(spec.instance_type)
    return spec


def _check_media(value: str | None, option: str) -> None:
    if value is not None and (len(value) > 256 or not _MEDIA_TYPE.match(value)):
        raise AwsOptionError(f"{option} {value!r} is not a media type (TYPE/SUBTYPE, e.g. text/csv).")


def _check_payload(spec: TransformSpec) -> None:
    """MaxConcurrentTransforms x MaxPayloadInMB <= 100; 0 MB (streamed, chunked) has no product.
    https://docs.aws.amazon.com/sagemaker/latest/APIReference/API_CreateTransformJob.html#sagemaker-CreateTransformJob-request-MaxPayloadInMB"""
    if spec.concurrency is None:
        return
    payload = DEFAULT_PAYLOAD_MB if spec.max_payload_mb is None else spec.max_payload_mb
    if spec.concurrency * payload > MAX_PAYLOAD_MB:
        given = "--max-payload-mb" if spec.max_payload_mb is not None else "the default payload"
        most = MAX_PAYLOAD_MB // payload
        raise AwsOptionError(
            f"--concurrency {spec.concurrency} x {payload} MB ({given}) is over SageMaker's {MAX_PAYLOAD_MB} MB: "
            f"use --concurrency {most} or less, or a smaller --max-payload-mb."
        )


def _check_filter(option: str, path: str, content_type: str | None) -> None:
    """SageMaker's JSONPath subset, as `sagehost local transform` reads it (sagehost.local.jsonpath)."""
    from sagehost.local import jsonpath

    try:
        parsed = jsonpath.parse(path, option)
    except ConfigError as exc:
        raise AwsOptionError(str(exc)) from None
    if _base(content_type) == "text/csv" and not parsed.indexes_only:
        raise AwsOptionError(
            f"{option} {path!r}: a CSV row is an array, so its filters are indexes only, e.g. $[1:] or $[0,3]."
        )


_PROCESSING_OPTIONS = {
    "InputFilter": "--input-filter",
    "OutputFilter": "--output-filter",
    "JoinSource": "--join-source",
}


def _check_joinable(spec: TransformSpec) -> None:
    """Filters and joins read and write the records: CSV or JSON (Lines) both ways, CSV by line."""
    used = [_PROCESSING_OPTIONS[key] for key, value in spec.processing.items() if value != "None"]
    if not used:
        return
    subject = "/".join(used) + (" need" if len(used) > 1 else " needs")
    for option, value in (("--content-type", spec.content_type), ("--accept", spec.accept)):
        if _base(value) not in JOINABLE:
            got = "" if value is None else f"; got {value!r}"
            raise AwsOptionError(
                f"{subject} {option} set to one of {', '.join(JOINABLE)} (SageMaker filters and joins only those){got}."
            )
    if _base(spec.content_type) == "text/csv" and (spec.split_type != "Line" or spec.assemble_with != "Line"):
        raise AwsOptionError(f"{subject} --split-type Line and --assemble-with Line on CSV (one record a line).")


def _base(media_type: str | None) -> str:
    return (media_type or "").split(";")[0].strip().lower()


def _check_instance_type(name: str) -> None:
    """The types CreateTransformJob takes, from the API model of the installed botocore."""
    offered = transform_instance_types()
    if name in offered:
        return
    hint = f" Did you mean ml.{name}?" if f"ml.{name}" in offered else ""
    raise AwsOptionError(
        f"--instance-type {name!r} is not offered for Batch Transform.{hint} Some: ml.m5.large, ml.c5.xlarge, "
        "ml.g4dn.xlarge (no ml.t2/ml.t3); all: https://aws.amazon.com/sagemaker/pricing/ (a type newer than "
        "your boto3 needs `pip install -U boto3`)."
    )


def transform_instance_types() -> frozenset[str]:
    import botocore.session  # type: ignore[import-untyped]

    model = botocore.session.get_session().get_service_model("sagemaker")
    return frozenset(model.shape_for("TransformInstanceType").enum)


# ---- the job -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Resolved:
    model: str
    owner: str
    """The value of the job's sagehost:endpoint tag: the endpoint, or the model's own tag."""
    how: str


def resolve(aws: Aws, name: str) -> Resolved:
    """An endpoint's current model, or a model by name."""
    from sagehost.aws import inventory
    from sagehost.aws.spec import TAG_KEY

    endpoint = aws.find("sagemaker", "describe_endpoint", EndpointName=name)
    if endpoint is not None:
        config_name = endpoint["EndpointConfigName"]
        config = aws.read("sagemaker", "describe_endpoint_config", EndpointConfigName=config_name)
        models = sorted({str(v["ModelName"]) for v in config.get("ProductionVariants", []) if "ModelName" in v})
        if len(models) != 1:
            raise AwsOptionError(
                f"Endpoint {name} runs {len(models)} models ({', '.join(models) or 'none'}): name the model instead."
            )
        return Resolved(models[0], name, f"endpoint {name}'s model {models[0]}")
    model = aws.find("sagemaker", "describe_model", ModelName=name)
    if model is None:
        raise AwsNotFound(
            f"{name} is neither an endpoint nor a model in {aws.region}. `sagehost endpoints` lists sagehost's "
            "endpoints; `aws sagemaker list-models` the models."
        )
    try:
        owner = inventory.tags_of(aws, model["ModelArn"]).get(TAG_KEY, name)
    except AwsPermissionDenied:
        owner = name
    return Resolved(name, owner, f"model {name}")


def check_data(aws: Aws, spec: TransformSpec) -> None:
    """Something to read under the input, a bucket to write to: free reads, skipped when refused."""
    try:
        page = aws.find("s3", "list_objects_v2", Bucket=spec.input.bucket, Prefix=spec.input.key, MaxKeys=1)
        if page is None:
            raise AwsNotFound(f"There is no bucket {spec.input.bucket} for the input {spec.input} in this account.")
        if not page.get("KeyCount") and not page.get("Contents"):
            raise AwsNotFound(f"There is nothing under {spec.input} to transform: upload the input there first.")
        if spec.output.bucket != spec.input.bucket and aws.find("s3", "head_bucket", Bucket=spec.output.bucket) is None:
            raise AwsNotFound(f"There is no bucket {spec.output.bucket} for the output {spec.output}: create it first.")
    except AwsPermissionDenied:
        pass  # a courtesy check: SageMaker's role may read what the caller may not list


def job_name(base: str, request: Mapping[str, Any], now_s: float) -> str:
    """BASE-YYYYmmdd-HHMMSS-HASH within 63 characters: unique per request and second, as job names must be."""
    digest = hashlib.sha256(json.dumps(request, sort_keys=True).encode()).hexdigest()[:6]
    suffix = f"-{time.strftime('%Y%m%d-%H%M%S', time.gmtime(now_s))}-{digest}"
    return base[: 63 - len(suffix)].rstrip("-") + suffix


@dataclass
class Transformer:
    aws: Aws
    spec: TransformSpec
    stream: TextIO
    wait: bool = True
    sleep: Callable[[float], None] = time.sleep

    def run(self) -> str:
        """Create the job (and wait on it); its name."""
        from sagehost.aws.spec import TAG_KEY

        aws, spec = self.aws, self.spec
        resolved = resolve(aws, spec.source)
        check_data(aws, spec)
        request = spec.request(resolved.model)
        name = job_name(spec.source, request, time.time())
        tags = [{"Key": TAG_KEY, "Value": resolved.owner}, *({"Key": k, "Value": v} for k, v in spec.tags.items())]
        resources = f"{spec.instance_count} x {spec.instance_type}"
        aws.echo(f"Transform job {name}: {resolved.how}, {spec.input} -> {spec.output}, {resources}.")
        started_ms = int(time.time() * 1000)
        aws.write("sagemaker", "create_transform_job", TransformJobName=name, **request, Tags=tags)
        if aws.dry_run:
            return name
        if not self.wait:
            aws.echo(f"Not waiting; see it with: aws sagemaker describe-transform-job --transform-job-name {name}")
            return name
        self.finish(name, started_ms)
        return name

    def finish(self, name: str, started_ms: int) -> None:
        from sagehost.aws.wait import LogTail, Progress

        tail = LogTail(self.aws, LOG_GROUP, started_ms)
        try:
            final, lines = until_done(self.aws, name, Progress(self.stream, name), tail, sleep=self.sleep)
        except KeyboardInterrupt:
            self.aws.echo(
                f"\nStopped watching; the job goes on. Stop it with: aws sagemaker stop-transform-job "
                f"--transform-job-name {name}"
            )
            raise
        status = final.get("TransformJobStatus")
        if status == "Completed":
            self.aws.echo(f"Transform job {name} Completed: one .out per input object under {self.spec.output}")
            return
        raise DeployFailed(failure_report(name, final, lines, self.spec))


def until_done(
    aws: Aws, name: str, progress: Progress, tail: LogTail, *, sleep: Callable[[float], None] = time.sleep
) -> tuple[dict[str, Any], list[str]]:
    """Poll DescribeTransformJob until it ends; the last description and the job's last log lines.

    The log group holds every job's streams (JOB/INSTANCE-…): only this job's lines are shown."""
    from sagehost.aws.wait import KEPT_LOG_LINES, POLL_FIRST_S, POLL_MAX_S

    prefix = f"{name}/"
    kept: deque[str] = deque(maxlen=KEPT_LOG_LINES)
    interval = POLL_FIRST_S
    while True:
        described = aws.read("sagemaker", "describe_transform_job", TransformJobName=name)
        for line in tail.poll():
            if line.startswith(prefix):
                kept.append(line)
                progress.log(line)
        status = str(described.get("TransformJobStatus"))
        progress.status(status)
        if status in DONE:
            progress.close()
            return dict(described), list(kept)
        sleep(interval)
        interval = min(interval * 2, POLL_MAX_S)


# A transform job's own causes, tried before an endpoint's (sagehost.aws.diagnose).
_CAUSES = causes(
    (
        (
            r"\b413\b|too large|payload",
            "A request was over the container's payload limit: split the input (--split-type Line with "
            "--strategy MultiRecord) so SageMaker packs records up to --max-payload-mb, or lower --max-payload-mb.",
        ),
        (
            r"\b(400|415|422)\b|unsupported media|content.type|schema",
            "The container refused records: check that --content-type matches the data and what the model reads "
            "(and --input-filter's columns); the log lines above name the request.",
        ),
        (
            r"timed out|timeout",
            "An invocation took too long: send fewer records at once (a smaller --max-payload-mb, or "
            "--strategy SingleRecord) or use a bigger --instance-type.",
        ),
    )
)


def failure_report(name: str, final: Mapping[str, Any], lines: list[str], spec: TransformSpec) -> str:
    reason = str(final.get("FailureReason") or "SageMaker gave no reason.")
    report = [f"Transform job {name} is {final.get('TransformJobStatus')}.", f"Reason: {reason}"]
    if lines:
        report += [f"Last log lines ({LOG_GROUP}, {name}/…):", *(f"  | {line}" for line in lines)]
    else:
        report.append(f"No log lines of {name} in {LOG_GROUP}.")
    report += [f"Likely cause: {advice}" for advice in diagnose(reason, lines, first=_CAUSES)]
    report.append(f"Input objects that did succeed have their .out under {spec.output}.")
    return "\n".join(report)


# ---- the command -------------------------------------------------------------------------------


@click.argument("model_or_endpoint")
@click.argument("input_uri", metavar="S3_INPUT")
@click.argument("output_uri", metavar="S3_OUTPUT")
@click.option("--content-type", help="The input's media type, sent with each request (e.g. text/csv).")
@click.option("--split-type", type=click.Choice(SPLIT_TYPES), help="Split input objects into records [None].")
@click.option(
    "--strategy",
    type=click.Choice(("MultiRecord", "SingleRecord")),
    help="Records per request (with --split-type): as many as fit, or one.",
)
@click.option("--max-payload-mb", type=click.IntRange(0, MAX_PAYLOAD_MB), help="Per request, 0-100 [6]; 0 streams.")
@click.option("--concurrency", type=click.IntRange(0), help="Requests at once per instance (x payload <= 100 MB).")
@click.option("--assemble-with", type=click.Choice(("None", "Line")), help="Line: a newline after each answer.")
@click.option("--accept", help="The answers' media type (e.g. text/csv, application/jsonlines).")
@click.option("--input-filter", metavar="JSONPATH", help="The part of each record sent, e.g. $[1:] (CSV), $.features.")
@click.option("--output-filter", metavar="JSONPATH", help="The part kept of each (joined) record, e.g. $[0,-1].")
@click.option("--join-source", type=click.Choice(("Input", "None")), help="Input: write each answer beside its input.")
@click.option("--instance-type", default=DEFAULT_INSTANCE_TYPE, show_default=True)
@click.option("--instance-count", type=click.IntRange(1), default=1, show_default=True)
@click.option("--tag", "tag_pairs", multiple=True, metavar="KEY=VALUE", help="On the job; repeatable.")
@click.option("--wait/--no-wait", default=True, show_default=True, help="Until it ends, with progress and logs.")
@click.option("--dry-run", is_flag=True, help="Print the call that would create the job; make none.")
def transform_command(
    model_or_endpoint: str,
    input_uri: str,
    output_uri: str,
    *,
    wait: bool,
    dry_run: bool,
    region: str | None,
    profile: str | None,
    **options: Any,
) -> None:
    """A Batch Transform job over S3_INPUT with endpoint MODEL_OR_ENDPOINT's model (or that model)."""
    from sagehost.aws.session import Aws

    spec = transform_spec(model_or_endpoint, input_uri, output_uri, options)
    aws = Aws.connect(region, profile, dry_run=dry_run, echo=click.echo)
    if dry_run:
        click.echo("Dry run: reads are made, nothing is changed. This call would be made:")
    Transformer(aws, spec, sys.stderr, wait=wait).run()


def transform_spec(source: str, input_uri: str, output_uri: str, o: Mapping[str, Any]) -> TransformSpec:
    from sagehost.aws import spec as s

    return check(
        TransformSpec(
            source=s.endpoint_name(source),
            input=s.s3_uri(input_uri, "S3_INPUT"),
            output=s.s3_uri(output_uri, "S3_OUTPUT"),
            content_type=o["content_type"],
            split_type=o["split_type"],
            strategy=o["strategy"],
            max_payload_mb=o["max_payload_mb"],
            concurrency=o["concurrency"],
            assemble_with=o["assemble_with"],
            accept=o["accept"],
            input_filter=o["input_filter"],
            output_filter=o["output_filter"],
            join_source=o["join_source"],
            instance_type=o["instance_type"],
            instance_count=o["instance_count"],
            tags=s.tags(o["tag_pairs"]),
        )
    )
