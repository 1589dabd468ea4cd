"""A trained run read back from its workdir: its config, data, model, parameters and metrics.

  from convnet import trained

  run = trained.load("runs/mnist")          # the latest checkpoint
  run = trained.load("runs/mnist", "best")  # the epoch of best validation accuracy
  logits = run.model.apply({"params": run.params}, run.dataset.test.images[:8])

`convnet.export` and `convnet.visualize` read runs with it; so can a research
script. The run is read with `convnet.workdir` (config, metrics) and
`convnet.checkpoints` (parameters), which checks the arrays against the digest
saved with them; `check_test_accuracy` checks that the config, data and
parameters still make the model whose test accuracy the run recorded.
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

  The checkpoint is checked against the digest saved with its arrays; for
  "latest", a damaged one is passed over for the newest good one, with a
  warning (see `checkpoints.restore_params`). `check_test_accuracy` checks
  the model against the run's records.

  Args:
    workdir: a `convnet.main` workdir, or one `seed_<s>/` of a group of seeds
      trained together (its weights come from the group's stacked checkpoint).
    checkpoint: "latest", or "best" for the epoch of best validation accuracy
      (see `checkpoints.restore_params`).

  Returns:
    The run, its parameters those of the checkpoint asked for.

  Raises:
    CheckpointError: `workdir` is not a directory, has no config or checkpoint,
      none of its checkpoints is good, or its checkpoint does not fit the model
      its config describes.
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


def recorded_test_accuracy(run: TrainedRun) -> float | None:
  """The test accuracy that `metrics.jsonl` recorded at the run's checkpoint step, or None.

  That of the epoch record of `run.step` (a `max_steps` stop's partial epoch
  included; for the best checkpoint, the best epoch's record); None where no
  record of that step holds one (a checkpoint saved within an epoch).
  """
  for record in reversed(run.records):
    if record.get("kind") == "epoch" and record.get("step") == run.step:
      value = record.get("test_accuracy")
      if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
  return None


def check_test_accuracy(run: TrainedRun, logits: np.ndarray) -> str:
  """Refuses a run whose files no longer make the model it trained.

  `logits`, float (N, num_classes), are the model's on `run.dataset.test`.
  Their accuracy must be what `metrics.jsonl` recorded at the checkpoint's
  step (`recorded_test_accuracy`), to within float noise: one image, and one
  in a thousand more (an argmax near a tie may flip between batch sizes).
  A config.json edited after training (an activation, the data) passes the
  shape checks but fails this one.

  Returns:
    A line that says how the two accuracies compare, or that there was nothing to compare.

  Raises:
    CheckpointError: the accuracies differ; the message gives both.
  """
  labels = np.asarray(run.dataset.test.labels)
  recorded = recorded_test_accuracy(run)
  if not len(labels):
    return "Test accuracy not compared with the run's records: the data has no test split"
  if recorded is None:
    return (
      f"Test accuracy not compared with the run's records: metrics.jsonl has none at step "
      f"{run.step}"
    )
  measured = float(np.mean(np.asarray(logits).argmax(-1) == labels))
  if abs(measured - recorded) > (1 + 0.001 * len(labels)) / len(labels) + 1e-12:
    raise CheckpointError(
      f"the run's files disagree: the model that {run.workdir}/config.json describes, with "
      f"the parameters of step {run.step}, has test accuracy {measured:.4f}, but "
      f"metrics.jsonl recorded {recorded:.4f} at that step. Was config.json or the data "
      "changed after training?"
    )
  return (
    f"Test accuracy {measured:.4f} on {len(labels):,} test images, as metrics.jsonl recorded "
    f"at step {run.step}"
  )
