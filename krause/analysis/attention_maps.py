"""Per-head attention maps on the patch grid, Krause vs softmax ViTs, several layers and images.

    python -m krause.analysis.attention_maps --runs softmax=VIT_RUN --runs krause=KVIT_RUN \
        --out results/analyses [--num_images 4] [--query_patch P] [--layers 0,1,3]

For the first run of each label (`krause.runs.load_run`, latest checkpoint) and each of the first
N test images: per layer and head, the attention probabilities of one query patch (default: the
centre patch) over the patch grid (the CLS token's column left out). Writes
OUT/attention_maps_image<i>.png (rows: label x head, columns: layers; the query marked with a
cross) and OUT/attention_maps.json (the maps plotted, [heads][gh][gw] per label, image and layer,
plus the CLS query's maps over the patches). ViTs only (models with a patch grid and a CLS
token); every label's model must have the same grid and depth.
"""

from __future__ import annotations

import pathlib
from collections.abc import Sequence
from typing import Any

import numpy as np

from krause.analysis import command, metrics, plots


def default_layers(depth: int, count: int = 6) -> list[int]:
    """All layers if depth <= count, else `count` evenly spaced ones (first and last included)."""
    return sorted({round(float(x)) for x in np.linspace(0, depth - 1, min(depth, count))})


def _parse_layers(text: str | None, depth: int) -> list[int]:
    if text is None:
        return default_layers(depth)
    try:
        layers = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ValueError(f"--layers must be comma-separated integers, got {text!r}.") from None
    bad = [layer for layer in layers if not 0 <= layer < depth]
    if not layers or bad:
        raise ValueError(f"--layers {text!r}: layers must be in [0, {depth}) (depth {depth}).")
    return layers


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    from krause.models.vit import ViT

    p = command.parser(__doc__.split("\n")[0], num_images=4)
    p.add_argument("--query_patch", type=int, default=None, help="r * gw + c (default: centre)")
    p.add_argument("--layers", default=None, help="comma-separated block indices (default: <= 6)")
    args = p.parse_args(argv)
    loaded = command.load_runs(command.parse_runs(args.runs))
    for label, runs in loaded.items():
        for r in runs:
            if not isinstance(r.model, ViT):
                raise ValueError(
                    f"--runs {label}: {r.workdir} is a {r.config.model_name} run; attention maps"
                    " on the patch grid need a ViT (a patch grid and a CLS token)."
                )
    command.check_comparable(loaded)
    first = next(iter(loaded.values()))[0]
    grid = tuple(first.model.grid)
    depth = first.model.depth
    query = grid[0] // 2 * grid[1] + grid[1] // 2 if args.query_patch is None else args.query_patch
    if not 0 <= query < grid[0] * grid[1]:
        raise ValueError(f"--query_patch must be in [0, {grid[0] * grid[1]}), got {query}.")
    layers = _parse_layers(args.layers, depth)
    inputs = command.test_inputs(first.config, args.num_images)

    # {label: [image][layer] dense [H, N, N]} of each label's first run.
    weights: dict[str, list[list[np.ndarray]]] = {}
    for label, runs in loaded.items():
        captured = command.capture_fn(runs[0].model)(runs[0].params, inputs)
        per_layer = metrics.captured_layers(captured)["weights"]
        weights[label] = [
            [metrics.dense_attention_weights(w, image)[0] for w in per_layer]
            for image in range(args.num_images)
        ]

    out = pathlib.Path(args.out)
    figures = []
    for image in range(args.num_images):
        maps = {label: w[image] for label, w in weights.items()}
        path = out / f"attention_maps_image{image}.png"
        figures.append(str(plots.attention_maps(maps, grid, query, path, layers)))

    def grid_maps(w: np.ndarray, q: int | None) -> list:
        if q is None:  # the CLS query (token 0) over the patches
            return np.round(w[:, 0, 1:].reshape(w.shape[0], *grid), 5).tolist()
        return np.round(metrics.query_attention_grid(w, grid, q), 5).tolist()

    record = {
        "what": "attention probabilities over the patch grid of one query patch (query) and of"
        " the CLS token (cls), per layer and head, first run of each label, first test images",
        "grid": list(grid),
        "query_patch": query,
        "query_row_col": list(divmod(query, grid[1])),
        "layers": layers,
        "num_images": args.num_images,
        "runs": command.describe_runs(loaded),
        "maps": {
            label: {
                "workdir": str(loaded[label][0].workdir),
                "images": [
                    {
                        f"layer_{layer}": {
                            "query": grid_maps(w[image][layer], query),
                            "cls": grid_maps(w[image][layer], None),
                        }
                        for layer in layers
                    }
                    for image in range(args.num_images)
                ],
            }
            for label, w in weights.items()
        },
        "figures": figures,
    }
    # Unindented: ~4 MB with indentation.
    return command.write_record(record, out / "attention_maps.json", argv, indent=None)


if __name__ == "__main__":
    main()
