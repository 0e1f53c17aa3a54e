"""Facts of the SageMaker hosting contract, in one place.

Sources: https://docs.aws.amazon.com/sagemaker/latest/dg/your-algorithms-inference-code.html
and https://docs.aws.amazon.com/sagemaker/latest/dg/your-algorithms-batch-code.html
(see also shared/research/sagemaker-contract.md).
"""

from __future__ import annotations

DEFAULT_PORT = 8080
DEFAULT_HOST = "0.0.0.0"  # platform traffic arrives from link-local addresses, never loopback
BASE_DIR = "/opt/ml"
MODEL_SUBDIR = "model"
CODE_SUBDIR = "code"
DEFAULT_PROGRAM = "inference.py"

MIB = 1024 * 1024
# InvokeEndpoint caps request and response bodies at 6 MiB (BodyBlob max 6291456).
DEFAULT_MAX_PAYLOAD_MB = 6
# SAGEMAKER_MAX_PAYLOAD_IN_MB=0: Batch Transform streams a chunked body of unknown length
# (MaxPayloadInMB=0), so no limit of ours may cut it; a byte count no body reaches stands for none.
NO_PAYLOAD_LIMIT = 2**62
# The platform gives a real-time invocation 60 s; the toolkits' worker timeout defaults to it too.
DEFAULT_TIMEOUT_S = 60.0
# SIGTERM, then SIGKILL 30 s later: drain well inside that window.
SHUTDOWN_GRACE_S = 25.0
PING_TIMEOUT_S = 2.0

CUSTOM_ATTRIBUTES_HEADER = "x-amzn-sagemaker-custom-attributes"
INFERENCE_ID_HEADER = "x-amzn-sagemaker-inference-id"

# Image labels SageMaker checks at CreateModel time.
LABEL_BIND_TO_PORT = "com.amazonaws.sagemaker.capabilities.accept-bind-to-port"
LABEL_MULTI_MODELS = "com.amazonaws.sagemaker.capabilities.multi-models"

# Batch Transform spells the strategy this way on the container side (the API says MultiRecord).
BATCH_STRATEGIES = ("MULTI_RECORD", "SINGLE_RECORD")
FAILURE_REASON_MAX_CHARS = 1024
