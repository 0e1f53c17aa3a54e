"""The transform itself: every input file's mini-batches through POST /invocations, `concurrency`
requests in flight, each file's answers written in input order, and a file with a bad record
left without a .out, its record and the container's words reported.

As SageMaker: a request that times out, cannot connect or gets a 5xx is retried up to
InvocationsMaxRetries times; a file fails at its first record that cannot be transformed, and
the others go on. Beyond SageMaker: when a mini-batch of many records is refused, its halves are
sent again, then their halves, to name the one record at fault (its line) rather than the batch.
https://docs.aws.amazon.com/sagemaker/latest/dg/batch-transform-errors.html
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import logging
import sys
import time
import zlib
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import cast

import httpx
import orjson

from sagehost.codecs import media
from sagehost.errors import StartupError, UpstreamTimeout, UpstreamTooLarge, UpstreamUnavailable
from sagehost.http.client import Client
from sagehost.http.outbound import Answer, async_client, send_async
from sagehost.local.processing import Processing, split_answer
from sagehost.local.progress import Progress
from sagehost.local.records import Batch, SplitType, batches, line_batches, records, where
from sagehost.local.transform_io import InputFile, Output, Pending

log = logging.getLogger("sagehost.local.transform")

LINE_TYPES = (media.CSV, media.JSONLINES)
STREAM_CHUNK = 64 * 1024
# What one answer may hold: a bound on memory, far above any answer to a 100 MB mini-batch.
MAX_ANSWER_BYTES = 1024 * 1024 * 1024
_RETRY_PAUSE_S = 0.5
_READ_AHEAD = 64
_IDENTITY = (b"accept-encoding", b"identity")
_READ_AHEAD_BYTES = 1024 * 1024
_MESSAGE_CHARS = 500
# Answers that may be about one record (a bad value, a model that raised on it): worth finding it.
_ABOUT_RECORDS = frozenset(range(400, 500)) | {500}


@dataclass(frozen=True)
class Plan:
    """How the files are sent and assembled, every setting resolved."""

    url: str
    split: SplitType
    single: bool
    payload_limit: int | None
    """Bytes a request may hold; None for MaxPayloadInMB=0 (streamed, chunked)."""
    concurrency: int
    assemble_lines: bool
    content_type: str | None
    accept: str | None
    processing: Processing | None
    gzip: bool
    retries: int
    timeout_s: float


@dataclass
class FileReport:
    source: InputFile
    records: int = 0
    written_to: str | None = None
    failure: str | None = None
    warnings: list[str] = field(default_factory=list)


class _Failed(Exception):
    """A mini-batch that could not be transformed: where in the file, and why."""

    def __init__(self, place: str, why: str) -> None:
        super().__init__(f"{place}: {why}")
        self.place = place
        self.why = why


async def run_files(plan: Plan, files: list[InputFile], output: Output, progress: Progress) -> list[FileReport]:
    client = async_client(plan.concurrency)
    # Whole bodies go through sagehost's own pooled client (the proxy's): httpx spends about
    # half a millisecond of CPU a request, which bounds SingleRecord at ~1,000 records/s on
    # two cores. httpx streams the chunked bodies of MaxPayloadInMB=0.
    lean = Client(max_body=MAX_ANSWER_BYTES, max_connections=plan.concurrency)
    async with client:
        runner = _Runner(plan, client, lean, progress)
        reports = [FileReport(source) for source in files]
        window = asyncio.Semaphore(plan.concurrency * 2)  # batches read and not yet written
        pending: set[asyncio.Task[None]] = set()
        try:
            for report in reports:
                job = _FileJob(report, output.pending(report.source.name))
                task = asyncio.ensure_future(runner.file(job, window))
                pending.add(task)
                task.add_done_callback(pending.discard)
                # The next file is read once this one's batches are all on their way: files are
                # never mixed in a batch, but their batches share the requests in flight.
                await job.read.wait()
            await asyncio.gather(*pending)
        finally:
            for task in pending:
                task.cancel()
            lean.close()
    return reports


class _Runner:
    def __init__(self, plan: Plan, client: httpx.AsyncClient, lean: Client, progress: Progress) -> None:
        self.plan = plan
        self.client = client
        self.lean = lean
        self.progress = progress
        self.in_flight = asyncio.Semaphore(plan.concurrency)
        self.blank_line_note = False

    async def file(self, job: _FileJob, window: asyncio.Semaphore) -> None:
        report = job.report
        try:
            await self._send_all(job, window)
            await job.finished()
        except BaseException:  # cancelled (Ctrl-C) or broken: no half-written file stays behind
            job.pending.discard()
            raise
        finally:
            job.read.set()
            job.close()
        if job.failure is None:
            report.written_to = await asyncio.to_thread(job.pending.commit)
        else:
            job.pending.discard()
            report.failure = f"{job.failure.place}: {job.failure.why}"
        self.progress.file_done()

    async def _send_all(self, job: _FileJob, window: asyncio.Semaphore) -> None:
        """Read (on a thread: S3 downloads, gzip) and send each batch while the file has not failed.
        A file that cannot be read or split fails alone: not gzip, cut short, bad RecordIO framing,
        an S3 object that cannot be fetched."""
        try:
            with contextlib.ExitStack() as stack:
                found = await asyncio.to_thread(stack.enter_context, _batches(job.report.source, self.plan))
                while job.failure is None and (read := await asyncio.to_thread(_read_ahead, found)):
                    for batch in read:
                        if job.failed():  # read ahead, not yet sent: dropped with the file
                            break
                        await window.acquire()
                        job.start(batch.index, window)
                        task = asyncio.ensure_future(self._batch(job, batch))
                        job.tasks.add(task)
                        task.add_done_callback(job.tasks.discard)
                await asyncio.to_thread(stack.close)
        except (ValueError, EOFError, OSError, StartupError) as exc:
            job.fail(sys.maxsize, _Failed("the file", _unreadable(exc, self.plan.gzip)))
        job.read.set()
        job.all_started()

    async def _batch(self, job: _FileJob, batch: Batch) -> None:
        try:
            if batch.problem is not None:
                raise _Failed(where(self.plan.split, batch.numbers[0]), batch.problem)
            answer = await self._invoke(batch)
            if answer.status in _ABOUT_RECORDS:
                raise await self._locate(batch, answer)
            if not answer.ok:  # busy, or broken: not about any one record
                raise _Failed(self._span(batch), _said(answer) + f" ({_tries(self.plan.retries + 1)})")
            job.done(batch.index, self._assembled(job, batch, answer), batch.count)
            self.progress.records(batch.count)
        except _Failed as failed:
            job.fail(batch.index, failed)
        except Exception as exc:  # a bug of ours, or the disk: this file fails, the run goes on
            log.exception("Transforming %s failed", job.report.source.label)
            job.fail(batch.index, _Failed(self._span(batch), f"sagehost failed: {type(exc).__name__}: {exc}"))

    # ---- requests ----------------------------------------------------------------------------

    async def _invoke(self, batch: Batch, retry: bool = True) -> Answer:
        """The container's answer to this batch; retried as SageMaker retries; _Failed when none came."""
        attempts = self.plan.retries + 1 if retry else 1
        for attempt in range(1, attempts + 1):
            try:
                async with self.in_flight:
                    answer = await self._post(batch)
            except (UpstreamTimeout, UpstreamUnavailable, UpstreamTooLarge) as exc:
                if attempt == attempts or isinstance(exc, UpstreamTooLarge):
                    raise _Failed(self._span(batch), f"{exc.message.rstrip('.')} ({_tries(attempt)})") from None
            else:
                if answer.status < 500 or attempt == attempts:
                    return answer
            await asyncio.sleep(_RETRY_PAUSE_S * attempt)
        raise AssertionError("unreachable: the last attempt returns or raises")

    async def _post(self, batch: Batch) -> Answer:
        plan = self.plan
        headers = {}
        if plan.content_type:
            headers["Content-Type"] = plan.content_type
        if plan.accept:
            headers["Accept"] = plan.accept
        if plan.payload_limit is not None:
            return await self._post_whole(batch.body, headers)
        return await send_async(
            self.client,
            "POST",
            plan.url + "/invocations",
            # MaxPayloadInMB=0: the body goes with chunked transfer encoding, as SageMaker streams it.
            # send_async takes what httpx's `content=` takes; its annotation says bytes only.
            body=cast(bytes, _chunks(batch.sent)),
            headers=headers,
            timeout=self.plan.timeout_s,
            max_body=MAX_ANSWER_BYTES,
        )

    async def _post_whole(self, body: bytes, headers: dict[str, str]) -> Answer:
        started = time.monotonic()
        sent = [(name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in headers.items()]
        sent.append(_IDENTITY)  # the answers are written as sent: never compressed on the way
        got = await self.lean.request("POST", self.plan.url + "/invocations", sent, body, self.plan.timeout_s)
        return Answer(got.status, httpx.Headers(got.headers), got.body, time.monotonic() - started)

    async def _locate(self, batch: Batch, answer: Answer) -> _Failed:
        """The first record whose own request fails, found by halves, and the container's words."""
        lo, hi, refused = 0, batch.count, answer
        verified = hi == 1
        while hi - lo > 1:
            middle = (lo + hi) // 2
            left = await self._invoke(batch.part(lo, middle), retry=False)  # the error is known already
            if left.ok:
                lo, verified = middle, False
            else:
                hi, refused, verified = middle, left, True
        if not verified:
            alone = await self._invoke(batch.part(lo, hi), retry=False)
            if alone.ok:  # only together with others: name the whole batch
                return _Failed(self._span(batch), _said(answer))
            refused = alone
        return _Failed(where(self.plan.split, batch.numbers[lo]), _said(refused))

    def _span(self, batch: Batch) -> str:
        first, last = batch.numbers[0], batch.numbers[-1]
        if first == last:
            return where(self.plan.split, first)
        unit = "lines" if self.plan.split == "Line" else "records"
        return f"{unit} {first}-{last}"

    # ---- answers -----------------------------------------------------------------------------

    def _assembled(self, job: _FileJob, batch: Batch, answer: Answer) -> bytes:
        """What this batch adds to the .out. Line: each answer newline-terminated, one newline
        added when the answer has none at its end (SageMaker's "a newline after every record"
        for an answer of one line per record); None: the answers back to back, as they are."""
        plan, body = self.plan, answer.body
        kind = media.media_type(answer.content_type)
        if plan.processing is not None and plan.processing.changes_output:
            return self._processed(batch, body, kind)
        if plan.split != "None" and kind in LINE_TYPES:
            self._check_count(job, batch, body)
        if not plan.assemble_lines:
            return body
        if body.endswith(b"\n"):
            self._note_blank_lines()
            return body
        return body + b"\n"

    def _processed(self, batch: Batch, body: bytes, kind: str) -> bytes:
        processing = self.plan.processing
        assert processing is not None and batch.sources is not None
        try:
            answers = split_answer(body, kind, batch.count)
        except ValueError as exc:
            raise _Failed(self._span(batch), f"{exc}; a join needs one answer per record") from None
        end = b"\n" if self.plan.assemble_lines else b""
        parts = []
        for number, source, one in zip(batch.numbers, batch.sources, answers, strict=True):
            try:
                parts.append(processing.result(source, one) + end)
            except ValueError as exc:
                raise _Failed(where(self.plan.split, number), f"joining its answer: {exc}") from None
        return b"".join(parts)

    def _check_count(self, job: _FileJob, batch: Batch, body: bytes) -> None:
        lines = body.count(b"\n") + (1 if body and not body.endswith(b"\n") else 0)
        if lines != batch.count:
            job.report.warnings.append(
                f"{self._span(batch)}: the answer has {lines} lines for {batch.count} records, so the .out "
                "lines no longer match the input's (SageMaker writes them as they come)"
            )

    def _note_blank_lines(self) -> None:
        if not self.blank_line_note:
            self.blank_line_note = True
            self.progress.say(
                "Note: the container's answers end in a newline. SageMaker's .out has one line per record either "
                "way, but the SageMaker SDK's local mode writes a blank line after each such answer (sagehost "
                "answers without the final newline when SAGEMAKER_BATCH=true)."
            )


class _FileJob:
    """One file's answers, written in input order as they come; its failure, if any."""

    def __init__(self, report: FileReport, pending: Pending) -> None:
        self.report = report
        self.pending = pending
        self.failure: _Failed | None = None
        self.tasks: set[asyncio.Task[None]] = set()
        self.read = asyncio.Event()
        """All of the file's batches are read and on their way."""
        self._failed_at: int | None = None
        self._answers: dict[int, bytes] = {}
        self._counts: dict[int, int] = {}
        self._slots: dict[int, asyncio.Semaphore] = {}
        self._next = 0
        self._started = 0
        self._reading = True
        self._settled = asyncio.Event()

    def failed(self) -> bool:
        return self.failure is not None

    def start(self, index: int, window: asyncio.Semaphore) -> None:
        self._slots[index] = window
        self._started += 1

    def all_started(self) -> None:
        self._reading = False
        self._settle()

    def done(self, index: int, assembled: bytes, count: int) -> None:
        if self.failure is not None:
            self._release(index)
            return
        self._answers[index] = assembled
        self._counts[index] = count
        while self._next in self._answers:
            self.pending.file.write(self._answers.pop(self._next))
            self.report.records += self._counts.pop(self._next)
            self._release(self._next)
            self._next += 1
        self._settle()

    def fail(self, index: int, failed: _Failed) -> None:
        if self._failed_at is None or index < self._failed_at:
            self._failed_at, self.failure = index, failed
        for waiting in list(self._answers):
            self._release(waiting)
        self._answers.clear()
        if index in self._slots:
            self._release(index)
        self._settle()

    async def finished(self) -> None:
        await self._settled.wait()

    def close(self) -> None:
        for task in self.tasks:
            task.cancel()
        for index in list(self._slots):
            self._release(index)

    def _release(self, index: int) -> None:
        slot = self._slots.pop(index, None)
        if slot is not None:
            slot.release()

    def _settle(self) -> None:
        if not self._reading and not self._slots:
            self._settled.set()


@contextlib.contextmanager
def _batches(source: InputFile, plan: Plan) -> Iterator[Iterator[Batch]]:
    processing = plan.processing
    prepare = processing.model_input if processing is not None and processing.filters_input else None
    keep = processing is not None and processing.changes_output
    with source.open(plan.gzip) as stream:
        if plan.split == "Line" and not plan.single and plan.payload_limit is not None and prepare is None and not keep:
            yield line_batches(stream, plan.payload_limit)  # the common case, a block at a time
            return
        found = records(stream, plan.split, plan.single)
        yield batches(found, plan.payload_limit, plan.single, prepare, keep)


def _read_ahead(found: Iterator[Batch]) -> list[Batch]:
    """The next batches, as many as `_READ_AHEAD` or `_READ_AHEAD_BYTES` allow (at least one
    while any is left): one trip to the reading thread serves many small batches (SingleRecord)."""
    read: list[Batch] = []
    size = 0
    for batch in found:
        read.append(batch)
        size += batch.size
        if len(read) >= _READ_AHEAD or size >= _READ_AHEAD_BYTES:
            break
    return read


async def _chunks(parts: list[bytes]) -> AsyncIterator[bytes]:
    buffer: list[bytes] = []
    size = 0
    for part in parts:
        buffer.append(part)
        size += len(part)
        if size >= STREAM_CHUNK:
            yield b"".join(buffer)
            buffer, size = [], 0
    if buffer:
        yield b"".join(buffer)


def _said(answer: Answer) -> str:
    """The container's error in its own words: sagehost's JSON error message, else its text."""
    text = answer.body[: _MESSAGE_CHARS * 4].decode("utf-8", errors="replace").strip()
    with contextlib.suppress(orjson.JSONDecodeError, TypeError, AttributeError, KeyError):
        error = orjson.loads(answer.body)["error"]
        text = f"{error['code']}: {error['message']}"
    if len(text) > _MESSAGE_CHARS:
        text = text[:_MESSAGE_CHARS] + "…"
    return f"the container answered HTTP {answer.status}: {text or '(no body)'}"


def _unreadable(exc: BaseException, gzipped: bool) -> str:
    if isinstance(exc, (gzip.BadGzipFile, EOFError, zlib.error)) and gzipped:
        return f"it is not whole gzip data (--gzip): {exc}"
    if isinstance(exc, OSError) and exc.strerror:
        return f"it cannot be read: {exc.strerror}"
    return str(exc)


def _tries(attempt: int) -> str:
    return "1 attempt" if attempt == 1 else f"{attempt} attempts"
