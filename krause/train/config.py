"""The trainer's config schema and helpers for config files (`configs/*.py`).

A config file defines `get_config(arg)` and builds on `base_config()`:

    from krause.train import config as tc

    def get_config(arg=None):
        arg = tc.parse_arg(arg, model="kvit_t4", dataset="cifar10", smoke=False)
        config = tc.base_config()
        config.model_name = arg.model
        config.model = tc.model_config(arg.model, num_classes=10)
        config.input = krause.data.default_input_config(arg.dataset, "cifar")
        ...
        return config

Durations are given in steps, epochs or a fraction of the run (`resolve_steps`), as in big_vision.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib.util
import json
import logging
import math
import pathlib
import typing
from typing import Any

import ml_collections

from krause.data import default_input_config

ConfigDict = ml_collections.ConfigDict
_placeholder = ml_collections.config_dict.placeholder


def base_config() -> ConfigDict:
    """Every trainer field with its default:

    seed: PRNG seed of initialisation, dropout and the data order (the recipes' 3407).
    model_name: registry name (`krause.models.model_names()`); model: every field of that model
      (`model_config`), passed to `get_model(model_name, **model)`.
    input: the input config (`krause.data.default_input_config`); `input.global_batch_size` is
      the batch of one optimizer step, summed over all devices and hosts.
    cache_dataset: decode the train and test splits once into memory (uint8) instead of reading
      the prepared files every epoch: for small datasets (MNIST, Fashion-MNIST: 55 MB; CIFAR:
      184 MB), where decoding costs as much as a small model's step on a CPU.
    dtype: compute dtype of the model ("float32" or "bfloat16"); parameters, optimizer state and
      the loss stay float32.
    total_steps | total_epochs: length of the run. Several durations below accept `*_steps`,
      `*_epochs` (passes over the training split: steps = int(epochs * num_train / batch)) or
      `*_fraction` (of total steps); if several are set, steps win over epochs over fraction
      (logged), so `--config.total_steps=100` overrides a file's `total_epochs`.
    warmup_steps | warmup_epochs | warmup_fraction: linear warm-up from 0 to `lr`, then cosine
      decay to 0 at the last step (`optax.warmup_cosine_decay_schedule`).
    lr, wd: peak learning rate and AdamW's decoupled weight decay (multiplied by the lr, as in
      optax and PyTorch). adam: b1, b2, eps.
    decay_all: False (default) applies weight decay only to weight matrices and convolution
      kernels: biases, LayerNorm scales and offsets, the CLS token, position and token
      embeddings, Swin's relative position bias table and the Krause widths `log_sigma` are
      not decayed. True decays every parameter, as the paper's reference code does.
    grad_clip_norm: clip gradients to this global norm (None: no clipping).
    grad_accum_steps: split each step's batch into this many micro-batches whose gradients are
      averaged before one optimizer update (`optax.MultiSteps`); the data order is unchanged.
    log_every_steps: training metrics, sigma and progress every this many steps.
    eval_every_steps | eval_every_epochs | eval_every_fraction: test-set evaluation period; the
      last step is always evaluated and its numbers are the run's result (no selection).
    checkpoint_every_steps | checkpoint_every_epochs | checkpoint_every_fraction: checkpoint
      period; the last step is always saved. keep_checkpoints: how many to keep.
    distributed: call `jax.distributed.initialize()` (several hosts). It is also called when
      the environment says so (JAX_COORDINATOR_ADDRESS, or a SLURM/Open MPI job of several
      tasks).
    """
    config = ConfigDict()
    config.seed = 3407
    config.model_name = "vit_t4"
    config.model = ConfigDict()
    config.input = default_input_config("cifar10", "none")
    config.cache_dataset = False
    config.dtype = "float32"

    config.total_steps = _placeholder(int)
    config.total_epochs = _placeholder(float)
    config.warmup_steps = _placeholder(int)
    config.warmup_epochs = _placeholder(float)
    config.warmup_fraction = _placeholder(float)

    config.lr = 3e-4
    config.wd = 0.05
    config.adam = ConfigDict({"b1": 0.9, "b2": 0.999, "eps": 1e-8})
    config.decay_all = False
    config.grad_clip_norm = _placeholder(float)  # typed, so a config may set None
    config.grad_clip_norm = 1.0
    config.grad_accum_steps = 1

    config.log_every_steps = 50
    config.eval_every_steps = _placeholder(int)
    config.eval_every_epochs = _placeholder(float)
    config.eval_every_fraction = _placeholder(float)
    config.checkpoint_every_steps = _placeholder(int)
    config.checkpoint_every_epochs = _placeholder(float)
    config.checkpoint_every_fraction = _placeholder(float)
    config.keep_checkpoints = 3
    config.distributed = False
    return config


# ------------------------------------------------------------------------------ durations


def shrink_to_smoke(
    config: ConfigDict,
    *,
    global_batch_size: int = 8,
    eval_batch_size: int = 16,
    warmup_steps: int | None = 1,
) -> ConfigDict:
    """The `smoke` variant of a config: 3 steps of tiny batches, logging every step (in place)."""
    config.total_steps = 3
    if warmup_steps is not None:
        config.warmup_steps = warmup_steps
    config.input.global_batch_size = global_batch_size
    config.input.eval_batch_size = eval_batch_size
    config.log_every_steps = 1
    return config


def resolve_steps(
    config: ConfigDict, prefix: str, *, steps_per_epoch: float, total_steps: int | None = None
) -> int | None:
    """`{prefix}_steps`, `{prefix}_epochs` or `{prefix}_fraction` of `config` as a step count.

    Precedence steps > epochs > fraction (the overridden ones are logged). None if none is set.
    Epochs: int(epochs * steps_per_epoch); fraction: int(fraction * total_steps).
    """
    candidates = {
        "steps": config.get(f"{prefix}_steps"),
        "epochs": config.get(f"{prefix}_epochs"),
        "fraction": config.get(f"{prefix}_fraction"),
    }
    given = [unit for unit, value in candidates.items() if value is not None]
    if not given:
        return None
    unit = given[0]
    if len(given) > 1:
        logging.info(
            "%s_%s=%s takes precedence over %s.",
            prefix,
            unit,
            candidates[unit],
            ", ".join(f"{prefix}_{u}={candidates[u]}" for u in given[1:]),
        )
    value = candidates[unit]
    if value < 0:
        raise ValueError(f"{prefix}_{unit} must be >= 0, got {value}.")
    if unit == "steps":
        return int(value)
    if unit == "epochs":
        return int(value * steps_per_epoch)
    if total_steps is None:
        raise ValueError(f"{prefix}_fraction needs the total number of steps.")
    return int(value * total_steps)


# ------------------------------------------------------------------------------ validation

DTYPE_NAMES = ("float32", "bfloat16")
_PERIODS = ("eval_every", "checkpoint_every")


def validate_config(
    config: ConfigDict, *, num_devices: int = 1, num_train: int | None = None
) -> None:
    """Raises ValueError naming the first field whose value is not allowed, the value and what
    is allowed; call before any work. With `num_train` (training examples), durations given in
    epochs are checked as steps too (a run of >= 1 step, warm-up not beyond it)."""

    def check(ok: bool, name: str, allowed: str) -> None:
        if not ok:
            value = config[name] if "." not in name else config.input[name.split(".", 1)[1]]
            raise ValueError(f"config.{name}={value!r} is not allowed: {allowed}.")

    finite = math.isfinite
    check(finite(config.lr) and config.lr > 0, "lr", "the peak learning rate must be > 0")
    check(finite(config.wd) and config.wd >= 0, "wd", "weight decay must be >= 0")
    for beta in ("b1", "b2"):
        value = config.adam[beta]
        if not 0 <= value < 1:
            raise ValueError(f"config.adam.{beta}={value!r} is not allowed: it must be in [0, 1).")
    if not config.adam.eps > 0:
        raise ValueError(f"config.adam.eps={config.adam.eps!r} is not allowed: it must be > 0.")
    check(config.dtype in DTYPE_NAMES, "dtype", f"one of {', '.join(DTYPE_NAMES)}")
    clip = config.grad_clip_norm
    check(clip is None or clip > 0, "grad_clip_norm", "a norm > 0, or None for no clipping")
    check(config.log_every_steps >= 1, "log_every_steps", "it must be >= 1")
    check(config.keep_checkpoints >= 1, "keep_checkpoints", "at least 1 checkpoint is kept")

    # Durations.
    if config.total_steps is None and config.total_epochs is None:
        raise ValueError("config.total_steps and config.total_epochs are both None: set one (> 0).")
    for name in ("total_steps", "total_epochs"):
        check(config[name] is None or config[name] > 0, name, "the run's length must be > 0")
    for unit in ("steps", "epochs", "fraction"):
        name = f"warmup_{unit}"
        check(config[name] is None or config[name] >= 0, name, "warm-up must be >= 0")
        for prefix in _PERIODS:
            name = f"{prefix}_{unit}"
            check(config[name] is None or config[name] > 0, name, "a period must be > 0")
    for name in ("warmup_fraction", *(f"{p}_fraction" for p in _PERIODS)):
        check(config[name] is None or config[name] <= 1, name, "a fraction of the run is <= 1")

    warmup, total = config.warmup_steps, config.total_steps
    check(
        warmup is None or total is None or warmup <= total,
        "warmup_steps",
        f"warm-up cannot exceed the run's total_steps={total}",
    )

    # Batch sizes.
    batch, accum = config.input.global_batch_size, config.grad_accum_steps
    check(batch >= 1, "input.global_batch_size", "it must be >= 1")
    check(accum >= 1, "grad_accum_steps", "it must be >= 1")
    check(
        batch % accum == 0,
        "grad_accum_steps",
        f"it must divide input.global_batch_size={batch} into equal micro-batches",
    )
    check(
        (batch // accum) % num_devices == 0,
        "input.global_batch_size",
        f"each of the {accum} micro-batch(es) of {batch // accum} examples must split evenly"
        f" over the {num_devices} devices",
    )
    eval_batch = config.input.eval_batch_size
    check(eval_batch >= 1, "input.eval_batch_size", "it must be >= 1")
    check(
        eval_batch % num_devices == 0,
        "input.eval_batch_size",
        f"it must split evenly over the {num_devices} devices",
    )

    if num_train is not None:
        steps_per_epoch = num_train / batch
        total = resolve_steps(config, "total", steps_per_epoch=steps_per_epoch)
        if total < 1:
            raise ValueError(
                f"config.total_epochs={config.total_epochs!r} is not allowed: it is {total} steps"
                f" of {batch} examples ({num_train} training examples); the run needs >= 1 step."
            )
        warmup = resolve_steps(config, "warmup", steps_per_epoch=steps_per_epoch, total_steps=total)
        for prefix in _PERIODS:
            period = resolve_steps(
                config, prefix, steps_per_epoch=steps_per_epoch, total_steps=total
            )
            if period == 0:
                raise ValueError(
                    f"config.{prefix}_* is not allowed: it resolves to 0 steps of {batch} examples"
                    f" ({num_train} training examples); a period must be >= 1 step."
                )
        if warmup is not None and warmup > total:
            raise ValueError(
                f"warm-up of {warmup} steps (config.warmup_*) is not allowed: it exceeds the"
                f" {total} steps of the run."
            )


# ------------------------------------------------------------------------------ saved configs

_TYPES = {t.__name__: t for t in (int, float, str, bool, tuple, list, dict, object)}


def config_to_typed_json(config: ConfigDict) -> str:
    """`config` as JSON that `config_from_typed_json` turns back into an equal ConfigDict:
    plain JSON values, except tuples ({"__tuple__": [...]}) and typed placeholders holding None
    ({"__none__": "float"}), which plain JSON would turn into lists and untyped Nones."""

    def encode(node: Any, key: str, path: str) -> Any:
        value = node[key]
        if isinstance(value, ConfigDict):
            return {k: encode(value, k, f"{path}{k}.") for k in value}
        return encode_value(value, node.get_type(key), path.rstrip("."))

    def encode_value(value: Any, field_type: type, path: str) -> Any:
        if value is None:
            name = field_type.__name__
            return None if field_type is type(None) else {"__none__": _type_name(name, path)}
        if isinstance(value, tuple | list):
            items = [encode_value(v, type(v), path) for v in value]
            return {"__tuple__": items} if isinstance(value, tuple) else items
        if isinstance(value, bool | int | float | str):
            return value
        raise TypeError(f"config.{path}={value!r}: a saved config holds no {type(value)}.")

    tree = {k: encode(config, k, f"{k}.") for k in config}
    return json.dumps(tree, indent=2) + "\n"


def _type_name(name: str, path: str) -> str:
    if name not in _TYPES:
        raise TypeError(f"config.{path}: a saved config holds no placeholder of type {name}.")
    return name


def config_from_typed_json(text: str) -> ConfigDict:
    """The ConfigDict that `config_to_typed_json` wrote (field types and placeholders kept)."""

    def decode(value: Any) -> Any:
        if isinstance(value, dict):
            if set(value) == {"__tuple__"}:
                return tuple(decode(v) for v in value["__tuple__"])
            if set(value) == {"__none__"}:
                return _placeholder(_TYPES[value["__none__"]])
            config = ConfigDict()
            for key, item in value.items():
                config[key] = decode(item)
            return config
        if isinstance(value, list):
            return [decode(v) for v in value]
        return value

    return decode(json.loads(text))


# ------------------------------------------------------------------------------ config files


def parse_arg(arg: str | None, **spec: Any) -> ConfigDict:
    """Parses a config-file argument "key=value,flag,..." against defaults (big_vision's habit).

    `spec` gives every known key with its default; a value is converted to the default's type
    (bool: true/false/1/0/yes/no; a bare key means True). A default of None keeps strings.
    The string "none" gives None. Unknown keys are an error listing the known ones.
    """
    result = ConfigDict(spec, type_safe=False)
    for item in filter(None, (arg or "").split(",")):
        key, _, value = item.partition("=")
        key = key.strip()
        if key not in spec:
            raise ValueError(
                f"Unknown config argument {key!r} in {arg!r}; known arguments:"
                f" {', '.join(f'{k} (default {v!r})' for k, v in spec.items())}."
            )
        result[key] = _convert(key, value.strip() if "=" in item else None, spec[key])
    return result


def _convert(key: str, value: str | None, default: Any) -> Any:
    if value is None:
        if not isinstance(default, bool):
            raise ValueError(f"Config argument {key!r} needs a value ({key}=...).")
        return True
    if value.lower() == "none":
        return None
    if isinstance(default, bool):
        truth = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}
        if value.lower() not in truth:
            raise ValueError(f"Config argument {key}={value!r} is not a boolean.")
        return truth[value.lower()]
    if isinstance(default, int | float):
        return type(default)(value)
    return value


def model_config(name: str, **overrides: Any) -> ConfigDict:
    """Every field of registered model `name` (its registry defaults, then `overrides`).

    So `--config.model.FIELD=VALUE` works for any field, and the saved config records the whole
    model. The compute dtype is not a model field here: it is `config.dtype`. Fields that default
    to None become typed placeholders (e.g. `drop_path_rate`), overridable from the command line.
    """
    from krause.models import get_model

    module = get_model(name, **overrides)
    hints = typing.get_type_hints(type(module))
    fields = ConfigDict()
    for field in dataclasses.fields(module):
        if field.name in ("parent", "name", "dtype", "param_dtype") or not field.init:
            continue
        value = getattr(module, field.name)
        if value is None:
            fields[field.name] = _placeholder(_optional_type(hints.get(field.name)))
        else:
            fields[field.name] = value
    return fields


def _optional_type(hint: Any) -> type:
    """The non-None member of an `X | None` annotation (object if unclear)."""
    members = [t for t in typing.get_args(hint) if t is not type(None)]
    if len(members) == 1 and isinstance(members[0], type):
        return members[0]
    return hint if isinstance(hint, type) else object


def field_paths(config: ConfigDict, prefix: str = "") -> list[str]:
    """Dotted paths of every leaf field of `config`, e.g. ["input.dataset", "lr", ...]."""
    paths = []
    for key in sorted(config.keys()):
        value = config[key]
        path = f"{prefix}{key}"
        if isinstance(value, ConfigDict):
            paths.extend(field_paths(value, path + "."))
        else:
            paths.append(path)
    return paths


def unknown_field_message(config: ConfigDict, path: str) -> str | None:
    """An error message if dotted `path` is not a field of `config` (else None)."""
    node: Any = config
    parts = path.split(".")
    for depth, part in enumerate(parts):
        if not isinstance(node, ConfigDict) or part not in node:
            parent = ".".join(parts[:depth])
            where = f" in config.{parent}" if parent else ""
            siblings = field_paths(node) if isinstance(node, ConfigDict) else []
            close = difflib.get_close_matches(part, [p.split(".")[0] for p in siblings], 1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            return (
                f"No field {part!r}{where} (override --config.{path}).{hint} "
                f"Known fields{where}: {', '.join(siblings)}."
            )
        node = node[part]
    return None


def field_parent(config: ConfigDict, path: str) -> tuple[ConfigDict, str]:
    """(the ConfigDict holding dotted field `path`, the field's name); an unknown field is a
    ValueError listing the known ones (`unknown_field_message`)."""
    message = unknown_field_message(config, path)
    if message:
        raise ValueError(message)
    *parents, leaf = path.split(".")
    node = config
    for part in parents:
        node = node[part]
    return node, leaf


def load_config_module(path: str | pathlib.Path):
    """Imports a config file by path (as ml_collections' config_flags does)."""
    file = pathlib.Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"Config file {path} does not exist.")
    spec = importlib.util.spec_from_file_location(f"_krause_config_{file.stem}", file)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_config(spec: str) -> ConfigDict:
    """`get_config(arg)` of a config file given as "path/to/config.py[:arg]"."""
    path, _, arg = spec.partition(":")
    return load_config_module(path).get_config(arg or None)


def input_config(dataset: str, recipe: str, **overrides: Any) -> ConfigDict:
    """`krause.data.default_input_config(dataset, recipe)` with field `overrides`."""
    config = default_input_config(dataset, recipe)
    for key, value in overrides.items():
        if key not in config:
            raise ValueError(f"No input field {key!r}; known: {sorted(config.keys())}.")
        config[key] = value
    return config
