"""Metric writers: clu's default writer (absl log and TensorBoard) plus `metrics.jsonl`.

`create_metric_writer(workdir, is_main=...)` returns a `clu.metric_writers.MetricWriter`: on
process 0 it logs every scalar, writes it to a TensorBoard event file in `workdir`
(`tensorboard --logdir workdir`) and appends one JSON object per `write_scalars(step, scalars)`
call to `workdir/metrics.jsonl` ({"step": s, "name": value, ...}); other processes only log.
`read_metrics(workdir)` loads the JSON lines back.
"""

from __future__ import annotations

import json
import logging
import os
import pathlib
from collections.abc import Mapping
from typing import Any

from clu import metric_writers

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


# ------------------------------------------------------------------------------ JSON lines


def read_metrics(workdir: str | os.PathLike) -> list[dict]:
    """All records of `workdir/metrics.jsonl`, in order ([] if there is none)."""
    path = pathlib.Path(workdir) / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


class JsonLinesWriter(metric_writers.MetricWriter):
    """Scalars to `workdir/metrics.jsonl`, one line per `write_scalars` call; other kinds of
    summary are ignored.

    `resume_step`: records of steps after it (written by an interrupted run after its last
    checkpoint) are dropped when the writer opens, so the file describes one consistent run.
    """

    def __init__(self, workdir: str | os.PathLike, *, resume_step: int | None = None):
        self.path = pathlib.Path(workdir) / "metrics.jsonl"
        if resume_step is not None and self.path.exists():
            kept = [r for r in read_metrics(workdir) if r["step"] <= resume_step]
            self.path.write_text("".join(json.dumps(r) + "\n" for r in kept))

    def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
        record = {"step": int(step), **{k: float(v) for k, v in scalars.items()}}
        with open(self.path, "a") as f:  # NaN/Infinity as Python's json writes them
            f.write(json.dumps(record) + "\n")

    def write_summaries(self, step, values, metadata=None) -> None:
        pass

    def write_images(self, step, images) -> None:
        pass

    def write_videos(self, step, videos) -> None:
        pass

    def write_audios(self, step, audios, *, sample_rate) -> None:
        pass

    def write_texts(self, step, texts) -> None:
        pass

    def write_histograms(self, step, arrays, num_buckets=None) -> None:
        pass

    def write_hparams(self, hparams) -> None:
        pass

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


def create_metric_writer(
    workdir: str | os.PathLike, *, is_main: bool = True, resume_step: int | None = None
) -> metric_writers.MetricWriter:
    """Log + TensorBoard + metrics.jsonl on the main process; only the log elsewhere."""
    if not is_main:
        return metric_writers.create_default_writer(just_logging=True, asynchronous=False)
    return metric_writers.MultiWriter(
        [
            metric_writers.create_default_writer(os.fspath(workdir), asynchronous=False),
            JsonLinesWriter(workdir, resume_step=resume_step),
        ]
    )
