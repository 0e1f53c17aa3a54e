"""An input file as Batch Transform splits it into records and packs them into mini-batches.

SplitType `None` sends the whole file as one request; `Line` splits after each newline (a line's
newline stays with it, and blank lines are no records: sagehost's CSV reader skips them too);
`RecordIO` splits MXNet RecordIO frames. `MultiRecord` packs as many whole records as fit in
MaxPayloadInMB (0: no limit, the request is streamed), never splitting one and never mixing
files; `SingleRecord` sends one record a request, and for RecordIO without its frame and padding.
https://docs.aws.amazon.com/sagemaker/latest/APIReference/API_TransformInput.html
https://docs.aws.amazon.com/sagemaker/latest/dg/batch-transform.html
"""

from __future__ import annotations

import io
import re
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import BinaryIO, Literal

SplitType = Literal["None", "Line", "RecordIO"]
SPLIT_TYPES: tuple[SplitType, ...] = ("None", "Line", "RecordIO")

RECORDIO_MAGIC = 0xCED7230A
_HEADER = struct.Struct("<II")
_LENGTH_MASK = (1 << 29) - 1
_MAGIC_BYTES = struct.pack("<I", RECORDIO_MAGIC)
_BLOCK = 1024 * 1024
# A line that holds nothing but whitespace (bytes.strip's) after a newline: no record.
_BLANK_LINE = re.compile(rb"\n[ \t\r\x0b\x0c]*\n")


@dataclass(frozen=True)
class Record:
    number: int
    """Its line number (Line), its place in the file (RecordIO), or 1 (None)."""
    data: bytes


@dataclass
class Batch:
    """One request's records, in file order."""

    index: int
    numbers: list[int] = field(default_factory=list)
    sent: list[bytes] = field(default_factory=list)
    """Each record as sent (after the input filter)."""
    sources: list[bytes] | None = None
    """Each record as read, kept only when the answers are joined to them."""
    size: int = 0
    problem: str | None = None
    """Why this batch's (one) record cannot be sent: the file fails there."""
    whole: bytes | None = None
    """The records as one block of lines, as read (`line_batches`); `sent` is then empty, and
    the lines are split apart only when a part of the batch is sent again (`part`)."""

    @property
    def body(self) -> bytes:
        if self.whole is not None:
            return self.whole
        return self.sent[0] if len(self.sent) == 1 else b"".join(self.sent)

    @property
    def count(self) -> int:
        """How many records it holds."""
        return len(self.numbers)

    def add(self, record: Record, sent: bytes) -> None:
        self.numbers.append(record.number)
        self.sent.append(sent)
        if self.sources is not None:
            self.sources.append(record.data)
        self.size += len(sent)

    def part(self, start: int, stop: int) -> Batch:
        """Records start..stop-1 as a batch of their own (to find which record an error is about)."""
        sources = None if self.sources is None else self.sources[start:stop]
        sent = (self.sent if self.whole is None else _split_lines(self.whole))[start:stop]
        return Batch(self.index, self.numbers[start:stop], sent, sources, sum(map(len, sent)))


def where(split: SplitType, number: int) -> str:
    """A record's place, as a person finds it in the file."""
    if split == "Line":
        return f"line {number}"
    if split == "RecordIO":
        return f"record {number}"
    return "the file (sent whole: --split-type None)"


def records(stream: BinaryIO, split: SplitType, single: bool) -> Iterator[Record]:
    if split == "Line":
        return _lines(stream)
    if split == "RecordIO":
        return _recordio(stream, unwrap=single)
    return iter([Record(1, stream.read())])


def _lines(stream: BinaryIO, start: int = 1) -> Iterator[Record]:
    for number, line in enumerate(stream, start=start):
        if line.strip():
            yield Record(number, line)


def _split_lines(block: bytes) -> list[bytes]:
    lines = block.split(b"\n")
    last = lines.pop()
    return [line + b"\n" for line in lines] + ([last] if last else [])


def _recordio(stream: BinaryIO, unwrap: bool) -> Iterator[Record]:
    """Whole frames (MultiRecord) or their payloads (SingleRecord); a record split over several
    frames (flags 1, 2…, 3) is one record, its parts joined by the magic number they were split at."""
    number = 0
    frames: list[bytes] = []
    parts: list[bytes] = []
    while header := stream.read(_HEADER.size):
        if len(header) < _HEADER.size:
            raise ValueError(f"RecordIO: the file ends inside a frame header after record {number}")
        magic, word = _HEADER.unpack(header)
        if magic != RECORDIO_MAGIC:
            raise ValueError(f"RecordIO: no frame starts after record {number} (magic {magic:#010x})")
        flag, length = word >> 29, word & _LENGTH_MASK
        data = stream.read(length + (-length % 4))
        if len(data) < length:
            raise ValueError(f"RecordIO: record {number + 1} is cut short ({len(data)} of {length} bytes)")
        frames.append(header + data)
        parts.append(data[:length])
        if flag in (0, 3):
            number += 1
            yield Record(number, _MAGIC_BYTES.join(parts) if unwrap else b"".join(frames))
            frames, parts = [], []
    if frames:
        raise ValueError(f"RecordIO: the file ends inside record {number + 1} (its last frame is missing)")


def batches(
    found: Iterator[Record],
    limit: int | None,
    single: bool,
    prepare: Callable[[bytes], bytes] | None = None,
    keep_sources: bool = False,
    *,
    index: int = 0,
) -> Iterator[Batch]:
    """Mini-batches of whole records, each at most `limit` bytes (None: no limit). `prepare`
    turns a record into what is sent (the input filter); its ValueError fails that record.
    `index`: the first batch's."""
    current = Batch(index, sources=[] if keep_sources else None)
    for record in found:
        problem = None
        try:
            sent = record.data if prepare is None else prepare(record.data)
        except ValueError as exc:
            sent, problem = b"", str(exc)
        if problem is None and limit is not None and len(sent) > limit:
            problem = (
                f"it is {len(sent):,} bytes, over MaxPayloadInMB ({limit:,} bytes); SageMaker sends no part of a record"
            )
        full = limit is not None and current.size + len(sent) > limit
        if current.sent and (single or problem or full):
            yield current
            index += 1
            current = Batch(index, sources=[] if keep_sources else None)
        current.add(record, sent)
        if problem:
            current.problem = problem
            yield current
            return
    if current.sent:
        yield current


def line_batches(stream: BinaryIO, limit: int) -> Iterator[Batch]:
    """The batches `batches(records(stream, "Line", False), limit, False)` makes, read a block
    at a time: each batch is the longest run of whole lines within `limit` bytes, cut at a
    newline, with no Python object per line (a million-line file is read in milliseconds,
    not seconds). From the first block that may hold a blank line (no record, so not sent:
    the batch may hold more lines) or a line over the limit, the rest of the file goes line by
    line, as `batches` does."""
    buffer, number, index, ended = b"", 1, 0, False
    while True:
        while len(buffer) <= limit and not ended:  # one byte past the limit: does the next line fit?
            block = stream.read(max(limit, _BLOCK))
            ended = not block
            buffer += block
        if not buffer:
            return
        cut = len(buffer) if ended and len(buffer) <= limit else buffer.rfind(b"\n", 0, limit) + 1
        if cut == 0 or _may_hold_blank_lines(buffer, cut):
            rest = io.BufferedReader(_Chained(buffer, stream), _BLOCK)
            yield from batches(_lines(rest, start=number), limit, single=False, index=index)
            return
        piece = buffer[:cut]
        count = piece.count(b"\n") + (0 if piece.endswith(b"\n") else 1)
        yield Batch(index, list(range(number, number + count)), size=cut, whole=piece)
        buffer, number, index = buffer[cut:], number + count, index + 1


def _may_hold_blank_lines(buffer: bytes, cut: int) -> bool:
    """Whether the lines before `cut`, or the line after it, may be blank."""
    first = buffer.find(b"\n")
    if not buffer[: first if 0 <= first < cut else cut].strip():
        return True
    after = buffer.find(b"\n", cut)
    if _BLANK_LINE.search(buffer, 0, after + 1 if after >= 0 else len(buffer)) is not None:
        return True
    tail = b"" if after >= 0 else buffer[buffer.rfind(b"\n") + 1 :]  # the last line, or its start
    return bool(tail) and not tail.strip()


class _Chained(io.RawIOBase):
    """What was read ahead, then the rest of the stream, as one stream."""

    def __init__(self, ahead: bytes, stream: BinaryIO) -> None:
        self._ahead = memoryview(ahead)
        self._stream = stream

    def readable(self) -> bool:
        return True

    def readinto(self, into: bytearray | memoryview) -> int:  # type: ignore[override]
        if self._ahead:
            size = min(len(into), len(self._ahead))
            into[:size] = self._ahead[:size]
            self._ahead = self._ahead[size:]
            return size
        data = self._stream.read(len(into))
        into[: len(data)] = data
        return len(data)
