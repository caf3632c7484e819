"""Samples and completions from a trained pixel model.

    python -m krause.sample --workdir runs/karm_mnist --num 64 [--complete 16] --out samples.png

Writes `--num` unconditional samples as one grid to `--out` and, with `--complete N`, the first
N test images with their top half given and `--samples_per_image` completions each to
`<out stem>_completions.png` (one row per image: the original, then the completions). Prints
the decoding speed in images/s (compilation excluded).
"""

from __future__ import annotations

import os
import pathlib
import time

from absl import app, flags


def _timed(fn, *args) -> tuple:
    """(fn(*args), seconds) with `fn` compiled first, so the time excludes compilation."""
    import jax

    compiled = jax.jit(fn).lower(*args).compile()
    start = time.perf_counter()
    out = jax.block_until_ready(compiled(*args))
    return out, time.perf_counter() - start


def sample_run(
    workdir: str | os.PathLike,
    out: str | os.PathLike,
    *,
    num: int = 64,
    complete: int = 0,
    samples_per_image: int = 4,
    temperature: float = 1.0,
    step: int | None = None,
    seed: int = 0,
) -> dict:
    """Writes the grids (see the module docstring); returns {"samples": tokens [num, L],
    "completions": tokens [complete, 1 + samples_per_image, L] (originals first) or None,
    "paths": [...], "images_per_sec": {...}}."""
    import jax
    import numpy as np

    from krause import data as kdata
    from krause.models import sampling
    from krause.runs import load_run
    from krause.train import tasks

    for name, value in (("num", num), ("samples_per_image", samples_per_image)):
        if value < 1:
            raise ValueError(f"--{name}={value} is not allowed: it must be >= 1.")
    if complete < 0:
        raise ValueError(f"--complete={complete} is not allowed: it must be >= 0.")
    config, model, params = load_run(workdir, step)
    if tasks.task_of(config.input) != "pixels":
        raise ValueError(
            f"The run in {workdir} trains {config.model_name} on {config.input.dataset} images"
            " (a classifier); sampling needs a pixel model (configs/pixel_ar.py)."
        )
    image_shape = tuple(model.image_shape)
    key_samples, key_complete = jax.random.split(jax.random.key(seed))
    samples, seconds = _timed(
        lambda p, k: sampling.sample(model, p, k, num, temperature), params, key_samples
    )
    rates = {"samples": num / seconds}
    out = pathlib.Path(out)
    paths = [sampling.save_image_grid(samples, image_shape, out)]
    completions = None
    if complete:
        originals = _test_tokens(config, complete, kdata)
        half = (image_shape[0] // 2) * image_shape[1] * image_shape[2]  # top rows
        completed, seconds = _timed(
            lambda p, k, x: sampling.complete(model, p, k, x, samples_per_image, temperature),
            params,
            key_complete,
            originals[:, :half],
        )
        rates["completions"] = complete * samples_per_image / seconds
        completions = np.concatenate([originals[:, None], np.asarray(completed)], axis=1)
        paths.append(
            sampling.save_image_grid(
                completions, image_shape, out.with_name(f"{out.stem}_completions{out.suffix}")
            )
        )
    return {
        "samples": np.asarray(samples),
        "completions": completions,
        "paths": paths,
        "images_per_sec": rates,
    }


def _test_tokens(config, count: int, kdata):
    """Tokens [count, L] of the first `count` test images, as the model reads them."""
    import numpy as np

    rows = []
    for batch in kdata.make_eval_batches(config.input):
        rows.extend(batch["tokens"][np.asarray(batch["mask"], bool)])
        if len(rows) >= count:
            return np.stack(rows[:count]).astype(np.int32)
    raise ValueError(f"--complete={count}: the test split has only {len(rows)} images.")


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    from krause.metrics import quiet_library_logs

    quiet_library_logs()
    f = flags.FLAGS
    result = sample_run(
        f.workdir, f.out, num=f.num, complete=f.complete, samples_per_image=f.samples_per_image,
        temperature=f.temperature, step=f.step, seed=f.seed,
    )  # fmt: skip
    for name, rate in result["images_per_sec"].items():
        print(f"{name}: {rate:.1f} images/s")
    print("Wrote", ", ".join(str(p) for p in result["paths"]))


def run() -> None:
    """Command-line entry point (flags defined here, so importing the module defines none)."""
    flags.DEFINE_string("workdir", None, "The run's directory (its --workdir).")
    flags.DEFINE_string("out", None, "PNG file for the unconditional samples.")
    flags.DEFINE_integer("num", 64, "Number of unconditional samples.")
    flags.DEFINE_integer("complete", 0, "Number of test images to complete (0: none).")
    flags.DEFINE_integer("samples_per_image", 4, "Completions of each test image.")
    flags.DEFINE_float("temperature", 1.0, "Sampling temperature (0: greedy).")
    flags.DEFINE_integer("step", None, "Checkpoint step (default: the latest).")
    flags.DEFINE_integer("seed", 0, "PRNG seed of the samples.")
    flags.mark_flags_as_required(["workdir", "out"])
    app.run(main)


if __name__ == "__main__":
    run()
