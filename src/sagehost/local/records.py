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

    @property
    def body(self) -> bytes:
        return self.sent[0] if len(self.sent) == 1 else b"".join(self.sent)

    def add(self, record: Record, sent: bytes) -> None:
        self.numbers.append(record.number)
        self.sent.append(sent)
        if self.sources is not None:
            self.sources.append(record.data)
        self.size += len(sent)

    def part(self, start: int, stop: int) -> Batch:
        """Records start..stop-1 as a batch of their own (to find which record an error is about)."""
        sources = None if self.sources is None else self.sources[start:stop]
        sent = self.sent[start:stop]
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


def _lines(stream: BinaryIO) -> Iterator[Record]:
    for number, line in enumerate(stream, start=1):
        if line.strip():
            yield Record(number, line)


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
) -> Iterator[Batch]:
    """Mini-batches of whole records, each at most `limit` bytes (None: no limit). `prepare`
    turns a record into what is sent (the input filter); its ValueError fails that record."""
    index = 0
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
