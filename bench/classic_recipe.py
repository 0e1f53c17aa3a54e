"""The classic SageMaker bring-your-own recipe, as AWS's scikit_bring_your_own example runs it.

nginx (port) -> gunicorn (gevent workers, unix socket) -> this Flask app, which parses the CSV
body with pandas and calls the model once per request. Written here in that shape to measure
against; it is not part of sagehost.
"""

from __future__ import annotations

import io
import os

import flask
import joblib
import pandas as pd

model = joblib.load(os.path.join(os.environ["MODEL_DIR"], "model.joblib"))
app = flask.Flask(__name__)


@app.route("/ping", methods=["GET"])
def ping() -> flask.Response:
    return flask.Response(response="\n", status=200 if model is not None else 404, mimetype="application/json")


@app.route("/invocations", methods=["POST"])
def invocations() -> flask.Response:
    if flask.request.content_type != "text/csv":
        return flask.Response(response="This predictor only supports CSV data", status=415, mimetype="text/plain")
    data = pd.read_csv(io.StringIO(flask.request.data.decode("utf-8")), header=None)
    predictions = model.predict(data.values)
    out = io.StringIO()
    pd.DataFrame({"results": predictions}).to_csv(out, header=False, index=False)
    return flask.Response(response=out.getvalue(), status=200, mimetype="text/csv")
