"""A training run as a plain value: the keyword arguments of `spot.train.trainer.train`.

The edge (a command) parses the user's gin files once into a `TrainSettings`;
recipes derive each run from it with `dataclasses.replace` (or the helpers
below) and call `run(settings)`. Nothing here reads gin after `from_flags`
returns: prompt factories that gin wrapped are turned into plain
`functools.partial`s of their classes with the bound arguments, so a run
started after the gin config is cleared builds the same model.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
from typing import Any, Mapping, Optional, Sequence

import numpy as np

from spot import errors


@dataclasses.dataclass(frozen=True)
class TrainSettings:
  """Exactly what `trainer.train(**...)` takes; `extra` holds any other bound keyword.

  Attributes mirror `spot.train.trainer.train`'s arguments; `extra` carries
  keywords this class does not name (added to trainer.train later), passed through;
  `macros` records gin macros recipes read but `train` does not take
  (MODEL_FAMILY, MODEL_SIZE: which library entries fit the model).
  `init_seed` / `data_seed` None follow `seed` (a recipe that changes `seed`
  changes them too); `protocol` is "dev" or "dev1/dev2".
  """

  model: Any
  train_dataset_cfg: Any
  model_dir: str
  train_steps: int
  initial_checkpoint_path: Optional[str]
  optimizer: Any = None
  trainable: Any = "prompt"
  seed: int = 0
  init_seed: Optional[int] = None
  data_seed: Optional[int] = None
  protocol: str = "dev"
  num_microbatches: int = 1
  checkpoint_cfg: Any = None
  eval_cfg: Any = None
  log_every: int = 10
  partitioner: Any = None
  method: Optional[str] = None
  gin_config: Optional[str] = None
  metrics_writers: Sequence[Any] = ()
  stop_after_steps: Optional[int] = None
  verbose: bool = True
  extra: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  macros: Mapping[str, Any] = dataclasses.field(default_factory=dict)

  def kwargs(self) -> dict[str, Any]:
    """The keyword arguments of `trainer.train` (unset optional ones left to its defaults)."""
    out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) 
           if f.name not in ("extra", "macros")}
    for name in ("checkpoint_cfg", "optimizer", "partitioner"):
      if out[name] is None:
        del out[name]
    out.update(self.extra)
    return out


_FIELDS = frozenset(f.name for f in dataclasses.fields(TrainSettings)) - {"extra", "macros"}
_MACROS = ("MODEL_FAMILY", "MODEL_SIZE")


def _gin_unwrapped(value: Any) -> Optional[tuple[Any, dict[str, Any]]]:
  """(the class, its bound arguments) when `value` is a gin-wrapped class, else None.

  Gin wraps a class referenced without `()` (`PROMPT = @prompts.PrefixPrompt`) in a
  subclass that reads its bindings when called; the original is next in its MRO.
  """
  import gin  # pylint: disable=g-import-not-at-top
  if not isinstance(value, type) or len(value.__mro__) < 2:
    return None
  original = value.__mro__[1]
  if (original.__name__, original.__module__) != (value.__name__, value.__module__):
    return None
  try:
    return original, copy.deepcopy(gin.get_bindings(original))  # evaluates @refs, %macros
  except ValueError:  # not registered with gin
    return None


def _plain(value: Any) -> Any:
  """A gin-wrapped class as `functools.partial(cls, **its bound arguments)` (recursively)."""
  found = _gin_unwrapped(value)
  if found is None:
    return value
  cls, bound = found
  return functools.partial(cls, **{k: _plain(v) for k, v in bound.items()})


def _plain_model(model: Any) -> Any:
  if dataclasses.is_dataclass(model):
    changes = {f.name: _plain(getattr(model, f.name)) for f in dataclasses.fields(model)
               if f.init and _gin_unwrapped(getattr(model, f.name)) is not None}
    return dataclasses.replace(model, **changes) if changes else model
  return model


def from_parsed_gin() -> TrainSettings:
  """The settings the parsed gin config binds for `trainer.train` (call while it is parsed)."""
  import gin  # pylint: disable=g-import-not-at-top
  from spot.train import trainer  # pylint: disable=g-import-not-at-top
  bound = copy.deepcopy(gin.get_bindings(trainer.train))  # evaluates @refs and %macros
  if "model" in bound:
    bound["model"] = _plain_model(bound["model"])
  missing = [k for k in ("model", "train_dataset_cfg", "model_dir", "train_steps",
                         "initial_checkpoint_path") if k not in bound]
  if missing:
    raise errors.UsageError(f"the gin config binds no trainer.train.{missing[0]}; add a run "
                            "file, e.g. --gin_file=spot/gin/runs/prompt_finetune.gin.")
  known = _following_seed({k: v for k, v in bound.items() if k in _FIELDS})
  extra = {k: v for k, v in bound.items() if k not in _FIELDS}
  from spot.train import cli  # pylint: disable=g-import-not-at-top
  macros = {m: cli.macro(m, None) for m in _MACROS}
  return TrainSettings(**known, gin_config=gin.config_str(), extra=extra, macros=macros)


def _following_seed(known: dict[str, Any]) -> dict[str, Any]:
  """INIT_SEED / DATA_SEED equal to SEED (the run files' `%SEED` default) become None,
  so they keep following `seed` when a recipe sets it."""
  seed = known.get("seed", 0)
  for name in ("init_seed", "data_seed"):
    if known.get(name) == seed:
      known[name] = None
  return known


def with_seeds(settings: "TrainSettings", seed: int, init_seed: Optional[int] = None,
               data_seed: Optional[int] = None) -> "TrainSettings":
  """The settings of one seed: SEED, INIT_SEED and DATA_SEED (None: `seed`), the data
  order included (the train dataset's seed is DATA_SEED)."""
  data = dataclasses.replace(settings.train_dataset_cfg,
                             seed=seed if data_seed is None else data_seed)
  return for_run(settings, seed=seed, init_seed=init_seed, data_seed=data_seed,
                 train_dataset_cfg=data)


def from_flags(flags: Sequence[str], defaults: Sequence[str] = ()) -> TrainSettings:
  """Parses `spot train` flags once into settings; gin is cleared afterwards.

  Args:
    flags: `--gin_file=...`, `--gin.KEY=VALUE`, `--gin_bindings=...`.
    defaults: bindings applied before the user's (which win), e.g. a
      placeholder `MODEL_DIR` a recipe replaces anyway.
  """
  import gin  # pylint: disable=g-import-not-at-top
  from spot.train import cli  # pylint: disable=g-import-not-at-top
  args = cli.build_parser("spot train").parse_args(cli.rewrite_gin_args(flags))
  try:
    cli.parse_gin(list(args.gin_file), list(defaults) + list(args.gin_bindings),
                  cli._search_paths(args.gin_search_paths))  # pylint: disable=protected-access
    return from_parsed_gin()
  finally:
    gin.clear_config()


def with_prompt_init(settings: TrainSettings, prompt: np.ndarray) -> TrainSettings:
  """The settings with the model's prompt initialised from `prompt` [P, D].

  Rebuilds the prompt factory with `prompts.from_array(prompt)` as its
  `prompt_init` (a prefix prompt, as every transfer uses).
  """
  from spot import prompts  # pylint: disable=g-import-not-at-top
  model = settings.model
  factory = getattr(model, "prompt", None)
  if factory is None or "prompt_init" not in getattr(factory, "keywords", {"prompt_init": 0}):
    raise errors.UsageError(
        f"the run's prompt {getattr(factory, 'func', factory)!r} takes no prompt_init, so a "
        "source prompt cannot initialise it; use a prefix prompt (models/*_prompt.gin).")
  init = prompts.from_array(np.asarray(prompt, np.float32))
  new = functools.partial(factory, prompt_init=init)
  return dataclasses.replace(settings, model=dataclasses.replace(model, prompt=new))


def for_run(settings: TrainSettings, **changes: Any) -> TrainSettings:
  """`dataclasses.replace` that also notes the changes at the end of the saved gin config."""
  if settings.gin_config is not None:
    note = "\n".join(f"# recipe override: {k} = {_shown(v)}" for k, v in sorted(changes.items()))
    changes["gin_config"] = f"{settings.gin_config.rstrip()}\n\n{note}\n"
  return dataclasses.replace(settings, **changes)


def _shown(value: Any) -> str:
  text = repr(value)
  return text if len(text) <= 200 else f"{type(value).__name__}(...)"


def run(settings: TrainSettings) -> Any:
  """Trains with `settings`; returns the trainer's `TrainResult`."""
  from spot.train import trainer  # pylint: disable=g-import-not-at-top
  return trainer.train(**settings.kwargs())
