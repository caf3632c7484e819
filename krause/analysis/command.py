"""What the analysis commands over trained runs share: `--runs` parsing, loading, test inputs.

    python -m krause.analysis.NAME --runs LABEL=WORKDIR[,WORKDIR...] [--runs ...] --out DIR

Each `--runs` names one model (a label, e.g. "softmax" or "krause") and its seeds (run workdirs,
comma separated). Every run is read back with `krause.runs.load_run` (its latest checkpoint);
the inputs are the first `--num_images` images of the run's own test split, preprocessed as
the trainer evaluates them (`krause.data.pipeline.preprocess_eval`).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import pathlib
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from krause.analysis import metrics

# Model fields that must agree between the labels of one comparison (same size), when present.
SIZE_FIELDS = ("image_size", "image_shape", "patch_size", "width", "depth", "heads")


@dataclasses.dataclass(frozen=True)
class Run:
    """One trained run read back: its workdir, config, Flax module and parameters."""

    workdir: pathlib.Path
    config: Any
    model: Any
    params: Any


def parser(description: str, *, num_images: int = 8) -> argparse.ArgumentParser:
    """The flags every analysis command over trained runs takes."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument(
        "--runs",
        action="append",
        required=True,
        metavar="LABEL=WORKDIR[,WORKDIR...]",
        help="a model's label and its runs (one workdir per seed); repeat for each model",
    )
    p.add_argument("--out", default="results/analyses", help="output directory")
    p.add_argument(
        "--num_images", type=int, default=num_images, help="test images (the first N of the split)"
    )
    return p


def parse_runs(specs: Sequence[str]) -> dict[str, list[pathlib.Path]]:
    """["LABEL=WD1,WD2", ...] -> {label: [workdirs]} (labels in the order given)."""
    runs: dict[str, list[pathlib.Path]] = {}
    for spec in specs:
        label, sep, workdirs = spec.partition("=")
        label = label.strip()
        if not sep or not label:
            raise ValueError(f"--runs {spec!r}: expected LABEL=WORKDIR[,WORKDIR...].")
        if label in runs:
            raise ValueError(
                f"--runs: label {label!r} is given twice; list its seeds comma separated."
            )
        paths = [pathlib.Path(w.strip()).expanduser() for w in workdirs.split(",") if w.strip()]
        if not paths:
            raise ValueError(f"--runs {spec!r}: label {label!r} has no runs (no workdir given).")
        runs[label] = paths
    if not runs:
        raise ValueError("no --runs given.")
    return runs


def load_runs(runs: Mapping[str, Sequence[pathlib.Path]]) -> dict[str, list[Run]]:
    """Every run read back by `krause.runs.load_run`; errors name the label and workdir."""
    from krause.runs import load_run

    loaded: dict[str, list[Run]] = {}
    for label, workdirs in runs.items():
        loaded[label] = []
        for workdir in workdirs:
            try:
                config, model, params = load_run(workdir)
            except (FileNotFoundError, ValueError) as error:
                raise ValueError(
                    f"--runs {label}: cannot read the run in {workdir}: {error}"
                ) from None
            loaded[label].append(Run(pathlib.Path(workdir), config, model, params))
    return loaded


def _model_fields(run: Run) -> dict[str, Any]:
    fields = dict(run.config.model.to_dict())
    fields.pop("capture", None)
    return {"model_name": run.config.model_name, **fields}


def check_comparable(loaded: Mapping[str, Sequence[Run]], *, same_size: bool = True) -> None:
    """Clear errors for runs that cannot be compared.

    Every run must use the same dataset and input size (they see the same test images). Within
    a label every seed must be the same model (`config.model_name` and `config.model`). With
    `same_size`, the labels must also agree on the `SIZE_FIELDS` their models have (so layer l
    of one model is compared with layer l of the other).
    """
    runs = [(label, r) for label, rs in loaded.items() for r in rs]
    data = {
        (r.config.input.dataset, r.config.input.output, r.config.input.image_size): (label, r)
        for label, r in runs
    }
    if len(data) > 1:
        listing = "; ".join(
            f"{label} {r.workdir}: dataset {k[0]}, output {k[1]}, image_size {k[2]}"
            for k, (label, r) in data.items()
        )
        raise ValueError(f"the runs do not share one dataset and input size: {listing}.")
    for label, rs in loaded.items():
        first = _model_fields(rs[0])
        for r in rs[1:]:
            other = _model_fields(r)
            diff = sorted(k for k in first.keys() | other.keys() if first.get(k) != other.get(k))
            if diff:
                raise ValueError(
                    f"--runs {label}: {rs[0].workdir} and {r.workdir} are different models (fields"
                    f" {', '.join(diff)} differ); a label's runs must be seeds of one model."
                )
    if same_size:
        firsts = {label: _model_fields(rs[0]) for label, rs in loaded.items()}
        for name in SIZE_FIELDS:
            values = {label: f.get(name) for label, f in firsts.items()}
            if len({json.dumps(v) for v in values.values()}) > 1:
                raise ValueError(
                    f"the labels' models differ in {name} ({values}); layer-wise comparisons"
                    " need models of the same size."
                )


def test_inputs(config: Any, num_images: int) -> np.ndarray:
    """The first `num_images` test examples of a run's dataset, as the model's input.

    Returns images float32 [N, H, W, C] (normalised) or, for pixel models, tokens int32 [N, L].
    """
    from krause import data as kdata
    from krause.data.pipeline import preprocess_eval
    from krause.train import tasks

    if num_images < 1:
        raise ValueError(f"--num_images must be >= 1, got {num_images}.")
    info = kdata.get_dataset_info(config.input.dataset)
    source = kdata.data_source(config.input, info.test_split)
    if num_images > len(source):
        raise ValueError(f"--num_images {num_images} exceeds the {len(source)} test examples.")
    examples = [
        preprocess_eval(source[i], config=config.input, info=info) for i in range(num_images)
    ]
    batch = {k: np.stack([e[k] for e in examples]) for k in examples[0]}
    return np.asarray(tasks.model_input(tasks.task_of(config.input), batch))


def uniform_first_key_mass(weights: Any) -> Any:
    """The mass on key 0 if every query spread its attention evenly over its support: [B, H, N].

    Per query: 1 / (number of keys with weight > 0) if key 0 has weight > 0, else 0 (key 0 out
    of a window or not among the top-k). The reference point of the sink metric: 1/N for full
    softmax attention, about 1/(k+1) for a Krause patch query with CLS among its k+1 keys.

    Args:
      weights: dense [B, H, N, N] or `KrauseWeights` (jax or NumPy arrays; jit-compatible).
    """
    import jax.numpy as jnp

    from krause.attention import KrauseWeights

    if isinstance(weights, KrauseWeights):
        valid = (weights.indices >= 0)[None, :, None, :]  # [1, N, 1, W]
        support = jnp.sum((weights.local_values > 0) & valid, -1)  # [B, N, H]
        first = jnp.sum(
            jnp.where(weights.indices[None, :, None, :] == 0, weights.local_values, 0), -1
        )
        g = weights.global_values.shape[1]
        support = support.at[:, :g].set(jnp.sum(weights.global_values > 0, -1))
        first = first.at[:, :g].set(weights.global_values[..., 0])
        support, first = jnp.moveaxis(support, 1, 2), jnp.moveaxis(first, 1, 2)
    else:
        support, first = jnp.sum(weights > 0, -1), weights[..., 0]
    return jnp.where(first > 0, 1.0 / jnp.maximum(support, 1), 0.0)


def _first_key_only(tree: Any) -> Any:
    """Captured weights reduced to what the sink metric reads.

    Dense [B, H, N, N] `attention_weights` are cut to their key-0 column [B, H, N, 1] (Krause
    weights stay compact), and each gets a sibling `uniform_first_key_mass` [B, H, N].
    """
    from krause.attention import KrauseWeights

    if not isinstance(tree, Mapping):
        return tree
    out = {}
    for k, v in tree.items():
        if k == "attention_weights":
            values = v if isinstance(v, tuple) else (v,)
            out[k] = tuple(w if isinstance(w, KrauseWeights) else w[..., :1] for w in values)
            out["uniform_first_key_mass"] = tuple(uniform_first_key_mass(w) for w in values)
        else:
            out[k] = _first_key_only(v)
    return out


def _uniform_as_weights(tree: Any) -> Any:
    """The tree with `attention_weights` replaced by `uniform_first_key_mass` as [B, H, N, 1]
    (so `metrics.captured_layers` matches them to the blocks as it matches the weights)."""
    if not isinstance(tree, Mapping):
        return tree
    out = {k: _uniform_as_weights(v) for k, v in tree.items() if k != "uniform_first_key_mass"}
    if "uniform_first_key_mass" in tree:
        out["attention_weights"] = tuple(u[..., None] for u in tree["uniform_first_key_mass"])
    return out


@functools.lru_cache(maxsize=16)
def capture_fn(model: Any, *, first_key_only: bool = False):
    """jit(params, inputs -> the "intermediates" of `model.clone(capture=True)`, train=False).

    With `first_key_only`, dense attention weights keep only key 0 ([B, H, N, 1]: what the
    sink metric reads), so a pixel model's [B, H, 784, 784] maps never leave the device.
    Cached per (model, first_key_only): the analyses of one process share their compilations.
    """
    import jax

    def apply(params, inputs):
        _, state = model.clone(capture=True).apply(
            {"params": params}, inputs, mutable=["intermediates"], train=False
        )
        intermediates = state["intermediates"]
        return _first_key_only(intermediates) if first_key_only else intermediates

    return jax.jit(apply)


def series(
    run: Run,
    inputs: np.ndarray,
    *,
    batch_size: int,
    threshold: float = metrics.DEFAULT_CLUSTER_THRESHOLD,
    exclude_first_token: bool = False,
) -> dict[str, Any]:
    """`metrics.layer_series` of one run on `inputs`, computed `batch_size` inputs at a time.

    Every entry is a mean over inputs (and queries), so the chunks' values are combined as
    means weighted by chunk size: the result equals one `layer_series` over all inputs.
    """
    if batch_size < 1:
        raise ValueError(f"--batch_size must be >= 1, got {batch_size}.")
    apply = capture_fn(run.model, first_key_only=True)
    parts, sizes = [], []
    for start in range(0, len(inputs), batch_size):
        chunk = inputs[start : start + batch_size]
        captured = apply(run.params, chunk)
        part = metrics.series_from_intermediates(captured, threshold, exclude_first_token)
        uniform = metrics.captured_layers(_uniform_as_weights(captured))["weights"]
        part["uniform_mass"] = [
            None if u is None else np.asarray(u, np.float64)[:, :, 1:, 0].mean(axis=(0, 2)).tolist()
            for u in uniform
        ]
        part["uniform_mass_mean"] = [
            None if u is None else float(np.mean(u)) for u in part["uniform_mass"]
        ]
        parts.append(part)
        sizes.append(len(chunk))
    weights = np.asarray(sizes, np.float64) / sum(sizes)
    out = dict(parts[0])
    for key in (
        "clusters",
        "mean_cosine",
        "effective_rank",
        "first_token_mass_mean",
        "uniform_mass_mean",
    ):
        out[key] = [
            None if values[0] is None else float(np.dot(weights, values))
            for values in zip(*(p[key] for p in parts), strict=True)
        ]
    for key in ("first_token_mass", "uniform_mass"):
        out[key] = [
            None if values[0] is None else np.tensordot(weights, np.asarray(values), 1).tolist()
            for values in zip(*(p[key] for p in parts), strict=True)
        ]
    return out


def runs_and_series(
    args: argparse.Namespace, **series_kwargs: Any
) -> tuple[dict[str, list[Run]], dict[str, list[dict[str, Any]]]]:
    """The runs named by `--runs` (checked comparable) and each run's `series` on the first
    `--num_images` test images, `--batch_size` at a time: ({label: runs}, {label: series})."""
    loaded = load_runs(parse_runs(args.runs))
    check_comparable(loaded)
    first = next(iter(loaded.values()))[0]
    inputs = test_inputs(first.config, args.num_images)
    per_run = {
        label: [series(r, inputs, batch_size=args.batch_size, **series_kwargs) for r in runs]
        for label, runs in loaded.items()
    }
    return loaded, per_run


def summary(seeds: Sequence[Mapping[str, Any]], keys: Sequence[str]) -> dict[str, Any]:
    """Per layer mean and std (ddof 1; 0 for one seed) over seeds of each key's series."""
    out = {}
    for key in keys:
        values = [s[key] for s in seeds]
        if any(v is None for row in values for v in row):
            values = [[v for v in row if v is not None] for row in values]
        mean, std = metrics.mean_std(values)
        out[key] = {"mean": mean.tolist(), "std": std.tolist()}
    return out


def write_json(
    record: Mapping[str, Any], path: pathlib.Path, indent: int | None = 1
) -> pathlib.Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=indent) + "\n")
    return path


def write_record(
    record: Mapping[str, Any],
    path: pathlib.Path,
    argv: Sequence[str] | None,
    indent: int | None = 1,
) -> dict[str, Any]:
    """Writes an analysis' record to `path` (named after its module, e.g. sinks.json) with the
    command that reproduces it, `python -m krause.analysis.<path stem> ARGS`; returns it."""
    args = sys.argv[1:] if argv is None else argv
    record = {**record, "command": " ".join([f"python -m krause.analysis.{path.stem}", *args])}
    write_json(record, path, indent)
    return record


def describe_runs(loaded: Mapping[str, Sequence[Run]]) -> dict[str, Any]:
    """{label: {"workdirs", "model_name", "dataset", "seeds"}} for a JSON record."""
    return {
        label: {
            "workdirs": [str(r.workdir) for r in rs],
            "model_name": rs[0].config.model_name,
            "dataset": rs[0].config.input.dataset,
            "seeds": [int(r.config.seed) for r in rs],
        }
        for label, rs in loaded.items()
    }
