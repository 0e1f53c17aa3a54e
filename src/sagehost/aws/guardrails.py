"""`--update`: SageMaker's deployment guardrails for an endpoint update (DeploymentConfig).

Every UpdateEndpoint is blue/green, all at once, by default. Canary and linear traffic shifting,
rolling batches, a baking period and CloudWatch alarms that roll the update back are asked for
with a DeploymentConfig, which no other deploy CLI sends (research/deploy-anchors.md §2).
Limits: https://docs.aws.amazon.com/sagemaker/latest/APIReference/API_TrafficRoutingConfig.html,
API_RollingUpdatePolicy.html, API_BlueGreenUpdatePolicy.html, API_AutoRollbackConfig.html;
exclusions: https://docs.aws.amazon.com/sagemaker/latest/dg/deployment-guardrails-exclusions.html
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from sagehost.aws.errors import AwsOptionError

STRATEGIES = "all-at-once|blue-green|canary:PERCENT:WAIT_MINUTES|linear:PERCENT:WAIT_MINUTES|rolling:BATCH_PERCENT"
MAX_WAIT_MINUTES = 60  # WaitIntervalInSeconds and TerminationWaitInSeconds: 0-3600
MAX_ALARMS = 10
_PERCENT_RANGE = {"canary": (1, 50), "linear": (10, 50), "rolling": (5, 50)}


@dataclass(frozen=True)
class UpdatePolicy:
    kind: str
    """all-at-once (blue-green is its other name), canary, linear or rolling."""
    percent: int = 0
    wait_minutes: int = 0
    alarms: tuple[str, ...] = ()
    bake_minutes: int = 0

    def deployment_config(self) -> dict[str, Any]:
        config: dict[str, Any] = {}
        if self.kind == "rolling":
            config["RollingUpdatePolicy"] = {
                "MaximumBatchSize": {"Type": "CAPACITY_PERCENT", "Value": self.percent},
                "WaitIntervalInSeconds": self.bake_minutes * 60,  # the bake after each batch
            }
        else:
            routing: dict[str, Any] = {"Type": self.kind.upper().replace("-", "_"), "WaitIntervalInSeconds": 0}
            if self.kind in ("canary", "linear"):
                size = "CanarySize" if self.kind == "canary" else "LinearStepSize"
                routing[size] = {"Type": "CAPACITY_PERCENT", "Value": self.percent}
                routing["WaitIntervalInSeconds"] = self.wait_minutes * 60
            config["BlueGreenUpdatePolicy"] = {
                "TrafficRoutingConfiguration": routing,
                "TerminationWaitInSeconds": self.bake_minutes * 60,
            }
        if self.alarms:
            config["AutoRollbackConfiguration"] = {"Alarms": [{"AlarmName": name} for name in self.alarms]}
        return config

    def duration_s(self) -> float:
        """The longest the guardrails themselves may keep an update going (on top of provisioning)."""
        steps = math.ceil(100 / self.percent) if self.percent else 1
        waits = self.wait_minutes * (steps if self.kind == "linear" else 1)
        bakes = self.bake_minutes * (steps if self.kind == "rolling" else 1)
        return float((waits + bakes) * 60)


def parse(text: str | None, alarms: tuple[str, ...], bake_minutes: int | None) -> UpdatePolicy | None:
    """The policy for `--update TEXT --rollback-alarm … --bake-minutes N`; alarms or a bake alone
    mean a blue/green update all at once with them."""
    if text is None:
        if not alarms and bake_minutes is None:
            return None
        text = "all-at-once"
    kind, *numbers = text.split(":")
    kind = "all-at-once" if kind == "blue-green" else kind
    expected = {"all-at-once": 0, "canary": 2, "linear": 2, "rolling": 1}
    if kind not in expected or len(numbers) != expected[kind] or not all(n.isdigit() for n in numbers):
        raise AwsOptionError(f"--update {text!r}: expected {STRATEGIES}, e.g. canary:10:5.")
    percent = int(numbers[0]) if numbers else 0
    if kind in _PERCENT_RANGE:
        low, high = _PERCENT_RANGE[kind]
        if not low <= percent <= high:
            raise AwsOptionError(f"--update {kind}: SageMaker takes {low}-{high} percent of the fleet, not {percent}.")
    wait = int(numbers[1]) if len(numbers) > 1 else 0
    bake = bake_minutes or 0
    if wait > MAX_WAIT_MINUTES or bake > MAX_WAIT_MINUTES:
        raise AwsOptionError(f"--update waits and --bake-minutes are at most {MAX_WAIT_MINUTES} minutes each.")
    if len(alarms) > MAX_ALARMS:
        raise AwsOptionError(f"--rollback-alarm: SageMaker watches at most {MAX_ALARMS} alarms.")
    return UpdatePolicy(kind, percent, wait, tuple(alarms), bake)
