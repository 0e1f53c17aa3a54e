"""`sagehost invoke`: send a payload and print the answer, the classic recipe's `predict.sh` as
one command. To a SageMaker endpoint by NAME (InvokeEndpoint, or with `--async` through S3 and
InvokeEndpointAsync; boto3 lives in sagehost.aws.invoke), or with `--url` to a running server's
/invocations. The answer goes to stdout; errors go to stderr with exit 1.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import click

from sagehost import contract
from sagehost.errors import UpstreamTimeout, UpstreamTooLarge, UpstreamUnavailable
from sagehost.http.outbound import Answer, send

# Batch Transform's largest MaxPayloadInMB: no endpoint, local or not, answers more.
MAX_ANSWER_BYTES = 100 * contract.MIB
TARGET_MODEL_HEADER = "X-Amzn-SageMaker-Target-Model"
DEFAULT_WAIT_S = 900.0  # as long as an async invocation runs unless it asks otherwise


@dataclass(frozen=True)
class Payload:
    """What is sent, and how it is described."""

    body: bytes
    content_type: str
    accept: str | None = None
    custom_attributes: str | None = None
    target_model: str | None = None


def invoke(url: str, payload: Payload, *, timeout: float = contract.DEFAULT_TIMEOUT_S) -> Answer:
    """The server's answer, whatever its status; UpstreamTimeout, UpstreamTooLarge (over 100 MB)
    or UpstreamUnavailable when there was none to print (see sagehost.http.outbound)."""
    target = url.rstrip("/")
    if not target.endswith("/invocations"):
        target += "/invocations"
    headers = {"Content-Type": payload.content_type}
    if payload.accept:
        headers["Accept"] = payload.accept
    if payload.custom_attributes:
        headers[contract.CUSTOM_ATTRIBUTES_HEADER] = payload.custom_attributes
    if payload.target_model:
        headers[TARGET_MODEL_HEADER] = payload.target_model
    return send("POST", target, body=payload.body, headers=headers, timeout=timeout, max_body=MAX_ANSWER_BYTES)


def read_payload(source: str) -> bytes:
    """FILE's bytes, or stdin's for `-`."""
    if source == "-":
        return sys.stdin.buffer.read()
    path = Path(source)
    if not path.is_file():
        raise click.BadParameter(f"{source} is not a file.", param_hint="FILE")
    return path.read_bytes()


@dataclass(frozen=True)
class Command:
    """`sagehost invoke`'s arguments and options, as click hands them over."""

    target: str  # NAME, or with --url the FILE
    payload: str | None  # FILE or `-` after NAME
    url: str | None
    content_type: str
    accept: str | None
    custom_attributes: str | None
    target_model: str | None
    asynchronous: bool
    wait_s: float | None
    bucket: str | None
    region: str | None
    profile: str | None

    def described(self, body: bytes) -> Payload:
        return Payload(body, self.content_type, self.accept, self.custom_attributes, self.target_model)


def run(command: Command) -> None:
    """To the endpoint NAME, or with --url to a running server; exits 1 when no answer is printed."""
    if command.url is None:
        to_endpoint(command)
        return
    endpoint_only = {
        "--async": command.asynchronous,
        "--wait": command.wait_s is not None,
        "--bucket": command.bucket,
        "--region": command.region,
        "--profile": command.profile,
    }
    if given := [flag for flag, value in endpoint_only.items() if value]:
        raise click.UsageError(f"{given[0]} goes with an endpoint NAME, not with --url.")
    if command.payload is not None:
        raise click.UsageError("With --url, give only the FILE (or -): sagehost invoke --url URL FILE.")
    to_url(command.url, command.described(read_payload(command.target)))


def to_url(url: str, payload: Payload) -> None:
    try:
        answer = invoke(url, payload)
    except (UpstreamTimeout, UpstreamTooLarge, UpstreamUnavailable) as exc:
        raise click.ClickException(exc.message) from None
    if not answer.ok:
        click.echo(f"HTTP {answer.status}: {answer.body.decode('utf-8', errors='replace')}", err=True)
        sys.exit(1)
    print_answer(answer.body)


def to_endpoint(command: Command) -> None:
    """InvokeEndpoint, or InvokeEndpointAsync and a wait for the answer in S3."""
    from sagehost.aws import invoke as runtime
    from sagehost.aws.session import Aws

    payload = command.described(read_payload(command.payload or "-"))
    request = runtime.Request(
        _endpoint(command.target),
        payload.body,
        payload.content_type,
        payload.accept,
        payload.custom_attributes,
        payload.target_model,
    )
    aws = Aws.connect(command.region, command.profile, echo=lambda line: click.echo(line, err=True))
    if not command.asynchronous:
        if command.wait_s is not None or command.bucket is not None:
            raise click.UsageError("--wait and --bucket go with --async.")
        answer = runtime.invoke(aws, request)
        if answer.custom_attributes:
            click.echo(f"CustomAttributes: {answer.custom_attributes}", err=True)
        print_answer(answer.body)
        return
    queued = runtime.invoke_async(aws, request, command.bucket)
    wait_s = DEFAULT_WAIT_S if command.wait_s is None else command.wait_s
    failure = f" (a failure to {queued.failure})" if queued.failure else ""
    click.echo(f"Queued {queued.inference_id}: its answer goes to {queued.output}{failure}.", err=True)
    if wait_s <= 0:
        click.echo(queued.output)
        return
    outcome = runtime.wait_for(aws, queued, wait_s)
    if outcome is None:
        raise click.ClickException(
            f"No answer within {wait_s:g} s. It will be at {queued.output}{failure}: "
            f"`aws s3 cp {queued.output} -`, or wait longer with --wait."
        )
    if not outcome.succeeded:
        said = outcome.body.decode("utf-8", errors="replace").strip()
        raise click.ClickException(f"The async invocation failed ({outcome.location}): {said}")
    print_answer(outcome.body)


def _endpoint(name: str) -> str:
    from sagehost.aws.errors import AwsOptionError
    from sagehost.aws.spec import endpoint_name

    try:
        return endpoint_name(name)
    except AwsOptionError as exc:
        hint = " To send a file to a running server: sagehost invoke --url http://127.0.0.1:8080 FILE"
        raise click.UsageError(str(exc) + (hint if Path(name).is_file() else "")) from None


def print_answer(body: bytes) -> None:
    """Text as text, ending in a newline; anything else (npy, protobuf) as its bytes."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        sys.stdout.flush()
        sys.stdout.buffer.write(body)
        sys.stdout.buffer.flush()
        return
    click.echo(text, nl=not text.endswith("\n"))
