"""Shared pytest fixtures.

* `rng`: a NumPy generator with a fresh seed per test. The seed is printed (pytest shows it with
  the captured output of a failing test) and recorded as a property in JUnit XML. Set
  `KRAUSE_TEST_SEED=<int>` to replay a failure.
* `x64`: enables float64 in JAX for the duration of one test only (a scoped context manager, so
  test modules that do not request it keep JAX's default float32 behaviour). Attention tests use
  it through `pytestmark = pytest.mark.usefixtures("x64")`.
* `classification_run`, `pixel_run`: one tiny mock-data training run per test module that requests
  it ((workdir, results)); `compilation_cache`: a persistent compilation cache for such a module
  (test_train.py, test_runs.py) so that resumed runs reuse executables. Specs in mock_runs.py.
* `fast_jit`: `jax.jit` with XLA CPU options that cut compile time of small test programs ~4x
  (tests compile many tiny programs; runtime does not matter). Falls back to plain `jax.jit` if
  this JAX/XLA does not know the options.
"""

from __future__ import annotations

import functools
import os

import jax
import numpy as np
import pytest


@pytest.fixture
def rng(request: pytest.FixtureRequest) -> np.random.Generator:
    env = os.environ.get("KRAUSE_TEST_SEED")
    seed = int(env) if env else int(np.random.SeedSequence().entropy % (1 << 63))
    print(f"[{request.node.nodeid}] seed: KRAUSE_TEST_SEED={seed}")
    request.node.user_properties.append(("seed", seed))
    return np.random.default_rng(seed)


@pytest.fixture
def x64():
    with jax.enable_x64(True):
        yield


FAST_COMPILE_OPTIONS = {
    "xla_backend_optimization_level": 1,
    "xla_cpu_use_fusion_emitters": False,
    "xla_cpu_parallel_codegen_split_count": 1,
}


@pytest.fixture(scope="session")
def fast_jit():
    jit = functools.partial(jax.jit, compiler_options=FAST_COMPILE_OPTIONS)
    try:
        jit(lambda x: x + 1)(np.float32(0))
    except Exception:  # options unknown to this XLA version
        return jax.jit
    return jit


@pytest.fixture(scope="module")
def compilation_cache(tmp_path_factory):
    """A persistent compilation cache for the requesting module: resumed runs reuse executables."""
    from jax.experimental.compilation_cache import compilation_cache as cc

    names = (
        "jax_compilation_cache_dir",
        "jax_persistent_cache_min_compile_time_secs",
        "jax_persistent_cache_min_entry_size_bytes",
    )
    saved = {name: getattr(jax.config, name) for name in names}
    values = (str(tmp_path_factory.mktemp("jax_cache")), 0.0, 0)
    for name, value in zip(names, values, strict=True):
        jax.config.update(name, value)
    cc.reset_cache()
    yield
    for name, value in saved.items():
        jax.config.update(name, value)
    cc.reset_cache()


@pytest.fixture(scope="module")
def classification_run(tmp_path_factory):
    from mock_runs import CLASSIFICATION, run  # imported on use: tfds and the trainer are slow

    workdir = tmp_path_factory.mktemp("classification")
    return workdir, run(CLASSIFICATION, workdir)


@pytest.fixture(scope="module")
def pixel_run(tmp_path_factory):
    from mock_runs import PIXELS, run

    workdir = tmp_path_factory.mktemp("pixels")
    return workdir, run(PIXELS, workdir, num_examples=12)
