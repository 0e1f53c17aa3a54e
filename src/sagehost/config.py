"""Settings: one frozen object built once from the environment and CLI flags.

This is the only module that reads environment variables. Each setting is declared once, in
SOURCES: the field it fills, the names it answers to (most specific first: our own `SAGEHOST_*`
twin, then the names SageMaker and the AWS toolkits use, shared/research/sagemaker-contract.md
§1.5), its CLI flag, and the one parser that reads its text. A flag and its environment twin go
through that same parser, so they mean the same thing and fail with the same message.

A CLI flag beats every environment variable, except `SAGEMAKER_BIND_TO_PORT`: SageMaker sets
it for inference pipelines and multi-container endpoints and the container must obey it.
A command may bring its own default (`sagehost proxy` runs 1 worker); our `SAGEHOST_*` twin and
the flag still beat it, the SageMaker names do not (there they configure the upstream server).
"""

from __future__ import annotations

import dataclasses
import ipaddress
import math
import os
import re
import tempfile
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from sagehost import contract
from sagehost.errors import ConfigError

Method = Literal["predict", "predict_proba", "decision_function"]
METHODS: tuple[Method, ...] = ("predict", "predict_proba", "decision_function")
BatchStrategy = Literal["MULTI_RECORD", "SINGLE_RECORD"]
# Declared types of upstream columns (`--upstream-columns name:type`): a CSV cell is text, and the
# declared type says what the scoring server should receive.
COLUMN_TYPES = ("str", "int", "float", "bool")
Column = tuple[str, str | None]
"""An upstream column: its name and declared type (one of COLUMN_TYPES), or None to guess."""
# The formats of sagehost.models.registry, named here so the CLI can offer them without importing
# numpy before the thread limits are set (tests/test_registry.py keeps the two equal).
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
    multi_model: bool = False
    """A multi-model endpoint (`SAGEMAKER_MULTI_MODEL`): no model at start; POST /models loads them."""
    model_memory_mb: int | None = None
    """Multi-model: MiB the loaded models may take, every worker's copy counted; past it POST
    /models answers 507. Default: a share of the container's memory limit (sagehost.multimodel.budget)."""
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
    compiled_trees: bool = True
    """Tree ensembles walked by numba-compiled code where numba is installed (`sagehost[trees]`)."""
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
        """The body limit in MiB as SageMaker spells it: 0 when there is none (MaxPayloadInMB=0)."""
        if self.max_payload_bytes >= contract.NO_PAYLOAD_LIMIT:
            return 0
        return self.max_payload_bytes // contract.MIB

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
        cls,
        environ: Mapping[str, str] | None = None,
        flags: Mapping[str, str | None] | None = None,
        defaults: Mapping[str, Any] | None = None,
    ) -> Settings:
        """Build settings from an environment mapping (default `os.environ`) and CLI flags.

        `flags` holds each flag's text as typed, keyed by field (None: not given); it is read by
        the same parser as the flag's environment twin. `defaults` are the command's own, typed.
        A bad value raises ConfigError naming the flag or variable, the value and what it takes.
        """
        env = os.environ if environ is None else environ
        given = {field: raw for field, raw in (flags or {}).items() if raw is not None}
        if unknown := sorted(given.keys() - _BY_FIELD.keys()):
            raise TypeError(f"no such setting: {', '.join(unknown)}")
        own = defaults or {}
        values: dict[str, Any] = dict(own)
        for source in SOURCES:
            found = _text_of(source, given, env, source.field in own)
            if found is not None:
                values[source.field] = source.read(*found)
        base_dir = Path(values.get("base_dir", contract.BASE_DIR))
        values.setdefault("model_dir", base_dir / contract.MODEL_SUBDIR)
        values.setdefault("workers", os.cpu_count() or 1)
        platform_port = env.get("SAGEMAKER_BIND_TO_PORT", "").strip()
        if platform_port:
            values["port"] = _BIND_TO_PORT.read("SAGEMAKER_BIND_TO_PORT", platform_port)
        return cls(**values)


def _text_of(
    source: Source, flags: Mapping[str, str], env: Mapping[str, str], command_default: bool
) -> tuple[str, str] | None:
    """Where a setting is given and its text: the flag, else the first of its variables set.
    Beside a command's own default only our `SAGEHOST_*` twin counts (see the module's doc)."""
    if source.field in flags:
        return source.flag_name, flags[source.field]
    for name in source.env:
        raw = env.get(name, "").strip()
        if raw and (name.startswith("SAGEHOST_") or not command_default):
            return name, raw
    return None


class _Invalid(ValueError):
    """A value a parser refuses; the message says what the setting takes."""


@dataclass(frozen=True)
class Source:
    """One setting, declared once: the field it fills, the environment names it answers to
    (most specific first), its CLI flag, and the parser both read their text with."""

    field: str
    env: tuple[str, ...]
    parse: Callable[[str], Any]
    flag: str | None = None
    """`--name`, or `--name/--no-name` for a switch (its text is then `true` or `false`)."""
    help: str = ""
    default: str = ""
    """The default as a person reads it, for --help and the README."""
    metavar: str = "TEXT"
    """What the flag takes, in --help."""

    @property
    def flag_name(self) -> str:
        """The flag as a message names it: `--preload` for `--preload/--no-preload`."""
        return (self.flag or f"--{self.field}").split("/")[0]

    def read(self, where: str, raw: str) -> Any:
        """Parse `raw`, which came from `where` (a flag or a variable), or raise ConfigError."""
        try:
            return self.parse(raw)
        except _Invalid as exc:
            given = f"{where} {raw!r}" if where.startswith("-") else f"{where}={raw!r}"
            raise ConfigError(f"{given}: {exc}") from None


def _whole(minimum: int = 0, maximum: int | None = None) -> Callable[[str], int]:
    def parse(raw: str) -> int:
        try:
            value = int(raw)
        except ValueError:
            raise _Invalid("not a whole number.") from None
        if value < minimum or (maximum is not None and value > maximum):
            upper = f" and at most {maximum}" if maximum is not None else ""
            raise _Invalid(f"must be at least {minimum}{upper}.")
        return value

    return parse


def _seconds(*, zero: bool) -> Callable[[str], float]:
    """A duration: finite, and above zero unless `zero` (0 then means "off" or "never wait")."""

    def parse(raw: str) -> float:
        try:
            value = float(raw)
        except ValueError:
            raise _Invalid("not a number.") from None
        if not math.isfinite(value) or value < 0 or (value == 0 and not zero):
            raise _Invalid("must be a number above 0." if not zero else "must be a number of at least 0.")
        return value

    return parse


def _bool(raw: str) -> bool:
    lowered = raw.lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off"}:
        return False
    raise _Invalid("must be true or false.")


def _text(raw: str) -> str:
    return raw


def _path(raw: str) -> Path:
    return Path(raw)


def _choice(options: tuple[str, ...]) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        if raw not in options:
            raise _Invalid(f"must be one of {', '.join(options)}.")
        return raw

    return parse


# RFC 1123 host names; an address is checked by the ipaddress module.
_HOSTNAME = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)(\.(?!-)[A-Za-z0-9-]{1,63}(?<!-))*\.?")


def _host(raw: str) -> str:
    try:
        ipaddress.ip_address(raw)
    except ValueError:
        if not _HOSTNAME.fullmatch(raw) or len(raw) > 253:
            raise _Invalid("neither an IP address nor a host name (0.0.0.0 listens everywhere).") from None
    return raw


# RFC 9110 §8.3.1: type "/" subtype, then parameters.
_MEDIA_TYPE = re.compile(r"[\w.+-]+/[\w.+*-]+\s*(;.*)?")


def _media_type(raw: str) -> str:
    if not _MEDIA_TYPE.fullmatch(raw):
        raise _Invalid("not a media type like application/json or text/csv.")
    return raw


def _http_url(raw: str) -> str:
    # The proxy's client speaks plain HTTP/1.1 to a scoring server beside it.
    try:
        parts = urllib.parse.urlsplit(raw)
        port = parts.port
    except ValueError:
        port, parts = None, None
    if parts is None or parts.scheme != "http" or not parts.hostname or port == 0:
        raise _Invalid("must be an http:// URL with a host, like http://127.0.0.1:9090/score.")
    return raw


def _url_path(raw: str) -> str:
    if not raw.startswith("/") or any(c.isspace() for c in raw):
        raise _Invalid("must be a path on the upstream, like /health.")
    return raw


def _hook_spec(raw: str) -> str:
    module, _, function = raw.partition(":")
    if not all(part.isidentifier() for part in module.split(".")) or not function.isidentifier():
        raise _Invalid("must be module:function, like hooks:to_scorer (imported from the model's code/).")
    return raw


def _megabytes(raw: str) -> int:
    return _whole(1)(raw) * contract.MIB


def _kilobytes(raw: str) -> int:
    return _whole(1)(raw) * 1024


def _payload(raw: str) -> int:
    # One meaning for the flag and both variables: N MiB exactly as given, and 0 = no limit, as
    # Batch Transform's MaxPayloadInMB=0 streams a chunked body of unknown length.
    # https://docs.aws.amazon.com/sagemaker/latest/APIReference/API_CreateTransformJob.html
    mb = _whole(0)(raw)
    return contract.NO_PAYLOAD_LIMIT if mb == 0 else mb * contract.MIB


def _port_range(raw: str) -> tuple[int, int]:
    low, sep, high = raw.partition("-")
    if sep and low.strip().isdigit() and high.strip().isdigit() and 1 <= int(low) <= int(high) <= 65535:
        return int(low), int(high)
    raise _Invalid("must be a port range like 20000-20999.")


def _method(raw: str) -> Method:
    for method in METHODS:
        if raw == method:
            return method
    raise _Invalid(f"must be one of {', '.join(METHODS)}.")


def _strategy(raw: str) -> BatchStrategy:
    normalized = raw.upper().replace("RECORD", "_RECORD").replace("__", "_")
    if normalized == "MULTI_RECORD":
        return "MULTI_RECORD"
    if normalized == "SINGLE_RECORD":
        return "SINGLE_RECORD"
    raise _Invalid("must be MULTI_RECORD or SINGLE_RECORD.")


def _log_level(raw: str) -> str:
    # SAGEMAKER_CONTAINER_LOG_LEVEL is numeric in the toolkits (20 = INFO); accept both spellings.
    levels = {"10": "DEBUG", "20": "INFO", "30": "WARNING", "40": "ERROR", "50": "CRITICAL"}
    level = levels.get(raw, raw.upper())
    if level not in levels.values():
        raise _Invalid("is not a log level (DEBUG, INFO, WARNING, ERROR, CRITICAL, or 10-50).")
    return level


def _columns(raw: str) -> tuple[Column, ...]:
    columns: list[Column] = []
    for part in raw.split(","):
        field, sep, kind = part.strip().partition(":")
        field, kind = field.strip(), kind.strip().lower()
        if not field and not sep:
            continue
        if not field:
            raise _Invalid(f"a column has a type but no name; give name:type, types {', '.join(COLUMN_TYPES)}.")
        if sep and kind not in COLUMN_TYPES:
            raise _Invalid(f"column {field!r} has type {kind!r}; use one of {', '.join(COLUMN_TYPES)}.")
        if any(field == name for name, _ in columns):
            raise _Invalid(f"column {field!r} is named twice.")
        columns.append((field, kind if sep else None))
    if not columns:
        raise _Invalid("names no columns; give name[:type],… e.g. age:int,zip:str.")
    return tuple(columns)


def parse_columns(name: str, raw: str) -> tuple[Column, ...]:
    """`a,b:int,c:str` -> (("a", None), ("b", "int"), ("c", "str")); ConfigError names `name`."""
    return _BY_FIELD["upstream_columns"].read(name, raw)  # type: ignore[no-any-return]


SOURCES: tuple[Source, ...] = (
    Source("base_dir", ("SAGEMAKER_BASE_DIR",), _path, default="/opt/ml"),
    Source(
        "model_dir",
        ("SAGEHOST_MODEL_DIR", "SM_MODEL_DIR"),
        _path,
        "--model-dir",
        "Model directory.",
        "$SAGEMAKER_BASE_DIR/model",
        metavar="DIR",
    ),
    Source("host", ("SAGEHOST_HOST",), _host, "--host", "Address to bind.", contract.DEFAULT_HOST, metavar="ADDRESS"),
    Source(
        "port",
        ("SAGEHOST_PORT",),
        _whole(1, 65535),
        "--port",
        "Port; SAGEMAKER_BIND_TO_PORT wins when set.",
        str(contract.DEFAULT_PORT),
        metavar="N",
    ),
    Source(
        "workers",
        ("SAGEHOST_WORKERS", "SAGEMAKER_MODEL_SERVER_WORKERS", "MODEL_SERVER_WORKERS"),
        _whole(1),
        "--workers",
        "Worker processes.",
        "CPU count",
        metavar="N",
    ),
    Source(
        "timeout_s",
        (
            "SAGEHOST_TIMEOUT",
            "SAGEMAKER_MODEL_SERVER_TIMEOUT_SECONDS",
            "SAGEMAKER_MODEL_SERVER_TIMEOUT",
            "MODEL_SERVER_TIMEOUT",
        ),
        _seconds(zero=False),
        "--timeout",
        "Seconds a prediction (in proxy mode, the upstream's answer) may take before a 504.",
        "60",
        metavar="SECONDS",
    ),
    Source(
        "max_payload_bytes",
        ("SAGEHOST_MAX_PAYLOAD_IN_MB", "SAGEMAKER_MAX_PAYLOAD_IN_MB"),
        _payload,
        "--max-payload-mb",
        "Request body limit in MiB, exactly as given; 0 = no limit (Batch Transform's MaxPayloadInMB=0).",
        str(contract.DEFAULT_MAX_PAYLOAD_MB),
        metavar="MIB",
    ),
    Source(
        "default_accept",
        ("SAGEHOST_DEFAULT_ACCEPT", "SAGEMAKER_DEFAULT_INVOCATIONS_ACCEPT"),
        _media_type,
        "--default-accept",
        "Answer type when a request's Accept is */* or absent.",
        "application/json",
        metavar="TYPE",
    ),
    Source(
        "default_method",
        ("SAGEHOST_DEFAULT_METHOD",),
        _method,
        "--default-method",
        f"Method when a request names none: {', '.join(METHODS)}.",
        "the model's own",
        metavar="METHOD",
    ),
    Source(
        "target_name",
        ("SAGEHOST_TARGET_NAME",),
        _text,
        "--target-name",
        "Label prefix for named probabilities (fraud -> fraud.0).",
        "none",
        metavar="NAME",
    ),
    Source("program", ("SAGEHOST_PROGRAM", "SAGEMAKER_PROGRAM"), _text, default=contract.DEFAULT_PROGRAM),
    Source("code_dir", ("SAGEHOST_CODE_DIR", "SAGEMAKER_SUBMIT_DIRECTORY"), _path, default="<model-dir>/code"),
    Source("batch_mode", ("SAGEHOST_BATCH", "SAGEMAKER_BATCH"), _bool, default="false"),
    Source(
        "multi_model",
        ("SAGEHOST_MULTI_MODEL", "SAGEMAKER_MULTI_MODEL"),
        _bool,
        "--multi-model/--no-multi-model",
        "Multi-model endpoint: start with no model; POST /models loads them, /models/NAME/invoke answers.",
        "off",
    ),
    Source(
        "model_memory_mb",
        ("SAGEHOST_MODEL_MEMORY_MB",),
        _whole(1),
        "--model-memory-mb",
        "Multi-model: MiB the loaded models may take (every worker's copy counted); past it, 507.",
        "75% of the container's memory limit",
        metavar="MIB",
    ),
    Source(
        "batch_strategy", ("SAGEHOST_BATCH_STRATEGY", "SAGEMAKER_BATCH_STRATEGY"), _strategy, default="MULTI_RECORD"
    ),
    Source(
        "max_concurrent_transforms",
        ("SAGEHOST_MAX_CONCURRENT_TRANSFORMS", "SAGEMAKER_MAX_CONCURRENT_TRANSFORMS"),
        _whole(1),
        default="the workers",
    ),
    Source(
        "max_batch_rows",
        ("SAGEHOST_MAX_BATCH_ROWS",),
        _whole(1),
        "--max-batch-rows",
        "Rows per model call.",
        "64",
        metavar="N",
    ),
    Source(
        "max_batch_wait_ms",
        ("SAGEHOST_MAX_BATCH_WAIT_MS",),
        _seconds(zero=True),
        "--max-batch-wait-ms",
        "Extra wait for more rows, only when requests are already queueing.",
        "0",
        metavar="MS",
    ),
    Source(
        "max_queue",
        ("SAGEHOST_MAX_QUEUE",),
        _whole(1),
        "--max-queue",
        "Waiting requests per worker.",
        "1024",
        metavar="N",
    ),
    Source(
        "inline_below_us",
        ("SAGEHOST_INLINE_BELOW_US",),
        _seconds(zero=True),
        "--inline-below-us",
        "Model calls seen to take less than this run on the event loop; 0 = always the model thread.",
        "100",
        metavar="US",
    ),
    Source(
        "preload",
        ("SAGEHOST_PRELOAD",),
        _bool,
        "--preload/--no-preload",
        "Load the model before forking workers.",
        "where the model allows",
    ),
    Source(
        "fast_path",
        ("SAGEHOST_FAST_PATH",),
        _bool,
        "--fast-path/--no-fast-path",
        "Lean predict paths for linear models and tree ensembles.",
        "on",
    ),
    Source(
        "compiled_trees",
        ("SAGEHOST_COMPILED_TREES",),
        _bool,
        "--compiled-trees/--no-compiled-trees",
        "Walk tree ensembles in numba-compiled code where sagehost[trees] is installed.",
        "on",
    ),
    Source(
        "flavor",
        ("SAGEHOST_FLAVOR",),
        _choice(FLAVORS),
        "--flavor",
        f"Model format, when the directory holds several: {', '.join(FLAVORS)}.",
        "found from the files",
        metavar="FLAVOR",
    ),
    Source("scratch_dir", ("SAGEHOST_SCRATCH_DIR",), _path, default="$TMPDIR/sagehost"),
    Source(
        "log_level",
        ("SAGEHOST_LOG_LEVEL", "SAGEMAKER_CONTAINER_LOG_LEVEL"),
        _log_level,
        "--log-level",
        "DEBUG, INFO, WARNING, ERROR (or 10-50).",
        "INFO",
        metavar="LEVEL",
    ),
    Source(
        "channel",
        ("SAGEHOST_CHANNEL",),
        _text,
        "--channel",
        "Input channel holding the model.",
        "training",
        metavar="NAME",
    ),
    # ---- HTTP limits: nginx's defaults (client_header_timeout, client_body_timeout, keepalive_timeout,
    # large_client_header_buffers), https://nginx.org/en/docs/http/ngx_http_core_module.html ----
    Source(
        "max_header_bytes",
        ("SAGEHOST_MAX_HEADER_KB",),
        _kilobytes,
        "--max-header-kb",
        "Request line plus headers, KiB; past it 431 and the connection closes.",
        "64",
        metavar="KIB",
    ),
    Source(
        "header_timeout_s",
        ("SAGEHOST_HEADER_TIMEOUT",),
        _seconds(zero=False),
        "--header-timeout",
        "Seconds for a request's line and headers to arrive whole, else the connection closes.",
        "60",
        metavar="SECONDS",
    ),
    Source(
        "body_timeout_s",
        ("SAGEHOST_BODY_TIMEOUT",),
        _seconds(zero=False),
        "--body-timeout",
        "Seconds a body may go without a byte; also the grace before --min-body-rate-kb applies.",
        "60",
        metavar="SECONDS",
    ),
    Source(
        "min_body_rate",
        ("SAGEHOST_MIN_BODY_RATE_KB",),
        _kilobytes,
        "--min-body-rate-kb",
        "KiB/s a body must average after --body-timeout, else the connection closes.",
        "1",
        metavar="KIB",
    ),
    Source(
        "keep_alive_timeout_s",
        ("SAGEHOST_KEEP_ALIVE_TIMEOUT",),
        _seconds(zero=False),
        "--keep-alive-timeout",
        "Seconds an idle keep-alive connection is kept.",
        "75",
        metavar="SECONDS",
    ),
    # ---- proxy mode ----
    Source(
        "upstream",
        ("SAGEHOST_UPSTREAM",),
        _http_url,
        "--upstream",
        "The scoring server's URL, e.g. http://127.0.0.1:9090/score.",
        "required",
        metavar="URL",
    ),
    Source(
        "upstream_cmd",
        ("SAGEHOST_UPSTREAM_CMD",),
        _text,
        "--upstream-cmd",
        "Command that starts it; sagehost supervises it.",
        "none",
        metavar="COMMAND",
    ),
    Source(
        "upstream_health",
        ("SAGEHOST_UPSTREAM_HEALTH",),
        _url_path,
        "--upstream-health",
        "Its health path; without one, a TCP connect.",
        "none",
        metavar="PATH",
    ),
    Source(
        "adapter",
        ("SAGEHOST_ADAPTER",),
        _choice(("scr", "h2o", "none")),
        "--adapter",
        "Payload translation: scr, h2o, none.",
        "none",
        metavar="NAME",
    ),
    Source(
        "adapter_request",
        ("SAGEHOST_ADAPTER_REQUEST",),
        _hook_spec,
        "--adapter-request",
        "module:function for request bodies.",
        "none",
        metavar="MODULE:FUNC",
    ),
    Source(
        "adapter_response",
        ("SAGEHOST_ADAPTER_RESPONSE",),
        _hook_spec,
        "--adapter-response",
        "module:function for response bodies.",
        "none",
        metavar="MODULE:FUNC",
    ),
    Source(
        "upstream_columns",
        ("SAGEHOST_UPSTREAM_COLUMNS",),
        _columns,
        "--upstream-columns",
        f"Names for headerless rows, each with an optional type: name[:type],… types {', '.join(COLUMN_TYPES)}.",
        "none",
        metavar="COLUMNS",
    ),
    Source(
        "upstream_max_body_bytes",
        ("SAGEHOST_UPSTREAM_MAX_BODY_MB",),
        _megabytes,
        "--upstream-max-body-mb",
        "Largest upstream answer, MiB; past it 502 and the connection is dropped.",
        "6, batch 100",
        metavar="MIB",
    ),
    Source(
        "upstream_scratch",
        ("SAGEHOST_UPSTREAM_SCRATCH",),
        _path,
        "--upstream-scratch",
        "The scoring server's temp dir.",
        "$SAGEHOST_SCRATCH_DIR/upstream",
        metavar="DIR",
    ),
    Source(
        "upstream_max_connection_age",
        ("SAGEHOST_UPSTREAM_MAX_CONNECTION_AGE",),
        _seconds(zero=True),
        "--upstream-max-connection-age",
        "Seconds before a pooled upstream connection is replaced; 0 = never.",
        "1",
        metavar="SECONDS",
    ),
    Source(
        "yield_cpu",
        ("SAGEHOST_YIELD_CPU",),
        _bool,
        "--yield-cpu/--no-yield-cpu",
        "Workers yield the CPU to the scoring server (Linux SCHED_BATCH).",
        "on",
    ),
    Source("safe_port_range", ("SAGEMAKER_SAFE_PORT_RANGE",), _port_range, default="none"),
)
_BY_FIELD = {source.field: source for source in SOURCES}
_BIND_TO_PORT = _BY_FIELD["port"]
BY_FLAG = {source.flag: source for source in SOURCES if source.flag}
"""Each setting that has a CLI flag, by the flag as declared (`--preload/--no-preload`)."""


def thread_limits(settings: Settings, environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """Thread-pool sizes for numeric libraries so N workers share the cores instead of fighting.

    Only variables the user has not set; apply them before numpy is imported.
    """
    env = os.environ if environ is None else environ
    per_worker = str(max(1, (os.cpu_count() or 1) // settings.workers))
    names = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS")
    return {name: per_worker for name in names if name not in env}
