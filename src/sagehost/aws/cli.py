"""The AWS commands: `deploy`, `endpoints`, `delete`, `logs`. Attach them to the main group with
`attach(main)`; `python -m sagehost.aws` runs them alone.

Importing this module needs click only: boto3 is imported when a command runs, so `sagehost`
works without the `aws` extra and says which `pip install` adds it.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from sagehost.aws.gateway import gateway_command
from sagehost.aws.push import push_command
from sagehost.aws.transform import transform_command
from sagehost.config import FLAVORS
from sagehost.errors import ConfigError, StartupError
from sagehost.image.engine import ENGINES

F = TypeVar("F", bound=Callable[..., Any])

INSTALL_HINT = "The AWS commands need boto3: pip install 'sagehost[aws]'"


def _reported(command: F) -> F:
    """sagehost's errors as click's: a bad option exits 2 with usage, an AWS failure exits 1."""

    @functools.wraps(command)
    def run(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except ConfigError as exc:
            raise click.UsageError(str(exc)) from None
        except StartupError as exc:
            raise click.ClickException(str(exc)) from None
        except ModuleNotFoundError as exc:
            if (exc.name or "").split(".")[0] in ("boto3", "botocore"):
                raise click.ClickException(INSTALL_HINT) from None
            raise

    return run  # type: ignore[return-value]


def _aws_options(command: F) -> F:
    command = click.option("--profile", help="A profile of ~/.aws/config [AWS_PROFILE; boto3's chain].")(command)
    return click.option("--region", help="[AWS_DEFAULT_REGION; the profile's region].")(command)


def _connect(region: str | None, profile: str | None, dry_run: bool = False) -> Any:
    from sagehost.aws.session import Aws

    return Aws.connect(region, profile, dry_run=dry_run, echo=click.echo)


def _given(name: str) -> bool:
    source = click.get_current_context().get_parameter_source(name)
    return source is not None and source.name not in ("DEFAULT", "DEFAULT_MAP")


@click.group("aws")
def aws() -> None:
    """Deploy to Amazon SageMaker, list and delete what sagehost deployed."""


@aws.command()
@click.argument("name")
@click.option(
    "--image",
    help="ECR image URI (ACCOUNT.dkr.ecr.REGION.amazonaws.com/REPO:TAG) [built for --model-dir's format and pushed].",
)
@click.option("--base-image", help="Without --image: the image's base, with python3 and venv [python:3.11-slim].")
@click.option("--builder", type=click.Choice(ENGINES), help="Without --image: docker or podman [docker if it answers].")
@click.option("--skip-verify", is_flag=True, help="Without --image: push without running the image locally first.")
@click.option("--role", required=True, help="The execution role's ARN (trusts sagemaker.amazonaws.com).")
@click.option(
    "--model-dir",
    type=click.Path(path_type=Path, exists=True, file_okay=False),
    help="Packaged as `sagehost package` does, uploaded once.",
)
@click.option("--model-data", metavar="S3_URI", help="An uploaded model.tar.gz, instead of --model-dir.")
@click.option("--bucket", help="For --model-dir's archive [sagemaker-REGION-ACCOUNT, made if missing].")
@click.option("--flavor", type=click.Choice(FLAVORS), help="For --model-dir: which model to serve, when several.")
@click.option("--instance-type", default="ml.m5.large", show_default=True)
@click.option("--instance-count", type=click.IntRange(1), default=1, show_default=True)
@click.option("--serverless", metavar="MEMORY_MB[:MAX_CONCURRENCY[:PROVISIONED]]", help="e.g. 2048:10.")
@click.option("--async", "async_output", metavar="S3_URI", help="An async endpoint writing answers here.")
@click.option("--async-failure", metavar="S3_URI", help="Where failed async requests go.")
@click.option("--async-max-concurrency", type=click.IntRange(1, 1000), help="Requests per instance at once.")
@click.option("--async-success-topic", metavar="SNS_ARN")
@click.option("--async-error-topic", metavar="SNS_ARN")
@click.option("--data-capture", metavar="S3_URI", help="Capture requests and answers here.")
@click.option("--capture-percent", type=click.IntRange(1, 100), default=100, show_default=True)
@click.option("-e", "--env", "env_pairs", multiple=True, metavar="KEY=VALUE", help="The model's environment.")
@click.option("--startup-timeout", type=int, metavar="S", help="Seconds to the first 200 from /ping (60-3600).")
@click.option("--download-timeout", type=int, metavar="S", help="Seconds to download the model (60-3600).")
@click.option("--update", metavar="STRATEGY", help="all-at-once|blue-green|canary:PCT:MIN|linear:PCT:MIN|rolling:PCT.")
@click.option("--rollback-alarm", "rollback_alarms", multiple=True, metavar="ALARM", help="Rolls an update back.")
@click.option(
    "--bake-minutes", type=click.IntRange(0, 60), help="Watch the alarms this long before the old fleet goes."
)
@click.option(
    "--autoscale",
    metavar="MIN:MAX[:TARGET]",
    help="Instances. TARGET: invocations/instance/minute [1000]; async: backlog/instance [5].",
)
@click.option("--tag", "tag_pairs", multiple=True, metavar="KEY=VALUE", help="On everything made; repeatable.")
@click.option("--wait/--no-wait", default=True, show_default=True, help="Until InService, with progress and logs.")
@click.option("--dry-run", is_flag=True, help="Print the calls that would change something; make none.")
@_aws_options
@_reported
def deploy(name: str, region: str | None, profile: str | None, dry_run: bool, wait: bool, **options: Any) -> None:
    """Create or update the SageMaker endpoint NAME (idempotent: an unchanged deploy does nothing)."""
    from sagehost.aws.autoimage import image_source
    from sagehost.aws.deploy import Deployer

    spec = _deploy_spec(name, {**options, "wait": wait})
    source = image_source(options, _given)
    settings = _package_settings(options["flavor"])
    aws = _connect(region, profile, dry_run)
    if dry_run:
        click.echo("Dry run: reads are made, nothing is changed. These calls would be made:")
    Deployer(aws, spec, sys.stderr, wait=wait, source=source).run(settings)


def _deploy_spec(name: str, o: dict[str, Any]) -> Any:
    from sagehost.aws import autoscale, guardrails, spec as s
    from sagehost.aws.autoimage import UNBUILT
    from sagehost.aws.errors import AwsOptionError

    async_only = ("async_failure", "async_max_concurrency", "async_success_topic", "async_error_topic")
    if o["async_output"] is None and (given := [n for n in async_only if o[n] is not None]):
        raise AwsOptionError(f"--{given[0].replace('_', '-')} needs --async s3://…")
    if o["data_capture"] is None and _given("capture_percent"):
        raise AwsOptionError("--capture-percent needs --data-capture s3://…")
    if o["autoscale"] is not None and not o["wait"]:
        raise AwsOptionError("--autoscale needs --wait: a variant can be scaled once the endpoint is InService.")
    spec = s.DeploySpec(
        name=s.endpoint_name(name),
        image=UNBUILT if o["image"] is None else s.ecr_image(o["image"]),
        role=s.role_arn(o["role"]),
        model_dir=o["model_dir"],
        model_data=None if o["model_data"] is None else s.model_data(o["model_data"]),
        instance_type=s.instance_type(o["instance_type"]),
        instance_count=o["instance_count"],
        serverless=None if o["serverless"] is None else s.serverless(o["serverless"]),
        async_output=_async_output(o),
        capture=None
        if o["data_capture"] is None
        else s.Capture(s.s3_uri(o["data_capture"], "--data-capture"), o["capture_percent"]),
        environment=s.environment(o["env_pairs"]),
        startup_timeout_s=s.timeout(o["startup_timeout"], "--startup-timeout"),
        download_timeout_s=s.timeout(o["download_timeout"], "--download-timeout"),
        tags=s.tags(o["tag_pairs"]),
        bucket=o["bucket"],
        update=guardrails.parse(o["update"], tuple(o["rollback_alarms"]), o["bake_minutes"]),
        autoscale=None if o["autoscale"] is None else autoscale.parse(o["autoscale"], o["async_output"] is not None),
    )
    return s.combination(spec, instance_options_given=_given("instance_type") or _given("instance_count"))


def _async_output(o: dict[str, Any]) -> Any:
    from sagehost.aws import spec as s

    if o["async_output"] is None:
        return None
    failure = o["async_failure"]
    return s.AsyncOutput(
        output=s.s3_uri(o["async_output"], "--async"),
        failure=None if failure is None else s.s3_uri(failure, "--async-failure"),
        max_concurrency=o["async_max_concurrency"],
        success_topic=s.sns_topic(o["async_success_topic"], "--async-success-topic"),
        error_topic=s.sns_topic(o["async_error_topic"], "--async-error-topic"),
    )


def _package_settings(flavor: str | None) -> Any:
    from sagehost.config import Settings

    return Settings.from_environ(None, {"flavor": flavor})


@aws.command()
@_aws_options
@_reported
def endpoints(region: str | None, profile: str | None) -> None:
    """The endpoints sagehost deployed in this region: status, capacity, autoscaling, last change."""
    from sagehost.aws import listing

    click.echo(listing.table(listing.rows(_connect(region, profile))))


@aws.command()
@click.argument("name")
@click.option("--yes", "-y", is_flag=True, help="Do not ask first.")
@click.option("--keep-artifacts", is_flag=True, help="Keep the model archives sagehost uploaded to S3.")
@click.option("--dry-run", is_flag=True, help="List what would be deleted; delete nothing.")
@_aws_options
@_reported
def delete(
    name: str, *, yes: bool, keep_artifacts: bool, dry_run: bool, region: str | None, profile: str | None
) -> None:
    """Delete endpoint NAME and everything sagehost made for it (only what is tagged as its own)."""
    from sagehost.aws import remove
    from sagehost.aws.spec import endpoint_name

    aws = _connect(region, profile, dry_run)
    found = remove.find(aws, endpoint_name(name), keep_archives=keep_artifacts)
    lines = found.lines()
    if not lines:
        click.echo(f"Nothing sagehost made for {name} in {aws.region}.")
        return
    click.echo(f"sagehost made these for {name} in {aws.region}:\n" + "\n".join(f"  {line}" for line in lines))
    if dry_run:
        click.echo("Dry run: these calls would be made:")
    elif not yes and not click.confirm("Delete them all?", default=False):
        raise click.ClickException("Nothing deleted.")
    remove.remove(aws, found)
    if not dry_run:
        click.echo(f"Deleted {len(lines)} resources.")


@aws.command()
@click.argument("name")
@click.option("--since", default="10m", show_default=True, help="How far back: 30s, 10m, 2h, 1d.")
@click.option("--follow", "-f", is_flag=True, help="Keep printing new lines until Ctrl-C.")
@_aws_options
@_reported
def logs(name: str, since: str, follow: bool, region: str | None, profile: str | None) -> None:
    """The container's log lines of endpoint NAME (CloudWatch /aws/sagemaker/Endpoints/NAME)."""
    import time

    from sagehost.aws import logs as endpoint_logs
    from sagehost.aws.spec import endpoint_name

    start_ms = endpoint_logs.since_ms(since, time.time())
    aws = _connect(region, profile)
    shown = endpoint_logs.show(aws, endpoint_name(name), start_ms, follow=follow, echo=click.echo)
    if not shown and not follow:
        click.echo(f"No log lines for {name} in the last {since} (/aws/sagemaker/Endpoints/{name}).", err=True)


# transform and gateway: their options and code live in their modules (click only at import).
transform = aws.command("transform")(_aws_options(_reported(transform_command)))
gateway = aws.command("gateway")(_aws_options(_reported(gateway_command)))
push = aws.command("push")(_aws_options(_reported(push_command)))

COMMANDS = (deploy, endpoints, delete, logs, transform, gateway, push)


def attach(group: click.Group) -> None:
    """Add the AWS commands to `group` (the main `sagehost` group)."""
    for command in COMMANDS:
        group.add_command(command)
