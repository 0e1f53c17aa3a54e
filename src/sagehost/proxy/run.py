"""`sagehost proxy`: bind, start the scoring server beside us (when given a command), fork
workers that forward to it. Everything a misconfiguration can break is checked before the fork,
so it stops the process with one readable paragraph."""

from __future__ import annotations

import sys
from collections.abc import Callable

from sagehost import supervisor
from sagehost.config import Settings
from sagehost.errors import ConfigError, StartupError
from sagehost.http.client import Client, Origin
from sagehost.proxy import adapters, keeper, scheduling
from sagehost.proxy.health import UpstreamHealth
from sagehost.proxy.relay import RelayConnection
from sagehost.proxy.service import ProxyService
from sagehost.server import bind, report_startup_failure, run_app
from sagehost.service import Service

_LOCAL_HOSTS = frozenset({"127.0.0.1", "localhost", "::1", "0.0.0.0"})


def proxy(settings: Settings) -> int:
    try:
        upstream = check(settings)
        hooks = _hooks(settings)
        adapter = adapters.adapter(settings.adapter)
        sock = bind(settings.host, settings.port)
    except (StartupError, OSError) as exc:
        report_startup_failure(exc if isinstance(exc, StartupError) else ConfigError(str(exc)))
        return 1

    async def load_service() -> Service:
        client = Client(settings.upstream_max_connection_age, max_body=settings.upstream_body_limit)
        health = UpstreamHealth(client, upstream, settings.upstream_health)
        return ProxyService(settings, client, health, adapter, hooks)

    def work(ready_fd: int) -> int:
        if settings.yield_cpu:
            scheduling.yield_cpu()
        return run_app(sock, settings, load_service, RelayConnection)

    sidecar: Callable[[], int] | None = None
    if settings.upstream_cmd:
        command, scratch = settings.upstream_cmd, settings.upstream_scratch or settings.scratch_dir / "upstream"

        def sidecar() -> int:
            return keeper.keep(command, scratch)

    return supervisor.supervise(sock, settings.workers, work, wait_ready=False, sidecar=sidecar)


def check(settings: Settings) -> str:
    """The upstream URL, once it is known not to collide with the contract's port."""
    if not settings.upstream:
        raise ConfigError("sagehost proxy needs the scoring server's URL: --upstream http://127.0.0.1:9090/score.")
    try:
        origin = Origin.of(settings.upstream)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    if origin.host in _LOCAL_HOSTS:
        if origin.port == settings.port:
            raise ConfigError(
                f"The upstream's port {origin.port} is the port sagehost answers SageMaker on. "
                "Start the scoring server on another port."
            )
        low_high = settings.safe_port_range
        if low_high is not None and not low_high[0] <= origin.port <= low_high[1]:
            raise ConfigError(
                f"The upstream's port {origin.port} is outside SAGEMAKER_SAFE_PORT_RANGE "
                f"({low_high[0]}-{low_high[1]}), the ports SageMaker lets this container use. Pick one inside it."
            )
    return settings.upstream


def _hooks(settings: Settings) -> tuple[adapters.RequestHook | None, adapters.ResponseHook | None]:
    code_dir = str(settings.resolved_code_dir)
    if code_dir not in sys.path:
        sys.path.insert(0, code_dir)
    return (
        adapters.hook(settings.adapter_request, "--adapter-request"),
        adapters.hook(settings.adapter_response, "--adapter-response"),
    )
