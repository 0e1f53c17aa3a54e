"""The proxy users write by hand today, in that shape: Flask + requests under gunicorn, in front
of a scoring server on another port. Written here to measure against; not part of sagehost.

    UPSTREAM=http://127.0.0.1:9090/invocations gunicorn -k gevent -w 2 flask_proxy:app
"""

from __future__ import annotations

import os

import flask
import requests

UPSTREAM = os.environ["UPSTREAM"]
HEALTH = os.environ.get("UPSTREAM_HEALTH", "/ping")
session = requests.Session()  # keep-alive to the upstream, as a careful hand-written proxy does
app = flask.Flask(__name__)


@app.route("/ping", methods=["GET"])
def ping() -> flask.Response:
    base = UPSTREAM.split("/", 3)[:3]
    try:
        healthy = session.get("/".join(base) + HEALTH, timeout=2).ok
    except requests.RequestException:
        healthy = False
    return flask.Response("", status=200 if healthy else 503)


@app.route("/invocations", methods=["POST"])
def invocations() -> flask.Response:
    headers = {k: v for k, v in flask.request.headers.items() if k.lower() in ("content-type", "accept")}
    answer = session.post(UPSTREAM, data=flask.request.get_data(), headers=headers, timeout=60)
    return flask.Response(answer.content, status=answer.status_code, content_type=answer.headers.get("Content-Type"))
