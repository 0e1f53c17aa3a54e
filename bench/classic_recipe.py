"""The classic SageMaker bring-your-own recipe, as AWS's scikit_bring_your_own example runs it.

nginx (port) -> gunicorn (gevent workers, unix socket) -> this Flask app, which parses the CSV
body with pandas (`read_csv`) and calls the model once per request; any other content type is
415, as in AWS's example. Two additions a user of that recipe would write, off unless asked for:
`CLASSIC_METHOD` (default predict) names the model's method, as such apps hard-code it, and
`CLASSIC_JSON=1` also takes a JSON record or list of records into a DataFrame of named columns,
as a pipeline of named columns needs (bench/run.py's fraud model).
Written here in that shape to measure against; it is not part of sagehost.
"""

from __future__ import annotations

import io
import json
import os

import flask
import joblib
import pandas as pd

model = joblib.load(os.path.join(os.environ["MODEL_DIR"], "model.joblib"))
method = getattr(model, os.environ.get("CLASSIC_METHOD", "predict"))
app = flask.Flask(__name__)


@app.route("/ping", methods=["GET"])
def ping() -> flask.Response:
    return flask.Response(response="\n", status=200 if model is not None else 404, mimetype="application/json")


@app.route("/invocations", methods=["POST"])
def invocations() -> flask.Response:
    if flask.request.content_type == "application/json" and os.environ.get("CLASSIC_JSON") == "1":
        record = json.loads(flask.request.data)
        predictions = method(pd.DataFrame(record if isinstance(record, list) else [record]))
        return flask.Response(response=json.dumps(predictions.tolist()), status=200, mimetype="application/json")
    if flask.request.content_type != "text/csv":
        return flask.Response(response="This predictor only supports CSV data", status=415, mimetype="text/plain")
    data = pd.read_csv(io.StringIO(flask.request.data.decode("utf-8")), header=None)
    predictions = method(data.values)
    out = io.StringIO()
    pd.DataFrame(predictions).to_csv(out, header=False, index=False)
    return flask.Response(response=out.getvalue(), status=200, mimetype="text/csv")
