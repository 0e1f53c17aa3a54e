"""One boto3 session per command, and the only road to AWS: `read`, `find` and `write`.

Region and credentials come from boto3's usual chain (flags, AWS_PROFILE/AWS_REGION, the shared
config files, SSO, a container or instance role), so sagehost behaves like the AWS CLI beside it.
`AWS_ENDPOINT_URL` and `AWS_ENDPOINT_URL_<SERVICE>` are boto3's own: they point it elsewhere
without any switch in sagehost. Every call runs inside `boundary.translated`. In a dry run,
reads happen (they change nothing and cost nothing) and writes are printed instead of made.
https://boto3.amazonaws.com/v1/documentation/api/latest/guide/credentials.html
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from sagehost.aws.boundary import scrub, translated
from sagehost.aws.errors import AwsCredentialsError, AwsNotFound

USER_AGENT = "sagehost"
# The libraries under boto3 log request headers and bodies at DEBUG (a session token among them):
# held at WARNING whatever the root logger's level is.
_CHATTY_LOGGERS = ("botocore", "boto3", "s3transfer", "urllib3")
_MASKED_KEYS = frozenset({"Environment"})  # a model's environment may hold a user's own secrets


def quiet_aws_loggers() -> None:
    for name in _CHATTY_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)


@dataclass
class Aws:
    """A boto3 session and the clients made from it; every call goes through read/find/write."""

    session: Any
    dry_run: bool = False
    echo: Callable[[str], None] = print
    _clients: dict[str, Any] = field(default_factory=dict)
    _account: str | None = None

    @classmethod
    def connect(
        cls,
        region: str | None = None,
        profile: str | None = None,
        *,
        dry_run: bool = False,
        echo: Callable[[str], None] = print,
    ) -> Aws:
        quiet_aws_loggers()
        with translated("sts", "GetCallerIdentity"):
            import boto3  # type: ignore[import-untyped]

            session = boto3.Session(region_name=region, profile_name=profile)
        return cls(session, dry_run, echo)

    @property
    def region(self) -> str:
        name = self.session.region_name
        if not name:
            raise AwsCredentialsError(
                "No AWS region is configured. Pass --region, set AWS_DEFAULT_REGION, or add one to ~/.aws/config."
            )
        return str(name)

    @property
    def account(self) -> str:
        if self._account is None:
            self._account = str(self.read("sts", "get_caller_identity")["Account"])
        return self._account

    def client(self, service: str) -> Any:
        if service not in self._clients:
            from botocore.config import Config  # type: ignore[import-untyped]

            config = Config(user_agent_extra=USER_AGENT, retries={"mode": "standard"}, read_timeout=70)
            with translated(service, "client"):
                self._clients[service] = self.session.client(service, config=config)
        return self._clients[service]

    def read(self, service: str, method: str, **params: Any) -> Any:
        """A call that changes nothing (Describe, List, Get, Head); made in dry runs too."""
        client = self.client(service)
        with translated(service, operation_name(client, method)):
            return getattr(client, method)(**params)

    def find(self, service: str, method: str, **params: Any) -> Any:
        """`read`, or None when what it asks about does not exist."""
        try:
            return self.read(service, method, **params)
        except AwsNotFound:
            return None

    def list(self, service: str, method: str, key: str, **params: Any) -> list[Any]:
        """Every item under `key` of a listing call, following NextToken."""
        items: list[Any] = []
        while True:
            page = self.read(service, method, **params)
            items += page.get(key, [])
            token = page.get("NextToken")
            if not token or token == params.get("NextToken"):
                return items
            params["NextToken"] = token

    def write(self, service: str, method: str, **params: Any) -> Any:
        """A call that changes something; in a dry run, printed with its key parameters, not made."""
        client = self.client(service)
        operation = operation_name(client, method)
        if self.dry_run:
            self.echo(f"  would call {service} {operation} {render(params)}")
            return None
        with translated(service, operation):
            return getattr(client, method)(**params)


def operation_name(client: Any, method: str) -> str:
    """`create_model` -> `CreateModel`; boto3's managed upload counts as `PutObject`."""
    mapping: Mapping[str, str] = client.meta.method_to_api_mapping
    return mapping.get(method) or {"upload_file": "PutObject"}.get(method, method)


def render(params: Mapping[str, Any]) -> str:
    """`Key=value` pairs, nested keys dotted; tags as `k=v`; a model's environment values hidden."""
    return " ".join(f"{key}={value}" for key, value in _flatten(params, ""))


def _flatten(value: Any, prefix: str) -> list[tuple[str, str]]:
    if isinstance(value, Mapping):
        if prefix.rsplit(".", 1)[-1] in _MASKED_KEYS:
            return [(prefix, "{" + ",".join(f"{k}=…" for k in value) + "}")]
        pairs: list[tuple[str, str]] = []
        for key, item in value.items():
            pairs += _flatten(item, f"{prefix}.{key}" if prefix else str(key))
        return pairs
    if isinstance(value, list | tuple):
        if value and all(isinstance(v, Mapping) and set(v) == {"Key", "Value"} for v in value):
            return [(prefix, ",".join(f"{v['Key']}={v['Value']}" for v in value))]
        pairs = []
        for index, item in enumerate(value):
            pairs += _flatten(item, f"{prefix}[{index}]")
        return pairs
    return [(prefix, scrub(str(value)))]
