"""bench/multimodel.py's peer: the AWS toolkit's multi-model server with the minimal handler
service sagemaker-inference documents, for a scikit-learn model.joblib.
https://github.com/aws/sagemaker-inference-toolkit#implementation-steps

Run as a script (from its own venv, MMS_VENV; see bench/multimodel.py) it starts the server as
`sagemaker_inference.model_server.start_model_server` does in a multi-model container
(SAGEMAKER_MULTI_MODEL=true: the /models API on SAGEMAKER_BIND_TO_PORT), except that its
properties file goes into the directory given, not /etc, and the server runs in the foreground
(so the bench stops it by its process group). Not part of sagehost; not imported by it.
"""

from __future__ import annotations

import os
import sys

import joblib
import numpy as np
from sagemaker_inference import decoder, default_inference_handler, encoder
from sagemaker_inference.default_handler_service import DefaultHandlerService
from sagemaker_inference.transformer import Transformer


class HandlerService(DefaultHandlerService):  # type: ignore[misc]
    """What MMS instantiates per model (SAGEMAKER_HANDLER=mms_handler names this module, which
    must hold this one class: MMS refuses a module of two)."""

    class Handler(default_inference_handler.DefaultInferenceHandler):  # type: ignore[misc]
        def default_model_fn(self, model_dir: str, context: object = None) -> object:
            return joblib.load(os.path.join(model_dir, "model.joblib"))

        def default_input_fn(self, input_data: bytes, content_type: str, context: object = None) -> object:
            data = decoder.decode(input_data, content_type)
            return data.reshape(1, -1) if data.ndim == 1 else data  # one CSV row decodes to 1-D

        def default_predict_fn(self, data: object, model: object, context: object = None) -> object:
            return model.predict(data)  # type: ignore[attr-defined]

        def default_output_fn(self, prediction: object, accept: str, context: object = None) -> object:
            return encoder.encode(np.asarray(prediction), accept)

    def __init__(self) -> None:
        super().__init__(transformer=Transformer(default_inference_handler=self.Handler()))


def main(home: str) -> None:
    os.environ.setdefault("SAGEMAKER_HANDLER", "mms_handler")
    from sagemaker_inference import environment, model_server

    config = os.path.join(home, "mms.properties")
    with open(config, "w") as out:
        out.write(model_server._generate_mms_config_properties(environment.Environment()))
    os.environ["TMPDIR"] = home  # MMS keeps its pid file in the temp dir: one per bench run
    command = ["multi-model-server", "--start", "--foreground", "--model-store", "/", "--mms-config", config]
    os.execvp(command[0], [*command, "--log-config", model_server.DEFAULT_MMS_LOG_FILE])


if __name__ == "__main__":
    main(sys.argv[1])
