"""A trained run read back from its workdir: its config, data, model, parameters and metrics.

  from convnet import trained

  run = trained.load("runs/mnist")          # the latest checkpoint
  run = trained.load("runs/mnist", "best")  # the epoch of best validation accuracy
  logits = run.model.apply({"params": run.params}, run.dataset.test.images[:8])

`convnet.export` and `convnet.visualize` read runs with it; so can a research
script. The run is read with `convnet.workdir` (config, metrics) and
`convnet.checkpoints` (parameters).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import jax
import ml_collections
import numpy as np

from convnet import checkpoints, input_pipeline, models, steps
from convnet import workdir as workdir_lib
from convnet.errors import CheckpointError


@dataclasses.dataclass(frozen=True)
class TrainedRun:
  """A trained run.

  Attributes:
    workdir: the folder it was read from.
    config: the run's config (its `config.json`).
    dataset: its data, split and scaled as in training (`input_pipeline.load`).
    model: the Linen module its config describes (`models.create_model`).
    params: the checkpoint's parameters, as `model.apply({"params": params}, x)` takes them.
    step: the training step of that checkpoint.
    records: the records of its `metrics.jsonl`, in order ([] where there is none).
  """

  workdir: str
  config: ml_collections.ConfigDict
  dataset: input_pipeline.Dataset
  model: Any
  params: Any
  step: int
  records: list[dict[str, Any]]


def load(workdir: str, checkpoint: str = "latest") -> TrainedRun:
  """Reads a run's config, data, checkpoint and metrics from its workdir.

  Args:
    workdir: a `convnet.main` workdir, or one `seed_<s>/` of a group of seeds
      trained together (its weights come from the group's stacked checkpoint).
    checkpoint: "latest", or "best" for the epoch of best validation accuracy
      (see `checkpoints.restore_params`).

  Returns:
    The run, its parameters those of the checkpoint asked for.

  Raises:
    CheckpointError: `workdir` is not a directory, has no config or checkpoint,
      or its checkpoint does not fit the model its config describes.
    ConfigError, DataError: the config's data or model cannot be built.
  """
  if not os.path.isdir(workdir):
    raise CheckpointError(f"--workdir={workdir} is not a directory")
  config = workdir_lib.read_config(workdir)
  params, step = checkpoints.restore_params(workdir, checkpoint)
  dataset = input_pipeline.load(config.data, config.seed)
  model = models.create_model(config.model, dataset.input_shape, dataset.num_classes)
  expected = jax.eval_shape(steps.init_params, model, jax.random.key(0), dataset.input_shape)
  if jax.tree.map(np.shape, params) != jax.tree.map(lambda x: x.shape, expected):
    raise CheckpointError(
      f"the checkpoint in {workdir} does not fit the model its config.json describes"
    )
  records = workdir_lib.read_metrics(workdir)
  return TrainedRun(workdir, config, dataset, model, params, step, records)
