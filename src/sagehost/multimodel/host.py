"""The multi-model server's processes: no model at start, the shared registry made before the
workers fork, each worker serving the App with the /models routes on the shared socket."""

from __future__ import annotations

import importlib
import importlib.util
import logging
import os
import shutil
import socket
import tempfile
from pathlib import Path

from sagehost import contract, supervisor
from sagehost.config import Settings
from sagehost.multimodel.budget import budget_bytes
from sagehost.multimodel.registry import Registry
from sagehost.multimodel.routes import Routes
from sagehost.multimodel.shared import Shared
from sagehost.server import run_app
from sagehost.service import Service

log = logging.getLogger("sagehost.multimodel")


def serve_models(sock: socket.socket, settings: Settings) -> int:
    """Run the multi-model server on `sock` until SIGTERM; the exit code."""
    budget = budget_bytes(settings)
    settings.scratch_dir.mkdir(parents=True, exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix="models-", dir=settings.scratch_dir))
    shared = Shared.create(root, settings.workers, budget)
    log.info(
        "Multi-model server: no model loaded yet; the models may take %.0f MiB (%s), every worker's copy counted",
        budget / contract.MIB,
        "--model-memory-mb" if settings.model_memory_mb else "a share of the container's memory",
    )
    parent = os.getpid()
    try:
        if settings.workers == 1:
            return _worker(sock, settings, shared)
        _import_before_fork()
        return supervisor.supervise(sock, settings.workers, lambda _: _worker(sock, settings, shared), False)
    finally:
        if os.getpid() == parent:
            shutil.rmtree(root, ignore_errors=True)


def _import_before_fork() -> None:
    """scikit-learn's import (scipy's, mostly) takes ~1.5 s: done once here rather than in every
    worker at its first model, and its pages are shared. It survives fork (`serve` preloads
    scikit-learn models before forking); the runtimes that do not are imported by each worker."""
    if importlib.util.find_spec("sklearn") is not None:
        importlib.import_module("sklearn.base")


def _worker(sock: socket.socket, settings: Settings, shared: Shared) -> int:
    registry = Registry(shared, settings)

    async def load_service() -> Service:
        await registry.start()
        return registry.home

    try:
        return run_app(sock, settings, load_service, models=Routes(registry))
    finally:
        registry.close()
