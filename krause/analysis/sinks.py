"""Attention sinks: mean attention mass on the first token per block, Krause vs softmax.

    python -m krause.analysis.sinks --runs softmax=RUN_A_SEED1,... --runs krause=RUN_B_SEED1,... \
        --out results/analyses [--num_images 32]

For every run (`krause.runs.load_run`, latest checkpoint) on the first N test images of its
dataset: per block and head, the mean over images and queries 1..N-1 of the attention
probability on key 0 (the CLS token of a ViT, the first pixel of a pixel model; query 0 is left
out). Krause weights are read in their compact form, and a softmax pixel model's dense maps are
cut to their first column on the device. Writes OUT/sinks.png (mean over heads, mean +- std over
seeds) and OUT/sinks.json (per label: each seed's per-head masses and the per-block mean and
std over seeds, ddof 1).

Reference point ("uniform_mass"): the mass on key 0 if every query spread its attention evenly
over the keys it gives weight to (1/50 for a softmax ViT-T/4, 49 patches + CLS; about 1/(k+1) for
a Krause patch query keeping k keys plus CLS; 0 where key 0 is outside a query's window). A sink
is mass on key 0 well above this.
"""

from __future__ import annotations

import pathlib
from collections.abc import Sequence
from typing import Any

from krause.analysis import command, plots


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    p = command.parser(__doc__.split("\n")[0], num_images=32)
    p.add_argument("--batch_size", type=int, default=8, help="images per forward pass")
    args = p.parse_args(argv)
    loaded, series = command.runs_and_series(args)
    out = pathlib.Path(args.out)
    figure = plots.sink_mass(series, out / "sinks.png")
    record = {
        "what": "per block: mean attention probability of queries 1..N-1 on key 0 (CLS / first"
        " pixel), over the test images; per head for each seed, mean over heads summarised as"
        " mean and std (ddof 1) over seeds; uniform_mass: the same for attention spread evenly"
        " over each query's keys with weight > 0 (the no-sink reference)",
        "num_images": args.num_images,
        "runs": command.describe_runs(loaded),
        "models": {
            label: {
                "blocks": [n for n in s[0]["names"] if n != "embedding"],
                "summary": command.summary(s, ["first_token_mass_mean", "uniform_mass_mean"]),
                "seeds": [
                    {
                        "first_token_mass_mean": seed["first_token_mass_mean"],
                        "first_token_mass_per_head": seed["first_token_mass"],
                        "uniform_mass_mean": seed["uniform_mass_mean"],
                        "uniform_mass_per_head": seed["uniform_mass"],
                    }
                    for seed in s
                ],
            }
            for label, s in series.items()
        },
        "figures": [str(figure)],
    }
    return command.write_record(record, out / "sinks.json", argv)


if __name__ == "__main__":
    main()
