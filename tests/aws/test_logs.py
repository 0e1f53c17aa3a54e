"""`sagehost logs NAME`: CloudWatch lines of an endpoint, from moto, at once or followed."""

from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
import threading
import time

from tests.aws.conftest import Cloud

GROUP = "/aws/sagemaker/Endpoints/iris"
STREAM = "AllTraffic/i-0123456789abcdef0"


def write(cloud: Cloud, *lines: str, ago_s: float = 0) -> None:
    logs = cloud.client("logs")
    with contextlib.suppress(logs.exceptions.ResourceAlreadyExistsException):
        logs.create_log_group(logGroupName=GROUP)
    with contextlib.suppress(logs.exceptions.ResourceAlreadyExistsException):
        logs.create_log_stream(logGroupName=GROUP, logStreamName=STREAM)
    at = int((time.time() - ago_s) * 1000)
    events = [{"timestamp": at + i, "message": line} for i, line in enumerate(lines)]
    logs.put_log_events(logGroupName=GROUP, logStreamName=STREAM, logEvents=events)


def test_logs_prints_the_lines_since_a_moment(cloud: Cloud) -> None:
    write(cloud, "old: started yesterday", ago_s=7200)
    write(cloud, "sagehost: model.joblib loaded", "listening on 0.0.0.0:8080")

    result = cloud.run("logs", "iris", "--since", "1h")

    assert result.exit_code == 0, result.output
    assert result.output.splitlines() == [
        f"{STREAM}: sagehost: model.joblib loaded",
        f"{STREAM}: listening on 0.0.0.0:8080",
    ]
    assert "started yesterday" in cloud.run("logs", "iris", "--since", "3h").output


def test_logs_of_an_endpoint_without_any(cloud: Cloud) -> None:
    result = cloud.run("logs", "ghost")
    assert result.exit_code == 0 and "No log lines for ghost in the last 10m" in result.output


def test_a_bad_since_is_refused(cloud: Cloud) -> None:
    result = cloud.run("logs", "iris", "--since", "ten minutes")
    assert result.exit_code == 2 and "expected a number and s, m, h or d" in result.output


def test_follow_prints_new_lines_until_interrupted(cloud: Cloud) -> None:
    write(cloud, "first line")
    command = [sys.executable, "-m", "sagehost.aws", "logs", "iris", "--follow", "--since", "5m"]
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True) as process:
        deadline = threading.Timer(60, process.kill)  # a line that never comes ends the test, not the run
        deadline.start()
        try:
            assert process.stdout is not None
            assert process.stdout.readline().strip() == f"{STREAM}: first line"
            write(cloud, "second line, written while following")
            assert process.stdout.readline().strip() == f"{STREAM}: second line, written while following"
        finally:
            deadline.cancel()
            process.send_signal(signal.SIGINT)
            code = process.wait(timeout=30)
    assert code == 0
