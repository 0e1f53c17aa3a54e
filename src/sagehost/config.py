"""Settings: one frozen object built once from the environment and CLI flags.

This is the only module that reads environment variables. Each setting lists the names it
answers to, most specific first: our own `SAGEHOST_*` twin of the CLI flag, then the names
SageMaker and the AWS toolkits use (shared/research/sagemaker-contract.md §1.5).
A CLI flag beats every environment variable, except `SAGEMAKER_BIND_TO_PORT`: SageMaker sets
it for inference pipelines and multi-container endpoints and the container must obey it.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from sagehost import contract
from sagehost.errors import ConfigError

Method = Literal["predict", "predict_proba", "decision_function"]
METHODS: tuple[Method, ...] = ("predict", "predict_proba", "decision_function")
BatchStrategy = Literal["MULTI_RECORD", "SINGLE_RECORD"]
# The model formats of sagehost.formats, named here so the CLI can offer them without importing
# numpy before the thread limits are set.
# Declared types of upstream columns (`--upstream-columns name:type`): a CSV cell is text, and the
# declared type says what the scoring server should receive.
COLUMN_TYPES = ("str", "int", "float", "bool")
Column = tuple[str, str | None]
"""An upstream column: its name and declared type (one of COLUMN_TYPES), or None to guess."""
FLAVORS = ("mlflow", "sklearn", "xgboost", "lightgbm", "catboost", "onnx", "torch", "h2o")


@dataclass(frozen=True, kw_only=True)
class Settings:
    base_dir: Path = Path(contract.BASE_DIR)
    """Root of the SageMaker tree (`SAGEMAKER_BASE_DIR`); /opt/ml on SageMaker."""
    model_dir: Path = Path(contract.BASE_DIR) / contract.MODEL_SUBDIR
    """Where the model is (`SM_MODEL_DIR`); defaults to `<base_dir>/model`."""
    host: str = contract.DEFAULT_HOST
    port: int = contract.DEFAULT_PORT
    workers: int = 1
    """Worker processes (`SAGEMAKER_MODEL_SERVER_WORKERS`, `MODEL_SERVER_WORKERS`); default: CPU count."""
    timeout_s: float = contract.DEFAULT_TIMEOUT_S
    """Longest a prediction may run before the request gets a 504."""
    max_payload_bytes: int = contract.DEFAULT_MAX_PAYLOAD_MB * contract.MIB
    default_accept: str = "application/json"
    default_method: Method | None = None
    """The method when a request names none; unset, the model's own default (predict, or
    predict_proba for H2O MOJOs, as H2O's scorer answers)."""
    target_name: str | None = None
    """Prefix for class labels in named probability answers (`fraud` -> `fraud.0`)."""
    program: str = contract.DEFAULT_PROGRAM
    """The user's script (`SAGEMAKER_PROGRAM`), looked up in `code_dir`."""
    code_dir: Path | None = None
    """Where `program` lives (`SAGEMAKER_SUBMIT_DIRECTORY`); default `<model_dir>/code`."""
    batch_mode: bool = False
    """Batch Transform (`SAGEMAKER_BATCH`)."""
    batch_strategy: BatchStrategy = "MULTI_RECORD"
    max_concurrent_transforms: int | None = None
    max_batch_rows: int = 64
    """Rows one model call may take when requests are micro-batched."""
    max_batch_wait_ms: float = 0.0
    """Extra wait for more rows when other requests are already queued (never when alone)."""
    max_queue: int = 1024
    """Requests a worker holds waiting for the model before answering 503."""
    inline_below_us: float = 100.0
    """Model calls of a size seen to finish faster than this run on the event loop, skipping the
    hop to the model thread; 0 sends every call to the thread."""
    preload: bool | None = None
    """Load the model before forking workers; default: when the model allows it."""
    fast_path: bool = True
    """Lean predict paths for linear models and tree ensembles (same answers, less overhead)."""
    flavor: str | None = None
    """Which model format to serve when the directory holds several (`SAGEHOST_FLAVOR`)."""
    scratch_dir: Path = Path(tempfile.gettempdir()) / "sagehost"
    """Writable scratch space (unpacked model.tar.gz); the model dir may be read-only."""
    log_level: str = "INFO"
    # ---- HTTP limits (nginx's defaults are the anchors: client_header_timeout, client_body_timeout,
    # keepalive_timeout, large_client_header_buffers) ----
    max_header_bytes: int = 64 * 1024
    """Request line plus headers; past it the answer is 431 and the connection closes."""
    header_timeout_s: float = 60.0
    """The request line and headers must arrive whole within this, from their first byte."""
    body_timeout_s: float = 60.0
    """The longest the body may go without a byte arriving; also the grace before the minimum rate applies."""
    min_body_rate: int = 1024
    """Bytes per second a body must average once `body_timeout_s` has passed, else the connection closes."""
    keep_alive_timeout_s: float = 75.0
    """An idle keep-alive connection is closed after this."""
    # ---- proxy mode (`sagehost proxy`) ----
    upstream: str | None = None
    """The scoring server's URL, path included: `http://127.0.0.1:9090/score`."""
    upstream_cmd: str | None = None
    """Command that starts the scoring server; sagehost supervises it."""
    upstream_health: str | None = None
    """The upstream's health path; without one, accepting connections counts as healthy."""
    adapter: str | None = None
    """Payload translation: `scr`, `h2o`, or none (transparent)."""
    adapter_request: str | None = None
    adapter_response: str | None = None
    """`module:function` hooks that transform raw bodies on the way in and out."""
    upstream_columns: tuple[Column, ...] | None = None
    """Field names for headerless rows sent to an adapter, each with its declared type
    (`name:type`, type one of COLUMN_TYPES) or None when undeclared."""
    upstream_max_body_bytes: int | None = None
    """The largest answer read from the upstream; default `upstream_body_limit`."""
    upstream_scratch: Path | None = None
    """The scoring server's writable temp dir (TMPDIR, java.io.tmpdir); default `<scratch>/upstream`."""
    upstream_max_connection_age: float = 1.0
    """Seconds a pooled upstream connection is reused before it is replaced, so every worker of
    the scoring server keeps getting connections; 0: reused for as long as the upstream keeps it."""
    yield_cpu: bool = True
    """Proxy workers yield the CPU to the scoring server on the same cores (Linux SCHED_BATCH)."""
    safe_port_range: tuple[int, int] | None = None
    """`SAGEMAKER_SAFE_PORT_RANGE`: the ports a container may use besides its contract port."""
    channel: str = "training"
    """`train`: the input channel a pre-trained model is copied from."""

    @property
    def max_payload_mb(self) -> int:
        return max(1, self.max_payload_bytes // contract.MIB)

    @property
    def upstream_body_limit(self) -> int:
        """The upstream answer cap: as set, else 100 MiB in batch mode (MaxPayloadInMB's ceiling),
        else 6 MiB (InvokeEndpoint's own response limit)."""
        if self.upstream_max_body_bytes is not None:
            return self.upstream_max_body_bytes
        return (100 if self.batch_mode else contract.DEFAULT_MAX_PAYLOAD_MB) * contract.MIB

    @property
    def resolved_code_dir(self) -> Path:
        return self.code_dir if self.code_dir is not None else self.model_dir / contract.CODE_SUBDIR

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_environ(
        cls, environ: Mapping[str, str] | None = None, overrides: Mapping[str, Any] | None = None
    ) -> Settings:
        """Build settings from an environment mapping (default `os.environ`) and CLI flags.

        Flags given as `None` are treated as not given.
        """
        env = dict(os.environ if environ is None else environ)
        flags = {k: v for k, v in (overrides or {}).items() if v is not None}
        values: dict[str, Any] = {}
        for field, names, parse in _SOURCES:
            if field in flags:
                values[field] = flags[field]
                continue
            for name in names:
                raw = env.get(name, "").strip()
                if raw:
                    values[field] = parse(name, raw)
                    break
        base_dir = Path(values.get("base_dir", contract.BASE_DIR))
        values.setdefault("model_dir", base_dir / contract.MODEL_SUBDIR)
        values.setdefault("workers", os.cpu_count() or 1)
        platform_port = env.get("SAGEMAKER_BIND_TO_PORT", "").strip()
        if platform_port:
            values["port"] = _int("SAGEMAKER_BIND_TO_PORT", platform_port)
        return cls(**values)


def _int(name: str, raw: str) -> int:
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"Setting {name}={raw!r} is not a whole number.") from None
    if value < 0:
        raise ConfigError(f"Setting {name}={raw!r} must not be negative.")
    return value


def _float(name: str, raw: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"Setting {name}={raw!r} is not a number.") from None
    if value < 0:
        raise ConfigError(f"Setting {name}={raw!r} must not be negative.")
    return value


def _bool(name: str, raw: str) -> bool:
    lowered = raw.lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off"}:
        return False
    raise ConfigError(f"Setting {name}={raw!r} is not true or false.")


def _str(name: str, raw: str) -> str:
    return raw


def parse_columns(name: str, raw: str) -> tuple[Column, ...]:
    """`a,b:int,c:str` -> (("a", None), ("b", "int"), ("c", "str")); the flag and its twin share it."""
    columns: list[Column] = []
    for part in raw.split(","):
        field, sep, kind = part.strip().partition(":")
        field, kind = field.strip(), kind.strip().lower()
        if not field:
            continue
        if sep and kind not in COLUMN_TYPES:
            raise ConfigError(
                f"Setting {name}: column {field!r} has type {kind!r}; use one of {', '.join(COLUMN_TYPES)}."
            )
        columns.append((field, kind if sep else None))
    return tuple(columns)


def _kilobytes(name: str, raw: str) -> int:
    kb = _int(name, raw)
    if kb < 1:
        raise ConfigError(f"Setting {name}={raw!r} must be at least 1 (KB).")
    return kb * 1024


def _positive_megabytes(name: str, raw: str) -> int:
    mb = _int(name, raw)
    if mb < 1:
        raise ConfigError(f"Setting {name}={raw!r} must be at least 1 (MB).")
    return mb * contract.MIB


def _port_range(name: str, raw: str) -> tuple[int, int]:
    low, sep, high = raw.partition("-")
    if not sep or not low.strip().isdigit() or not high.strip().isdigit() or int(low) > int(high):
        raise ConfigError(f"Setting {name}={raw!r} must be a port range like 20000-20999.")
    return int(low), int(high)


def _path(name: str, raw: str) -> Path:
    return Path(raw)


def _megabytes(name: str, raw: str) -> int:
    # MaxPayloadInMB=0 means "stream it": no limit of ours should then cut the body.
    # A limit below 6 MiB would reject what InvokeEndpoint itself accepts.
    mb = _int(name, raw)
    if mb == 0:
        return 2**62
    return max(mb, contract.DEFAULT_MAX_PAYLOAD_MB) * contract.MIB


def _method(name: str, raw: str) -> Method:
    for method in METHODS:
        if raw == method:
            return method
    raise ConfigError(f"Setting {name}={raw!r} must be one of {', '.join(METHODS)}.")


def _strategy(name: str, raw: str) -> BatchStrategy:
    normalized = raw.upper().replace("RECORD", "_RECORD").replace("__", "_")
    if normalized == "MULTI_RECORD":
        return "MULTI_RECORD"
    if normalized == "SINGLE_RECORD":
        return "SINGLE_RECORD"
    raise ConfigError(f"Setting {name}={raw!r} must be MULTI_RECORD or SINGLE_RECORD.")


def _log_level(name: str, raw: str) -> str:
    # SAGEMAKER_CONTAINER_LOG_LEVEL is numeric in the toolkits (20 = INFO); accept both spellings.
    levels = {"10": "DEBUG", "20": "INFO", "30": "WARNING", "40": "ERROR", "50": "CRITICAL"}
    level = levels.get(raw, raw.upper())
    if level not in levels.values():
        raise ConfigError(f"Setting {name}={raw!r} is not a log level (DEBUG, INFO, WARNING, ERROR).")
    return level


def _workers(name: str, raw: str) -> int:
    value = _int(name, raw)
    if value < 1:
        raise ConfigError(f"Setting {name}={raw!r} must be at least 1.")
    return value


_SOURCES: tuple[tuple[str, tuple[str, ...], Callable[[str, str], Any]], ...] = (
    ("base_dir", ("SAGEMAKER_BASE_DIR",), _path),
    ("model_dir", ("SAGEHOST_MODEL_DIR", "SM_MODEL_DIR"), _path),
    ("host", ("SAGEHOST_HOST",), _str),
    ("port", ("SAGEHOST_PORT",), _int),
    ("workers", ("SAGEHOST_WORKERS", "SAGEMAKER_MODEL_SERVER_WORKERS", "MODEL_SERVER_WORKERS"), _workers),
    (
        "timeout_s",
        (
            "SAGEHOST_TIMEOUT",
            "SAGEMAKER_MODEL_SERVER_TIMEOUT_SECONDS",
            "SAGEMAKER_MODEL_SERVER_TIMEOUT",
            "MODEL_SERVER_TIMEOUT",
        ),
        _float,
    ),
    ("max_payload_bytes", ("SAGEHOST_MAX_PAYLOAD_IN_MB", "SAGEMAKER_MAX_PAYLOAD_IN_MB"), _megabytes),
    ("default_accept", ("SAGEHOST_DEFAULT_ACCEPT", "SAGEMAKER_DEFAULT_INVOCATIONS_ACCEPT"), _str),
    ("default_method", ("SAGEHOST_DEFAULT_METHOD",), _method),
    ("target_name", ("SAGEHOST_TARGET_NAME",), _str),
    ("program", ("SAGEHOST_PROGRAM", "SAGEMAKER_PROGRAM"), _str),
    ("code_dir", ("SAGEHOST_CODE_DIR", "SAGEMAKER_SUBMIT_DIRECTORY"), _path),
    ("batch_mode", ("SAGEHOST_BATCH", "SAGEMAKER_BATCH"), _bool),
    ("batch_strategy", ("SAGEHOST_BATCH_STRATEGY", "SAGEMAKER_BATCH_STRATEGY"), _strategy),
    (
        "max_concurrent_transforms",
        ("SAGEHOST_MAX_CONCURRENT_TRANSFORMS", "SAGEMAKER_MAX_CONCURRENT_TRANSFORMS"),
        _int,
    ),
    ("max_batch_rows", ("SAGEHOST_MAX_BATCH_ROWS",), _workers),
    ("max_batch_wait_ms", ("SAGEHOST_MAX_BATCH_WAIT_MS",), _float),
    ("max_queue", ("SAGEHOST_MAX_QUEUE",), _workers),
    ("inline_below_us", ("SAGEHOST_INLINE_BELOW_US",), _float),
    ("preload", ("SAGEHOST_PRELOAD",), _bool),
    ("fast_path", ("SAGEHOST_FAST_PATH",), _bool),
    ("flavor", ("SAGEHOST_FLAVOR",), _str),
    ("scratch_dir", ("SAGEHOST_SCRATCH_DIR",), _path),
    ("log_level", ("SAGEHOST_LOG_LEVEL", "SAGEMAKER_CONTAINER_LOG_LEVEL"), _log_level),
    ("channel", ("SAGEHOST_CHANNEL",), _str),
    ("upstream", ("SAGEHOST_UPSTREAM",), _str),
    ("upstream_cmd", ("SAGEHOST_UPSTREAM_CMD",), _str),
    ("upstream_health", ("SAGEHOST_UPSTREAM_HEALTH",), _str),
    ("adapter", ("SAGEHOST_ADAPTER",), _str),
    ("adapter_request", ("SAGEHOST_ADAPTER_REQUEST",), _str),
    ("adapter_response", ("SAGEHOST_ADAPTER_RESPONSE",), _str),
    ("upstream_columns", ("SAGEHOST_UPSTREAM_COLUMNS",), parse_columns),
    ("upstream_max_body_bytes", ("SAGEHOST_UPSTREAM_MAX_BODY_MB",), _positive_megabytes),
    ("max_header_bytes", ("SAGEHOST_MAX_HEADER_KB",), _kilobytes),
    ("header_timeout_s", ("SAGEHOST_HEADER_TIMEOUT",), _float),
    ("body_timeout_s", ("SAGEHOST_BODY_TIMEOUT",), _float),
    ("min_body_rate", ("SAGEHOST_MIN_BODY_RATE_KB",), _kilobytes),
    ("keep_alive_timeout_s", ("SAGEHOST_KEEP_ALIVE_TIMEOUT",), _float),
    ("upstream_scratch", ("SAGEHOST_UPSTREAM_SCRATCH",), _path),
    ("upstream_max_connection_age", ("SAGEHOST_UPSTREAM_MAX_CONNECTION_AGE",), _float),
    ("yield_cpu", ("SAGEHOST_YIELD_CPU",), _bool),
    ("safe_port_range", ("SAGEMAKER_SAFE_PORT_RANGE",), _port_range),
)


def thread_limits(settings: Settings, environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """Thread-pool sizes for numeric libraries so N workers share the cores instead of fighting.

    Only variables the user has not set; apply them before numpy is imported.
    """
    env = os.environ if environ is None else environ
    per_worker = str(max(1, (os.cpu_count() or 1) // settings.workers))
    names = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS")
    return {name: per_worker for name in names if name not in env}
