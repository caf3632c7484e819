"""Evaluation only: the test metrics of a run's checkpoint.

    python -m krause.evaluate --workdir runs/kvit_fmnist [--step S]

Rebuilds the run's model (`krause.runs.load_run`), evaluates the checkpoint of step S (default:
the latest) on the whole test split exactly as the trainer does, and prints the metrics; for the
final step they equal the run's `results.json`, which is shown beside them. Nothing is written.
"""

from __future__ import annotations

import json
import os
import pathlib

from absl import app, flags


def evaluate_run(workdir: str | os.PathLike, step: int | None = None) -> dict:
    """{"step": s, "test/...": value} of the run in `workdir` at checkpoint `step` (None: the
    latest), evaluated as the trainer does."""
    import jax
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    from krause import data as kdata
    from krause.runs import checkpoint_steps, load_run
    from krause.train import tasks
    from krause.train.trainer import check_dataset_prepared, make_evaluate

    mesh = jax.make_mesh((jax.device_count(),), ("data",), (jax.sharding.AxisType.Auto,))
    config, model, params = load_run(workdir, step, sharding=NamedSharding(mesh, P()))
    check_dataset_prepared(config.input)
    info = kdata.get_dataset_info(config.input.dataset)
    task = tasks.task_of(config.input)
    evaluate = make_evaluate(config, model, task, info, NamedSharding(mesh, P("data")))
    step = checkpoint_steps(workdir)[-1] if step is None else step
    return {"step": step, **evaluate(params)}


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    from krause.metrics import quiet_library_logs

    quiet_library_logs()
    metrics = evaluate_run(flags.FLAGS.workdir, flags.FLAGS.step)
    results_file = pathlib.Path(flags.FLAGS.workdir).expanduser() / "results.json"
    results = json.loads(results_file.read_text()) if results_file.exists() else {}
    same_step = results.get("step") == metrics["step"]
    for name, value in metrics.items():
        line = f"{name}: {value!r}"
        if same_step and name != "step" and name in results:
            verdict = "equal" if results[name] == value else "DIFFERENT"
            line += f"  (results.json: {results[name]!r}, {verdict})"
        print(line)


def run() -> None:
    """Command-line entry point (flags defined here, so importing the module defines none)."""
    flags.DEFINE_string("workdir", None, "The run's directory (its --workdir).")
    flags.DEFINE_integer("step", None, "Checkpoint step to evaluate (default: the latest).")
    flags.mark_flags_as_required(["workdir"])
    app.run(main)


if __name__ == "__main__":
    run()
