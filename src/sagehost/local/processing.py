"""Batch Transform's DataProcessing, record by record: InputFilter, JoinSource, OutputFilter.

SageMaker reads each record as JSON: a JSON (Lines) record as it is, a CSV row as an array of
its cells (strings, as written). The input filter picks what the model sees. With
`JoinSource=Input` the prediction joins the whole input record: a CSV row gets the answer's
cells appended; a JSON object gets it under `SageMakerOutput`, and any other JSON value becomes
`{"SageMakerInput": value, "SageMakerOutput": answer}`. The output filter then picks what is
written. Filters and joins work on CSV and JSON only, the answer in the input's format.
https://docs.aws.amazon.com/sagemaker/latest/dg/batch-transform-data-processing.html
https://docs.aws.amazon.com/sagemaker/latest/APIReference/API_DataProcessing.html

Every function here raises ValueError, in words, for a record it cannot process.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from typing import Any

import orjson

from sagehost.codecs import media
from sagehost.local.jsonpath import JsonPath

OUTPUT_KEY = "SageMakerOutput"
INPUT_KEY = "SageMakerInput"
JSON_TYPES = (media.JSON, media.JSONLINES)


@dataclass(frozen=True)
class Processing:
    csv: bool
    """The records are CSV rows (else JSON values)."""
    input_filter: JsonPath | None = None
    output_filter: JsonPath | None = None
    join: bool = False

    @property
    def filters_input(self) -> bool:
        return self.input_filter is not None and not self.input_filter.whole

    @property
    def changes_output(self) -> bool:
        return self.join or (self.output_filter is not None and not self.output_filter.whole)

    def model_input(self, record: bytes) -> bytes:
        """What is sent for this record: the input filter's part, one line."""
        assert self.input_filter is not None
        return self._write(self.input_filter.select(self._read(record, "the record"))) + b"\n"

    def result(self, record: bytes, answer: bytes) -> bytes:
        """What is written for this record, given its own answer (one line of it), without a newline."""
        output = self._read(answer, "the answer")
        if self.join:
            output = self._joined(self._read(record, "the record"), output)
        if self.output_filter is not None:
            output = self.output_filter.select(output)
        return self._write(output)

    def _joined(self, record: Any, output: Any) -> Any:
        if self.csv:
            return [*record, *output]
        if isinstance(record, dict):
            if OUTPUT_KEY in record:
                raise ValueError(
                    f"the record already has a field {OUTPUT_KEY!r}, which SageMaker reserves for the join"
                )
            return {**record, OUTPUT_KEY: output}
        return {INPUT_KEY: record, OUTPUT_KEY: output}

    def _read(self, data: bytes, what: str) -> Any:
        if self.csv:
            try:
                text = data.decode("utf-8").rstrip("\r\n")
            except UnicodeDecodeError:
                raise ValueError(f"{what} is not UTF-8 text") from None
            return next(csv.reader([text]), [])
        try:
            return orjson.loads(data)
        except orjson.JSONDecodeError as exc:
            raise ValueError(f"{what} is not JSON ({exc})") from None

    def _write(self, value: Any) -> bytes:
        if not self.csv:
            return orjson.dumps(value)
        cells = value if isinstance(value, list) else [value]
        buffer = io.StringIO()
        csv.writer(buffer, lineterminator="").writerow(
            [orjson.dumps(c).decode() if isinstance(c, (list, dict)) else c for c in cells]
        )
        return buffer.getvalue().encode()


def split_answer(answer: bytes, accept: str, count: int) -> list[bytes]:
    """One answer per record, from an answer to `count` records: its lines (CSV, JSON Lines), or
    the elements of a JSON array (or of `{"predictions": [...]}`)."""
    if media.media_type(accept) == media.JSON:
        return _json_elements(answer, count)
    lines = answer.split(b"\n")
    if lines and not lines[-1]:
        lines.pop()  # the final newline ends the last line
    if len(lines) != count:
        raise ValueError(f"the answer has {len(lines)} lines for {count} records")
    return [line.rstrip(b"\r") for line in lines]


def _json_elements(answer: bytes, count: int) -> list[bytes]:
    try:
        value = orjson.loads(answer)
    except orjson.JSONDecodeError as exc:
        raise ValueError(f"the answer is not JSON ({exc})") from None
    if isinstance(value, dict) and isinstance(value.get("predictions"), list):
        value = value["predictions"]
    if count == 1 and not (isinstance(value, list) and len(value) == 1):
        return [orjson.dumps(value)]
    if not isinstance(value, list) or len(value) != count:
        size = len(value) if isinstance(value, list) else 1
        raise ValueError(f"the answer holds {size} predictions for {count} records")
    return [orjson.dumps(item) for item in value]
