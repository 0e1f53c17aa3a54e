"""The AWS commands' own parts: attaching them to a group, the missing extra, the live progress line."""

from __future__ import annotations

import io
import subprocess
import sys

import click
from click.testing import CliRunner

from sagehost.aws.cli import COMMANDS, INSTALL_HINT, attach
from sagehost.aws.wait import Progress


def test_attach_adds_every_aws_command_to_a_group() -> None:
    @click.group()
    def main() -> None:
        pass

    attach(main)

    assert set(main.commands) == {c.name for c in COMMANDS}
    assert {"deploy", "endpoints", "delete", "logs", "push", "transform", "gateway"} <= set(main.commands)
    assert "--rollback-alarm" in CliRunner().invoke(main, ["deploy", "--help"]).output


def test_the_sagehost_command_carries_the_aws_commands() -> None:
    from sagehost import cli

    assert {c.name for c in COMMANDS} <= set(cli.main.commands)


def test_without_boto3_the_commands_name_the_extra_to_install() -> None:
    code = (
        "import sys; sys.modules['boto3'] = sys.modules['botocore'] = None\n"
        "from sagehost.aws.cli import aws\n"
        "aws(['endpoints'], prog_name='sagehost')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert INSTALL_HINT in done.stderr and "Traceback" not in done.stderr


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_on_a_terminal_the_status_line_is_rewritten_and_log_lines_scroll_above_it() -> None:
    now = [100.0]
    terminal = Terminal()
    progress = Progress(terminal, "iris", clock=lambda: now[0])

    progress.status("Creating")
    now[0] += 75
    progress.log("AllTraffic/i-1: model loaded")
    progress.status("InService")
    progress.close()

    assert terminal.getvalue() == (
        "\r\x1b[Kiris: Creating (0m00s)"
        "\r\x1b[K  | AllTraffic/i-1: model loaded\n"
        "iris: Creating (1m15s)"
        "\r\x1b[Kiris: InService (1m15s)\n"
    )


def test_elsewhere_one_line_per_status_change() -> None:
    log = io.StringIO()
    progress = Progress(log, "iris", clock=lambda: 0.0)
    for status in ("Creating", "Creating", "InService"):
        progress.status(status)
    progress.close()
    assert log.getvalue() == "iris: Creating (0m00s)\niris: InService (0m00s)\n"
