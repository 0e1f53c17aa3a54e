"""Waiting on an endpoint: its status and elapsed time, and its CloudWatch log lines as they come.

boto3's `endpoint_in_service` waiter polls every 30 s and says nothing meanwhile; users sit
through 10-20 silent minutes and then read "Failed". Here the first polls come fast (a status
that settles in a second is seen in a second) and slow down to one every 15 s, and each poll
also prints the new lines of /aws/sagemaker/Endpoints/NAME, where the container's own words are.
https://docs.aws.amazon.com/sagemaker/latest/dg/logging-cloudwatch.html
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from typing import Any, TextIO

from sagehost.aws.errors import AwsNotFound, AwsPermissionDenied, DeployFailed
from sagehost.aws.session import Aws

SETTLED = frozenset({"InService", "Failed", "OutOfService", "UpdateRollbackFailed"})
POLL_FIRST_S = 0.5
POLL_MAX_S = 15.0
TIMEOUT_S = 3600.0  # the boto3 waiter's own bound: 120 polls of 30 s
KEPT_LOG_LINES = 20


class Progress:
    """One live status line on a terminal (log lines scroll above it); one line per change elsewhere."""

    def __init__(self, stream: TextIO, label: str, clock: Callable[[], float] = time.monotonic) -> None:
        self.stream = stream
        self.label = label
        self.clock = clock
        self.started = clock()
        self.tty = stream.isatty()
        self.shown: str | None = None

    def status(self, status: str) -> None:
        line = f"{self.label}: {status} ({self.elapsed()})"
        if self.tty:
            self.stream.write("\r\x1b[K" + line)
        elif status != self.shown:
            self.stream.write(line + "\n")
        self.shown = status
        self.stream.flush()

    def log(self, line: str) -> None:
        if self.tty:
            self.stream.write("\r\x1b[K")
        self.stream.write(f"  | {line}\n")
        if self.tty and self.shown is not None:
            self.stream.write(f"{self.label}: {self.shown} ({self.elapsed()})")
        self.stream.flush()

    def close(self) -> None:
        if self.tty and self.shown is not None:
            self.stream.write("\n")
            self.stream.flush()

    def elapsed(self) -> str:
        seconds = int(self.clock() - self.started)
        return f"{seconds // 60}m{seconds % 60:02d}s"


class LogTail:
    """New events of a CloudWatch log group since a moment, polled with FilterLogEvents."""

    def __init__(self, aws: Aws, group: str, start_ms: int) -> None:
        self.aws = aws
        self.group = group
        self.start_ms = start_ms
        self.seen: set[str] = set()
        self.last: deque[str] = deque(maxlen=KEPT_LOG_LINES)
        self.refused = False

    def poll(self) -> list[str]:
        if self.refused:
            return []
        try:
            events = self._events()
        except AwsNotFound:  # the group appears once the first container writes
            return []
        except AwsPermissionDenied:
            self.refused = True
            return [f"(log lines not shown: logs:FilterLogEvents on {self.group} was refused)"]
        lines = []
        for event in sorted(events, key=lambda e: (e.get("timestamp", 0), e.get("eventId", ""))):
            if event.get("eventId") in self.seen:
                continue
            self.seen.add(event.get("eventId", ""))
            self.start_ms = max(self.start_ms, int(event.get("timestamp", 0)))
            line = f"{event.get('logStreamName', '')}: {str(event.get('message', '')).rstrip()}"
            self.last.append(line)
            lines.append(line)
        return lines

    def _events(self) -> list[dict[str, Any]]:
        events: list[dict[str, Any]] = []
        params: dict[str, Any] = {"logGroupName": self.group, "startTime": self.start_ms}
        while True:
            page = self.aws.read("logs", "filter_log_events", **params)
            events += page.get("events", [])
            token = page.get("nextToken")
            if not token or token == params.get("nextToken"):
                return events
            params["nextToken"] = token


def log_group(name: str) -> str:
    return f"/aws/sagemaker/Endpoints/{name}"


def until_settled(
    aws: Aws,
    name: str,
    progress: Progress,
    tail: LogTail,
    *,
    timeout_s: float = TIMEOUT_S,
    sleep: Callable[[float], None] = time.sleep,
) -> dict[str, Any]:
    """Poll DescribeEndpoint until the status settles; the last description."""
    interval = POLL_FIRST_S
    deadline = progress.clock() + timeout_s
    while True:
        described = aws.read("sagemaker", "describe_endpoint", EndpointName=name)
        for line in tail.poll():
            progress.log(line)
        status = str(described.get("EndpointStatus"))
        progress.status(status)
        if status in SETTLED:
            progress.close()
            return dict(described)
        if progress.clock() >= deadline:
            progress.close()
            raise DeployFailed(
                f"Endpoint {name} is still {status} after {progress.elapsed()}; it goes on without sagehost "
                f"watching. See `sagehost endpoints` and the log group {tail.group}."
            )
        sleep(interval)
        interval = min(interval * 2, POLL_MAX_S)


def until_gone(
    aws: Aws,
    name: str,
    progress: Progress,
    *,
    timeout_s: float = TIMEOUT_S,
    sleep: Callable[[float], None] = time.sleep,
) -> None:
    """Poll until the endpoint no longer exists (after DeleteEndpoint)."""
    interval = POLL_FIRST_S
    deadline = progress.clock() + timeout_s
    while (described := aws.find("sagemaker", "describe_endpoint", EndpointName=name)) is not None:
        progress.status(str(described.get("EndpointStatus")))
        if progress.clock() >= deadline:
            progress.close()
            raise DeployFailed(f"Endpoint {name} is still being deleted after {progress.elapsed()}; try again later.")
        sleep(interval)
        interval = min(interval * 2, POLL_MAX_S)
    progress.status("deleted")
    progress.close()
