"""Synchronisation over depth, Krause vs softmax: token clusters, mean cosine, effective rank.

    python -m krause.analysis.synchronisation \
        --runs softmax=RUN_A_SEED1,RUN_A_SEED2 --runs krause=RUN_B_SEED1,RUN_B_SEED2 \
        --out results/analyses [--num_images 32] [--threshold 0.05] [--exclude_first_token]

For every run (`krause.runs.load_run`, latest checkpoint) on the first N test images of its
dataset: per layer (the embedding, then each block's output) the batch means of the number of
token clusters (single linkage on cosine distance, cut at --threshold), the mean pairwise cosine
and the effective rank of the token matrix (`krause.analysis.metrics`). Writes
OUT/synchronisation.png (mean +- std over seeds) and OUT/synchronisation.json (per label: each
seed's series and the per-layer mean and std, ddof 1). Works for ViTs and pixel models alike
(all runs must share one dataset and model size).
"""

from __future__ import annotations

import pathlib
from collections.abc import Sequence
from typing import Any

from krause.analysis import command, metrics, plots

KEYS = ("clusters", "mean_cosine", "effective_rank")


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    p = command.parser(__doc__.split("\n")[0], num_images=32)
    p.add_argument("--threshold", type=float, default=metrics.DEFAULT_CLUSTER_THRESHOLD)
    p.add_argument(
        "--exclude_first_token", action="store_true", help="token metrics without token 0 (CLS)"
    )
    p.add_argument("--batch_size", type=int, default=8, help="images per forward pass")
    args = p.parse_args(argv)
    if not 0 <= args.threshold <= 2:
        raise ValueError(f"--threshold is a cosine distance in [0, 2], got {args.threshold}.")
    loaded, series = command.runs_and_series(
        args, threshold=args.threshold, exclude_first_token=args.exclude_first_token
    )
    out = pathlib.Path(args.out)
    figure = plots.synchronisation(series, out / "synchronisation.png")
    record = {
        "what": "per layer (0 = embedding, l = output of block l-1): batch means over the test"
        " images of the token clusters, mean pairwise cosine and effective rank; mean and std"
        " (ddof 1) over seeds",
        "threshold": args.threshold,
        "exclude_first_token": args.exclude_first_token,
        "num_images": args.num_images,
        "runs": command.describe_runs(loaded),
        "models": {
            label: {
                "layers": s[0]["names"],
                "summary": command.summary(s, KEYS),
                "seeds": [{key: seed[key] for key in KEYS} for seed in s],
            }
            for label, s in series.items()
        },
        "figures": [str(figure)],
    }
    return command.write_record(record, out / "synchronisation.json", argv)


if __name__ == "__main__":
    main()
