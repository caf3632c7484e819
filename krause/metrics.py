"""Metric writers: JSON lines (`metrics.jsonl`) and TensorBoard event files, without TensorFlow.

`MetricWriter(workdir)` appends one JSON object per `write(step, scalars)` call to
`workdir/metrics.jsonl` ({"step": s, "name": value, ...}) and the same scalars to a TensorBoard
event file `workdir/events.out.tfevents.*` (`tensorboard --logdir workdir`). Only process 0
writes. `read_metrics(workdir)` loads the JSON lines back.

The event file is the TFRecord format (length, masked CRC-32C of the length, the serialized
`tensorflow.Event` proto, masked CRC-32C of the data); the few proto fields needed are encoded
by hand so neither TensorFlow nor tensorboard is needed to write them.
"""

from __future__ import annotations

import json
import logging
import pathlib
import socket
import struct
import time
from collections.abc import Mapping

# ------------------------------------------------------------------------------ logging


class _QuietLibraries(logging.Filter):
    """Drops INFO records of orbax and tensorflow_datasets (very chatty); keeps warnings."""

    def filter(self, record: logging.LogRecord) -> bool:
        noisy = ("/orbax/", "/tensorflow_datasets/")
        return record.levelno >= logging.WARNING or not any(n in record.pathname for n in noisy)


def quiet_library_logs() -> None:
    """Keeps absl's log (progress, metrics) readable: orbax/tfds INFO lines are dropped."""
    from absl import logging as absl_logging

    absl_logging.get_absl_handler().addFilter(_QuietLibraries())


# ------------------------------------------------------------------------------ TensorBoard


def _crc32c_table() -> list[int]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
        table.append(crc)
    return table


_CRC32C_TABLE = _crc32c_table()


def crc32c(data: bytes) -> int:
    """CRC-32C (Castagnoli), as TFRecord uses; crc32c(b"123456789") == 0xE3069283."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc = _CRC32C_TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def _masked_crc(data: bytes) -> int:
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _varint(value: int) -> bytes:
    out = bytearray()
    value &= (1 << 64) - 1
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _length_delimited(field: int, payload: bytes) -> bytes:
    return _varint(field << 3 | 2) + _varint(len(payload)) + payload


def _event(step: int, *, wall_time: float, scalars=None, file_version=None) -> bytes:
    """A serialized `tensorflow.Event` (wall_time=1, step=2, file_version=3, summary=5)."""
    event = b"\x09" + struct.pack("<d", wall_time) + b"\x10" + _varint(step)
    if file_version is not None:
        event += _length_delimited(3, file_version.encode())
    if scalars:
        # Summary.value (1) = Value{tag (1): string, simple_value (2): float}
        values = b"".join(
            _length_delimited(
                1, _length_delimited(1, tag.encode()) + b"\x15" + struct.pack("<f", value)
            )
            for tag, value in scalars.items()
        )
        event += _length_delimited(5, values)
    return event


def _record(data: bytes) -> bytes:
    length = struct.pack("<Q", len(data))
    return (
        length
        + struct.pack("<I", _masked_crc(length))
        + data
        + struct.pack("<I", _masked_crc(data))
    )


class TensorBoardWriter:
    """Appends scalar summaries to a new event file in `logdir`."""

    def __init__(self, logdir: str | pathlib.Path):
        now = time.time()
        name = f"events.out.tfevents.{int(now)}.{socket.gethostname()}.krause"
        self.path = pathlib.Path(logdir) / name
        self._file = open(self.path, "ab")  # noqa: SIM115 (closed in close())
        self._file.write(_record(_event(0, wall_time=now, file_version="brain.Event:2")))

    def write(self, step: int, scalars: Mapping[str, float]) -> None:
        self._file.write(_record(_event(step, wall_time=time.time(), scalars=scalars)))
        self._file.flush()

    def close(self) -> None:
        self._file.close()


# ------------------------------------------------------------------------------ JSON lines


def read_metrics(workdir: str | pathlib.Path) -> list[dict]:
    """All records of `workdir/metrics.jsonl`, in order ([] if there is none)."""
    path = pathlib.Path(workdir) / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


class MetricWriter:
    """Scalars to `workdir/metrics.jsonl` and TensorBoard; a no-op unless `enabled`.

    `resume_step`: records of steps after it (written by an interrupted run after its last
    checkpoint) are dropped from metrics.jsonl, so the file describes one consistent run.
    """

    def __init__(self, workdir: str | pathlib.Path, *, enabled: bool = True, resume_step=None):
        self.enabled = enabled
        self.path = pathlib.Path(workdir) / "metrics.jsonl"
        if not enabled:
            return
        if resume_step is not None and self.path.exists():
            kept = [r for r in read_metrics(workdir) if r["step"] <= resume_step]
            self.path.write_text("".join(json.dumps(r) + "\n" for r in kept))
        self._tensorboard = TensorBoardWriter(workdir)

    def write(self, step: int, scalars: Mapping[str, float]) -> None:
        if not self.enabled:
            return
        scalars = {name: float(value) for name, value in scalars.items()}
        record = {"step": int(step), **scalars}  # NaN/Infinity as Python's json writes them
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        self._tensorboard.write(step, scalars)

    def close(self) -> None:
        if self.enabled:
            self._tensorboard.close()
