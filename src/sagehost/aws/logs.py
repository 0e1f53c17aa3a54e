"""`sagehost logs NAME`: the container's lines from CloudWatch, /aws/sagemaker/Endpoints/NAME.

Polled with FilterLogEvents, as the SageMaker SDK does while it waits: StartLiveTail would push
them, but it needs its own streaming endpoint and the logs:StartLiveTail permission besides.
https://docs.aws.amazon.com/sagemaker/latest/dg/logging-cloudwatch.html
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable

from sagehost.aws.errors import AwsOptionError
from sagehost.aws.session import Aws
from sagehost.aws.wait import LogTail, log_group

FOLLOW_POLL_S = 2.0
_SINCE = re.compile(r"^(\d+)([smhd])$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def since_ms(text: str, now_s: float) -> int:
    """`10m` ago, in epoch milliseconds; s, m, h or d."""
    found = _SINCE.match(text)
    if not found:
        raise AwsOptionError(f"--since {text!r}: expected a number and s, m, h or d, e.g. 10m.")
    return int((now_s - int(found[1]) * _UNIT_S[found[2]]) * 1000)


def show(
    aws: Aws,
    name: str,
    start_ms: int,
    *,
    follow: bool,
    echo: Callable[[str], None],
    sleep: Callable[[float], None] = time.sleep,
) -> int:
    """Print the lines since `start_ms` (and, following, the new ones until interrupted); how many."""
    tail = LogTail(aws, log_group(name), start_ms)
    shown = 0
    try:
        while True:
            for line in tail.poll():
                echo(line)
                shown += 1
            if not follow:
                return shown
            sleep(FOLLOW_POLL_S)
    except KeyboardInterrupt:
        return shown
