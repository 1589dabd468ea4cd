"""Several seeds of one config, trained together by one `jax.vmap` program.

`train_seeds(config, seeds, workdir)` trains one copy of the configured model
for each seed. Each copy has the validation split, initialisation and data
order that `train.train_and_evaluate` gives its seed, and the same loop
(`train.fit`) trains them, so each seed's metrics match a separate run's up to
float rounding: its masks (`convnet.augment`) are the ones its key draws alone,
under every PRNG implementation, and a seed whose loss or parameters stop
being finite stops training alone, recorded as diverged with its own message,
while the others go on. `workdir/seed_<s>/` gets that seed's `config.json`,
`metrics.jsonl` and TensorBoard events; `workdir/checkpoints/` holds the
stacked state, saved as a single run's is (every epoch, every
`checkpoint_every_steps`, and on SIGTERM or SIGINT), and running the same call
again resumes from it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import ml_collections

from convnet import train
from convnet.errors import ConfigError

seed_config = train.seed_config


def train_seeds(
  config: ml_collections.ConfigDict, seeds: Sequence[int], workdir: str
) -> list[dict[str, Any]]:
  """Trains `config` once for each seed, in one vmapped program; resumes from `workdir`.

  Returns:
    One result for each seed, with the keys of `train.train_and_evaluate`'s,
    and `vmap_group_size`. `wall_time_s` is the whole group's;
    `train_examples_per_sec` is each seed's share of the group's rate.

  Raises:
    ConfigError: the seeds repeat or there are none, or the config cannot work.
    train.SeedsDivergedError: a seed diverged; its `results` hold each seed's
      result, or the `DivergedError` (naming the seed and the step) of each
      seed that diverged. The other seeds trained to the end, as they would
      alone, and a rerun reports the same.
    The errors of `train.train_and_evaluate`, likewise; after SIGTERM or
    SIGINT, `RunInterrupted` once the group's checkpoint is saved.
  """
  seeds = [int(s) for s in seeds]
  if len(set(seeds)) != len(seeds) or not seeds:
    raise ConfigError(f"seeds={seeds} must be distinct, and at least one")
  return train.train_members(config, workdir, seeds)
