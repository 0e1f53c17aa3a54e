"""`sagehost endpoints`: the endpoints sagehost made, as a table a person reads at a glance."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sagehost.aws import inventory
from sagehost.aws.session import Aws

HEADER = ("NAME", "STATUS", "CAPACITY", "AUTOSCALING", "UPDATED")


def rows(aws: Aws) -> list[tuple[str, ...]]:
    targets = {
        t["ResourceId"]: t
        for t in aws.list(
            "application-autoscaling", "describe_scalable_targets", "ScalableTargets", ServiceNamespace="sagemaker"
        )
    }
    found: list[tuple[str, ...]] = []
    for summary in sorted(inventory.endpoints(aws), key=lambda e: str(e["EndpointName"])):
        name = str(summary["EndpointName"])
        described = aws.find("sagemaker", "describe_endpoint", EndpointName=name)
        if described is None:  # deleted since it was listed
            continue
        config = aws.find("sagemaker", "describe_endpoint_config", EndpointConfigName=described["EndpointConfigName"])
        variants = described.get("ProductionVariants") or [{}]
        found.append(
            (
                name,
                str(described["EndpointStatus"]),
                capacity(variants[0], config or {}),
                scaling(targets.get(f"endpoint/{name}/variant/{variants[0].get('VariantName')}")),
                str(described.get("LastModifiedTime", ""))[:19],
            )
        )
    return found


def capacity(variant: Mapping[str, Any], config: Mapping[str, Any]) -> str:
    serverless = variant.get("CurrentServerlessConfig") or variant.get("DesiredServerlessConfig")
    if serverless:
        return f"serverless {serverless.get('MemorySizeInMB')} MB x{serverless.get('MaxConcurrency')}"
    configured: Mapping[str, Any] = next(
        (v for v in config.get("ProductionVariants", []) if v.get("VariantName") == variant.get("VariantName")), {}
    )
    count = variant.get("CurrentInstanceCount", configured.get("InitialInstanceCount", "?"))
    kind = " async" if config.get("AsyncInferenceConfig") else ""
    return f"{count} x {configured.get('InstanceType', '?')}{kind}"


def scaling(target: Mapping[str, Any] | None) -> str:
    return "-" if target is None else f"{target['MinCapacity']}-{target['MaxCapacity']}"


def table(found: list[tuple[str, ...]]) -> str:
    if not found:
        return "No endpoints made by sagehost in this region."
    widths = [max(len(row[i]) for row in [HEADER, *found]) for i in range(len(HEADER))]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in [HEADER, *found]
    )
