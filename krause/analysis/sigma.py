"""The learned sigma (Krause RBF width) of every layer over training.

    python -m krause.analysis.sigma --runs krause=RUN_SEED1,RUN_SEED2 [--runs ...] \
        --out results/analyses

Reads each run's metrics.jsonl (the trainer logs sigma = exp(log_sigma) of every Krause layer,
keys "sigma/<layer path>[/head_h]", at every logging step) and its latest checkpoint
(`krause.runs.load_run`). Writes OUT/sigma_<label>.png (per layer, the mean over seeds vs step)
and OUT/sigma.json (per label and layer: steps, each seed's values, mean and std over seeds
(ddof 1), and each seed's sigma from its checkpoint). Labels whose runs log no sigma (softmax
models) are listed under "skipped", so the same --runs as for the other analyses can be given;
a label mixing runs with and without sigma, or with different logging steps, is an error.
"""

from __future__ import annotations

import pathlib
import re
from collections.abc import Sequence
from typing import Any

from krause.analysis import command, metrics, plots


def _checkpoint_sigmas(params: Any) -> dict[str, float]:
    """{"<layer path>[/head_h]": exp(log_sigma)} of a parameter tree."""
    from krause.train.trainer import sigma_metrics

    return {k.removeprefix("sigma/"): v for k, v in sigma_metrics(params).items()}


def _label_record(label: str, runs: Sequence[command.Run]) -> dict[str, Any] | str:
    """The label's sigma record, or the reason it has none."""
    from krause.metrics import read_metrics

    histories = [metrics.sigma_history(read_metrics(r.workdir)) for r in runs]
    with_sigma = [bool(h) for h in histories]
    if not any(with_sigma):
        return "its runs log no sigma/... keys (no Krause attention)"
    if not all(with_sigma):
        missing = [str(r.workdir) for r, has in zip(runs, with_sigma, strict=True) if not has]
        raise ValueError(f"--runs {label}: {', '.join(missing)} log no sigma, the other runs do.")
    layers: dict[str, Any] = {}
    for name in histories[0]:
        steps = histories[0][name][0]
        for r, h in zip(runs, histories, strict=True):
            if name not in h or h[name][0] != steps:
                raise ValueError(
                    f"--runs {label}: {r.workdir} does not log sigma/{name} at the same steps as"
                    f" {runs[0].workdir}; a label's runs must be seeds of one recipe."
                )
        values = [h[name][1] for h in histories]
        mean, std = metrics.mean_std(values)
        layers[name] = {
            "steps": steps,
            "mean": mean.tolist(),
            "std": std.tolist(),
            "seeds": values,
        }
    return {
        "layers": layers,
        "final_logged": {name: [v[-1] for v in layer["seeds"]] for name, layer in layers.items()},
        "checkpoint_step": [_last_step(r.workdir) for r in runs],
        "checkpoint": [_checkpoint_sigmas(r.params) for r in runs],
    }


def _last_step(workdir: pathlib.Path) -> int:
    from krause.runs import checkpoint_steps

    return checkpoint_steps(workdir)[-1]


def _file_label(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", label)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    p = command.parser(__doc__.split("\n")[0])
    args = p.parse_args(argv)
    loaded = command.load_runs(command.parse_runs(args.runs))
    out = pathlib.Path(args.out)
    models, skipped, figures = {}, {}, []
    for label, runs in loaded.items():
        result = _label_record(label, runs)
        if isinstance(result, str):
            skipped[label] = result
            continue
        history = {
            name: (layer["steps"], layer["mean"]) for name, layer in result["layers"].items()
        }
        figure = plots.sigma_over_training(history, out / f"sigma_{_file_label(label)}.png")
        figures.append(str(figure))
        models[label] = result
    if not models:
        raise ValueError(f"no run logs sigma: {skipped}; give Krause runs.")
    record = {
        "what": "learned sigma = exp(log_sigma) per Krause layer (and head) vs training step,"
        " from metrics.jsonl; mean and std (ddof 1) over seeds; and each seed's sigma read from"
        " its latest checkpoint",
        "runs": command.describe_runs(loaded),
        "models": models,
        "skipped": skipped,
        "figures": figures,
    }
    return command.write_record(record, out / "sigma.json", argv)


if __name__ == "__main__":
    main()
