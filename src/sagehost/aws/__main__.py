from __future__ import annotations

from sagehost.aws.cli import aws

aws(prog_name="sagehost")
