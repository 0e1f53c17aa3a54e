"""`sagehost verify URL`: the SageMaker hosting contract, checked against any running server —
ours, a peer's, a hand-written one — as a checklist with, for each failure, the likely cause and
the fix. The exit status gates a CI pipeline.

Checks (https://docs.aws.amazon.com/sagemaker/latest/dg/your-algorithms-inference-code.html):
/ping is 200 within 2 s; each declared payload gets a 2xx within the 60 s invocation timeout;
`Accept: */*` and a missing Accept are answered; an unsupported Accept gets a 406 (or the default
type), never a 5xx; a body over the 6 MB limit is refused with a 4xx (413), not a crash; unknown paths are 404.
Each call has a deadline, and verify reads at most 6 MB of any answer (InvokeEndpoint's own limit).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from sagehost import contract
from sagehost.errors import UpstreamTimeout, UpstreamUnavailable
from sagehost.http.outbound import Answer, send

PING_TIMEOUT_S = contract.PING_TIMEOUT_S  # SageMaker's health check timeout
# InvokeEndpoint refuses answers over 6 MB too; past that verify stops reading and judges the status
# (the server may be anyone's, and one that streams without end must not take verify's memory).
MAX_ANSWER_BYTES = contract.DEFAULT_MAX_PAYLOAD_MB * contract.MIB


@dataclass(frozen=True)
class Check:
    name: str
    passed: bool
    detail: str
    fix: str = ""


def call(
    method: str,
    url: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
    timeout: float = contract.DEFAULT_TIMEOUT_S,
) -> Answer:
    """One request as verify sends it: its status, and at most 6 MB of its body; UpstreamTimeout
    or UpstreamUnavailable when no answer came (see sagehost.http.outbound)."""
    return send(method, url, body=body, headers=headers, timeout=timeout, max_body=MAX_ANSWER_BYTES, partial=True)


def verify_url(url: str, payloads: list[tuple[Path, str]]) -> list[Check]:
    base = url.rstrip("/").removesuffix("/invocations")
    plan: list[tuple[str, Callable[[], Check]]] = [("GET /ping is 200 within 2 s", partial(_ping, base))]
    for path, content_type in payloads:
        plan.append((f"POST /invocations ({content_type})", partial(_invoke, base, path, content_type)))
    if payloads:
        path, content_type = payloads[0]
        plan.append(("Accept */* and no Accept are answered", partial(_any_accept, base, path, content_type)))
        plan.append(("An unsupported Accept is no 5xx", partial(_bad_accept, base, path, content_type)))
        plan.append(("A body over 6 MB is refused with a 4xx", partial(_too_large, base, content_type)))
    plan.append(("Unknown paths are 404", partial(_unknown_path, base)))
    return [_guarded(name, run) for name, run in plan]


def _guarded(name: str, run: Callable[[], Check]) -> Check:
    try:
        return run()
    except UpstreamTimeout as exc:
        return Check(name, False, exc.message, "SageMaker waits 2 s for /ping and 60 s for an invocation.")
    except UpstreamUnavailable as exc:
        return Check(name, False, exc.message, "Is the server running and listening on this address?")


def _ping(base: str) -> Check:
    name = "GET /ping is 200 within 2 s"
    answer = call("GET", base + "/ping", timeout=PING_TIMEOUT_S + 1)
    if answer.status != 200:
        return Check(
            name,
            False,
            f"HTTP {answer.status}",
            "The model must be loaded before /ping says 200; "
            "SageMaker retries until its startup deadline, then fails the endpoint.",
        )
    if answer.seconds > PING_TIMEOUT_S:
        return Check(
            name,
            False,
            f"took {answer.seconds:.2f} s",
            "/ping must not wait behind predictions: answer "
            "it from the event loop or a separate thread, never queued with inference.",
        )
    return Check(name, True, f"200 in {answer.seconds * 1000:.0f} ms")


def _invoke(base: str, payload: Path, content_type: str) -> Check:
    name = f"POST /invocations ({content_type})"
    answer = call("POST", base + "/invocations", payload.read_bytes(), {"Content-Type": content_type})
    if not 200 <= answer.status < 300:
        text = answer.body[:200].decode("utf-8", errors="replace")
        return Check(
            name,
            False,
            f"HTTP {answer.status}: {text}",
            f"The server does not accept {content_type} "
            "as sent; SageMaker passes the caller's Content-Type through unchanged.",
        )
    if not answer.complete:
        return Check(
            name,
            False,
            f"the answer is over {MAX_ANSWER_BYTES} bytes",
            "InvokeEndpoint refuses answers over 6 MB: send fewer rows per request, or use asynchronous "
            "inference or Batch Transform.",
        )
    if answer.seconds > contract.DEFAULT_TIMEOUT_S:
        return Check(
            name,
            False,
            f"took {answer.seconds:.1f} s",
            "Over SageMaker's 60 s invocation timeout: send "
            "fewer rows per request, or use asynchronous inference or Batch Transform.",
        )
    return Check(name, True, f"{answer.status} in {answer.seconds * 1000:.0f} ms, {answer.content_type or 'no type'}")


def _any_accept(base: str, payload: Path, content_type: str) -> Check:
    name = "Accept */* and no Accept are answered"
    body = payload.read_bytes()
    for accept in ("*/*", None):
        headers = {"Content-Type": content_type, **({"Accept": accept} if accept else {})}
        answer = call("POST", base + "/invocations", body, headers)
        if not 200 <= answer.status < 300:
            shown = accept or "(none)"
            return Check(
                name,
                False,
                f"Accept {shown}: HTTP {answer.status}",
                "Clients (the AWS SDKs, boto3's default) send */* or nothing; answer those in the default type.",
            )
    return Check(name, True, "both 2xx")


def _bad_accept(base: str, payload: Path, content_type: str) -> Check:
    name = "An unsupported Accept is no 5xx"
    headers = {"Content-Type": content_type, "Accept": "application/x-sagehost-unknown"}
    answer = call("POST", base + "/invocations", payload.read_bytes(), headers)
    if answer.status >= 500:
        return Check(
            name,
            False,
            f"HTTP {answer.status}",
            "A client error answered as a server error: SageMaker "
            "reports it as a ModelError and it counts against the endpoint's errors. Answer 406.",
        )
    if 200 <= answer.status < 300 and answer.content_type.startswith("application/x-sagehost-unknown"):
        return Check(name, False, "claimed the unknown type", "Do not label answers with a type you did not write.")
    return Check(name, True, f"HTTP {answer.status}")


def _too_large(base: str, content_type: str) -> Check:
    name = "A body over 6 MB is refused with a 4xx"
    body = b"1," * (3 * contract.MIB + 1)  # 6 MiB + 2 bytes: just over InvokeEndpoint's limit
    answer = call("POST", base + "/invocations", body, {"Content-Type": content_type})
    if 400 <= answer.status < 500:
        return Check(name, True, f"HTTP {answer.status}")
    return Check(
        name,
        False,
        f"HTTP {answer.status}",
        "Refuse bodies over the limit early with 413 (Batch Transform "
        "sends up to MaxPayloadInMB); parsing them first costs memory and time, or crashes a worker.",
    )


def _unknown_path(base: str) -> Check:
    name = "Unknown paths are 404"
    answer = call("GET", base + "/no-such-path-sagehost-verify")
    if answer.status == 404:
        return Check(name, True, "404")
    return Check(
        name,
        False,
        f"HTTP {answer.status}",
        "Answer only /ping and /invocations (and the documented "
        "extras); a catch-all route hides misrouted health checks.",
    )


def report(checks: list[Check]) -> str:
    lines = []
    for check in checks:
        lines.append(f"{'PASS' if check.passed else 'FAIL'}  {check.name}: {check.detail}")
        if not check.passed and check.fix:
            lines.append(f"      fix: {check.fix}")
    failed = sum(not c.passed for c in checks)
    lines.append(f"\n{len(checks) - failed} passed, {failed} failed")
    return "\n".join(lines)
