"""`sagehost deploy`: create or update a SageMaker endpoint, idempotently.

The names of the model and endpoint configuration carry a hash of what they hold, so a deploy
compares names to know what changed: nothing (up to date), or a new model and configuration
that UpdateEndpoint switches to, keeping the variant's name as SageMaker requires for a safe
update. Once the endpoint is InService the configurations and models it no longer uses are
deleted. An endpoint left Failed serves nothing and is replaced; one that sagehost did not
create is never touched.
https://docs.aws.amazon.com/sagemaker/latest/dg/deployment-guardrails-blue-green.html
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, TextIO

from sagehost.aws import artifact, autoscale, inventory, preflight
from sagehost.aws.diagnose import diagnose
from sagehost.aws.errors import AwsConflict, DeployFailed, PreflightFailed
from sagehost.aws.requests import config_request, model_request, versioned
from sagehost.aws.session import Aws
from sagehost.aws.spec import DEFAULT_VARIANT, DeploySpec
from sagehost.aws.wait import TIMEOUT_S, LogTail, Progress, log_group, until_gone, until_settled
from sagehost.config import Settings

if TYPE_CHECKING:
    from sagehost.aws.autoimage import ImageSource

BUSY = frozenset({"Creating", "Updating", "SystemUpdating", "RollingBack", "Deleting"})
UPDATABLE = frozenset({"InService", "OutOfService", "UpdateRollbackFailed"})


@dataclass(frozen=True)
class Target:
    """The model and endpoint configuration this deploy wants the endpoint to run."""

    model_name: str
    model: Mapping[str, Any]
    config_name: str
    config: Mapping[str, Any]

    @property
    def variant(self) -> str:
        return str(self.config["ProductionVariants"][0]["VariantName"])


@dataclass
class Deployer:
    aws: Aws
    spec: DeploySpec
    stream: TextIO
    wait: bool = True
    timeout_s: float = TIMEOUT_S
    source: ImageSource | None = None
    """No --image: where the image comes from (built or reused, then pushed) before anything else."""

    def run(self, settings: Settings) -> None:
        if self.source is None:
            self.spec.check_region(self.aws.region)
            preflight.check(self.aws, self.spec)
        else:
            self.spec = self.with_image(self.source, settings)
        spec, aws = self.spec, self.aws
        current = aws.find("sagemaker", "describe_endpoint", EndpointName=spec.name)
        if current is not None:
            inventory.require_owned(aws, current["EndpointArn"], spec.name, "endpoint")
            refuse_conversion(current, spec)
        staged = artifact.stage(aws, spec, settings, aws.echo)
        target = self.target(staged, current)
        status = None if current is None else str(current["EndpointStatus"])
        if current is not None and current["EndpointConfigName"] == target.config_name and status == "InService":
            aws.echo(f"Endpoint {spec.name} is up to date (config {target.config_name}, InService).")
            self.scale(target)
            self.sweep(target)
            return
        refuse_busy(current, target.config_name)
        scaled = None if current is None else self.scaling_in_the_way(current, target)
        self.ensure(target)
        started_ms = int(time.time() * 1000)
        self.start(current, target, scaled)
        if aws.dry_run:
            self.dry_run_tail(target)
        elif self.wait:
            self.finish(target, started_ms)
        else:
            aws.echo(f"Not waiting; `sagehost endpoints` shows {spec.name}'s status.")

    def with_image(self, source: ImageSource, settings: Settings) -> DeploySpec:
        """The role is checked first (a second), then the image is found or built and pushed
        (minutes); the push checked its manifest and architecture, in this session's region."""
        preflight.check_role(self.aws, self.spec.role)
        if self.spec.update is not None and self.spec.update.alarms:
            preflight.check_alarms(self.aws, self.spec.update.alarms)
        image = source.resolve(self.aws, settings, lambda line: print(line, file=self.stream, flush=True))
        return replace(self.spec, image=image)

    def target(self, staged: artifact.Staged, current: Mapping[str, Any] | None) -> Target:
        variants = (current or {}).get("ProductionVariants") or [{}]
        variant = str(variants[0].get("VariantName", DEFAULT_VARIANT))
        model = model_request(self.spec, staged.url)
        model_name = versioned(self.spec.name, {**model, "ContentVersion": staged.version})
        config = config_request(self.spec, model_name, variant)
        return Target(model_name, model, versioned(self.spec.name, config), config)

    def ensure(self, target: Target) -> None:
        """Create the model and configuration, or reuse them when an earlier run made them."""
        aws, name, tags = self.aws, self.spec.name, self.spec.all_tags()
        model = aws.find("sagemaker", "describe_model", ModelName=target.model_name)
        if model is None:
            aws.write("sagemaker", "create_model", ModelName=target.model_name, **target.model, Tags=tags)
        else:
            inventory.require_owned(aws, model["ModelArn"], name, "model")
        config = aws.find("sagemaker", "describe_endpoint_config", EndpointConfigName=target.config_name)
        if config is None:
            aws.write(
                "sagemaker", "create_endpoint_config", EndpointConfigName=target.config_name, **target.config, Tags=tags
            )
        else:
            inventory.require_owned(aws, config["EndpointConfigArn"], name, "endpoint config")

    def scaling_in_the_way(self, current: Mapping[str, Any], target: Target) -> str | None:
        """How an autoscaled variant goes through this update: "retain" its instance count, or
        "deregister" first when the instance type changes, which SageMaker refuses otherwise.
        https://docs.aws.amazon.com/sagemaker/latest/dg/endpoint-scaling-update.html"""
        variant = target.variant
        if autoscale.current(self.aws, self.spec.name, variant) is None:
            return None
        running = inventory.variant_of(self.aws, str(current["EndpointConfigName"]), variant)
        if running.get("InstanceType") == self.spec.instance_type:
            return "retain"
        if self.spec.autoscale is None:
            raise PreflightFailed(
                f"Endpoint {self.spec.name} autoscales, and SageMaker refuses an instance-type change while it "
                f"does. Pass --autoscale MIN:MAX[:TARGET]: sagehost turns autoscaling off for the update and "
                "back on after it."
            )
        return "deregister"

    def start(self, current: Mapping[str, Any] | None, target: Target, scaled: str | None = None) -> None:
        aws, name = self.aws, self.spec.name
        status = None if current is None else str(current["EndpointStatus"])
        if status in BUSY:  # with this very config: refuse_busy let it through
            aws.echo(f"Endpoint {name} is already {status} with config {target.config_name}: waiting on it.")
            return
        if status == "Failed":
            aws.echo(f"Endpoint {name} is Failed: replacing it.")
            aws.write("sagemaker", "delete_endpoint", EndpointName=name)
            if not aws.dry_run:
                until_gone(aws, name, Progress(self.stream, f"{name} (deleting)"), timeout_s=self.timeout_s)
            current = None
        if current is None:
            aws.echo(f"Creating endpoint {name}: config {target.config_name}, model {target.model_name}.")
            if self.spec.update is not None:
                aws.echo("(--update applies to later updates; a new endpoint starts on its own.)")
            aws.write(
                "sagemaker",
                "create_endpoint",
                EndpointName=name,
                EndpointConfigName=target.config_name,
                Tags=self.spec.all_tags(),
            )
            return
        self.update(current, target, scaled)

    def update(self, current: Mapping[str, Any], target: Target, scaled: str | None) -> None:
        aws, name, policy = self.aws, self.spec.name, self.spec.update
        params: dict[str, Any] = {"EndpointName": name, "EndpointConfigName": target.config_name}
        how = "blue/green, all at once"
        if policy is not None:
            params["DeploymentConfig"] = policy.deployment_config()
            how = f"{policy.kind}" + (f" {policy.percent}%" if policy.percent else "")
            if self.spec.instance_type.startswith("ml.inf1."):
                aws.echo("SageMaker applies no deployment guardrails to Inf1 instances: this update goes all at once.")
        if scaled == "deregister":
            aws.echo("Autoscaling is off during the update (the instance type changes), and back on after it.")
            autoscale.deregister(aws, name, target.variant)
        elif scaled == "retain":
            # Keep the instance count autoscaling chose, not the config's initial one; data capture
            # still comes from the new config.
            params["RetainAllVariantProperties"] = True
            params["ExcludeRetainedVariantProperties"] = [{"VariantPropertyType": "DataCaptureConfig"}]
        aws.echo(f"Updating endpoint {name} ({how}): {current['EndpointConfigName']} -> {target.config_name}.")
        aws.write("sagemaker", "update_endpoint", **params)

    def finish(self, target: Target, started_ms: int) -> None:
        aws, name = self.aws, self.spec.name
        tail = LogTail(aws, log_group(name), started_ms)
        timeout_s = self.timeout_s + (self.spec.update.duration_s() if self.spec.update else 0)
        final = until_settled(aws, name, Progress(self.stream, name), tail, timeout_s=timeout_s)
        running = str(final.get("EndpointConfigName"))
        if final.get("EndpointStatus") == "InService" and running == target.config_name:
            self.scale(target)
            removed = self.sweep(target)
            aws.echo(f"Endpoint {name} is InService: {final.get('EndpointArn')}")
            if removed:
                aws.echo("Removed what it no longer uses: " + ", ".join(removed) + ".")
            return
        if final.get("EndpointStatus") == "InService":  # rolled back to the configuration it had
            inventory.sweep(aws, name, [running], inventory.models_in(aws, running))
        raise DeployFailed(failure_report(name, final, target.config_name, list(tail.last)))

    def scale(self, target: Target) -> None:
        scale, spec = self.spec.autoscale, self.spec
        if scale is None:
            return
        is_async = spec.async_output is not None
        if autoscale.up_to_date(self.aws, spec.name, target.variant, scale, is_async=is_async):
            self.aws.echo(f"Autoscaling {scale.min}-{scale.max} is up to date.")
            return
        autoscale.apply(self.aws, spec.name, target.variant, scale, is_async=is_async, tags=spec.all_tags())

    def sweep(self, target: Target) -> list[str]:
        return inventory.sweep(self.aws, self.spec.name, [target.config_name], [target.model_name])

    def dry_run_tail(self, target: Target) -> None:
        if self.wait:
            self.aws.echo("  then wait until InService, and then:")
            self.scale(target)
            self.sweep(target)


def refuse_busy(current: Mapping[str, Any] | None, config_name: str) -> None:
    """An endpoint mid-change takes no other change; one going to this very config is waited on."""
    if current is None or current["EndpointStatus"] not in BUSY or current["EndpointConfigName"] == config_name:
        return
    raise AwsConflict(
        f"Endpoint {current['EndpointName']} is {current['EndpointStatus']} (another deploy or an update in "
        "progress). Wait until it is InService (`sagehost endpoints`), then deploy again."
    )


def refuse_conversion(current: Mapping[str, Any], spec: DeploySpec) -> None:
    """SageMaker cannot turn an instance endpoint into a serverless one in place.
    https://docs.aws.amazon.com/sagemaker/latest/dg/serverless-endpoints-create-config.html"""
    variants = current.get("ProductionVariants") or [{}]
    was_serverless = "CurrentServerlessConfig" in variants[0] or "DesiredServerlessConfig" in variants[0]
    if spec.serverless is not None and not was_serverless:
        raise PreflightFailed(
            f"Endpoint {spec.name} runs on instances; SageMaker cannot update it to serverless. "
            f"Delete it first (`sagehost delete {spec.name}`) or deploy under another name."
        )


def failure_report(name: str, final: Mapping[str, Any], wanted: str, log_lines: list[str]) -> str:
    status = final.get("EndpointStatus")
    reason = str(final.get("FailureReason") or "SageMaker gave no reason.")
    if status == "InService":
        running = final.get("EndpointConfigName")
        head = f"The update of endpoint {name} to {wanted} was rolled back; it still runs {running}."
    else:
        head = f"Endpoint {name} is {status}."
    lines = [head, f"Reason: {reason}"]
    if log_lines:
        lines += [f"Last log lines ({log_group(name)}):", *(f"  | {line}" for line in log_lines)]
    else:
        lines.append(f"No log lines yet in {log_group(name)}.")
    lines += [f"Likely cause: {advice}" for advice in diagnose(reason, log_lines)]
    return "\n".join(lines)
