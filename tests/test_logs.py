"""The batched connection-log path: same lines as the logging path, order kept, whole lines."""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import Iterator

import pytest

from fopproxy.config import LoggingConfig
from fopproxy.logs import (
    CONNECTION_FIELDS,
    PIPE_BUF,
    BatchingHandler,
    configure_logging,
    connection_closed,
)

FIELDS = ("10.0.0.7:42310", "api.example.com", "TLSv1.2", "ECDHE-ECDSA-AES128-GCM-SHA256", 84, 155, 3_000_250, "done")
TEXT = (
    "Z INFO fopproxy.conn connection closed direction=inbound client=10.0.0.7:42310 sni=api.example.com version=TLSv1.2 "
    "cipher=ECDHE-ECDSA-AES128-GCM-SHA256 bytes_to_backend=84 bytes_to_client=155 duration=3.000250 reason=done"
)


@pytest.fixture
def pipe_logging() -> Iterator[tuple[BatchingHandler, int]]:
    """Our handler as the root handler, writing into a pipe the test reads."""
    read_fd, write_fd = os.pipe()
    os.set_blocking(read_fd, False)
    stream = os.fdopen(write_fd, "w", buffering=1)
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    configure_logging(LoggingConfig())
    handler = root.handlers[0]
    assert isinstance(handler, BatchingHandler)
    handler.setStream(stream)
    try:
        yield handler, read_fd
    finally:
        handler.flush()
        for old in list(root.handlers):
            root.removeHandler(old)
        for old in saved[0]:
            root.addHandler(old)
        root.setLevel(saved[1])
        stream.close()
        os.close(read_fd)


def _alone(handler: BatchingHandler) -> None:
    """Drop the capture handlers pytest adds for the call phase: the fast path needs ours alone."""
    logging.getLogger().handlers[:] = [handler]


def _drain(fd: int) -> list[bytes]:
    """Every write that reached the pipe, as separate reads (each read returns one write or more)."""
    chunks = []
    while True:
        try:
            data = os.read(fd, 65536)
        except BlockingIOError:
            return chunks
        chunks.append(data)


def test_connection_line_matches_the_text_format_and_keeps_order(pipe_logging: tuple[BatchingHandler, int]) -> None:
    """A buffered connection line is written before a later ordinary record, in the text format."""
    handler, fd = pipe_logging
    _alone(handler)
    log = logging.getLogger("fopproxy.conn")

    async def scenario() -> None:
        connection_closed(log, *FIELDS)
        assert _drain(fd) == []  # batched, not yet written
        logging.getLogger("fopproxy.server").warning("draining")

    asyncio.run(scenario())
    lines = b"".join(_drain(fd)).decode().splitlines()
    assert len(lines) == 2
    assert lines[0].endswith(TEXT)
    assert "WARNING fopproxy.server draining" in lines[1]


def test_batched_lines_are_flushed_by_the_loop_and_cut_at_line_ends(
    pipe_logging: tuple[BatchingHandler, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Lines reach the output within the flush delay, every write ends at a line end and fits PIPE_BUF."""
    handler, fd = pipe_logging
    _alone(handler)
    log = logging.getLogger("fopproxy.conn")
    real_write = os.write
    writes: list[bytes] = []

    def recording_write(target: int, data: bytes) -> int:
        writes.append(bytes(data))
        return real_write(target, data)

    monkeypatch.setattr(os, "write", recording_write)

    async def scenario() -> None:
        for index in range(60):
            connection_closed(log, *FIELDS[:5], index, *FIELDS[6:])
        await asyncio.sleep(0.5)

    asyncio.run(scenario())
    text = b"".join(_drain(fd)).decode()
    assert text.count("\n") == 60
    assert "bytes_to_client=59 " in text
    assert len(writes) > 1
    for chunk in writes:
        assert chunk.endswith(b"\n")
        assert len(chunk) <= PIPE_BUF


def test_json_connection_line_carries_every_field(pipe_logging: tuple[BatchingHandler, int]) -> None:
    """With format json the fast path writes one object with the event's fields."""
    handler, fd = pipe_logging
    _alone(handler)
    handler.json_lines = True
    connection_closed(logging.getLogger("fopproxy.conn"), *FIELDS)  # no loop: written now
    record = json.loads(b"".join(_drain(fd)))
    assert record["msg"] == "connection closed"
    assert record["logger"] == "fopproxy.conn"
    assert record["direction"] == "inbound"  # outbound lines say direction=outbound
    assert {key: record[key] for key in CONNECTION_FIELDS} == {
        **dict(zip(CONNECTION_FIELDS, FIELDS, strict=True)), "duration": 3.00025
    }


def test_with_other_handlers_the_line_goes_through_logging_with_the_same_fields(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """pytest's capture handler makes the fast path step aside: an ordinary record, same event."""
    with caplog.at_level(logging.INFO, logger="fopproxy.conn"):
        connection_closed(logging.getLogger("fopproxy.conn"), *FIELDS)
    (record,) = [r for r in caplog.records if r.name == "fopproxy.conn"]
    assert record.getMessage() == "connection closed"
    assert record.event["duration"] == 3.00025  # type: ignore[attr-defined]
    assert record.event["bytes_to_client"] == 155  # type: ignore[attr-defined]
