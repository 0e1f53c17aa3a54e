"""sagehost's own ASGI app under granian instead of uvicorn: the server choice, measured.

    granian --interface asgi --workers N --loop uvloop bench.granian_app:app
    (SAGEHOST_MODEL_DIR names the model)

Same app, same model loading, warm-up and micro-batching as `sagehost serve`; only the HTTP
server differs. Each worker loads its own model at lifespan start (granian forks before the
app's lifespan runs, so there is no preload to share).
"""

from __future__ import annotations

import os

from sagehost.app import App
from sagehost.config import Settings
from sagehost.predictor import MODEL_THREAD
from sagehost.server import build_service, load_and_warm
from sagehost.service import Service

settings = Settings.from_environ(os.environ)


async def load_service() -> Service:
    return build_service(await MODEL_THREAD.run(load_and_warm, settings), settings)


app = App(settings, load_service)
