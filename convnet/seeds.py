"""Several seeds or learning rates of one config, trained together by one `jax.vmap` program.

`train_seeds(config, seeds, workdir)` trains one copy of the configured model
for each seed; `train_group(config, members, workdir)` one for each named
member, whose config may differ from `config` in its seed and its learning
rate (`optimizer.learning_rate`): rates x seeds pay one compile, and one data
load per seed. Each member has the validation split, initialisation and data order
that `train.train_and_evaluate` gives its seed, and the same loop
(`train.fit`) trains them, so each member's metrics match a separate run's up
to float rounding: its masks (`convnet.augment`) are the ones its key draws
alone, under every PRNG implementation, and a member whose loss or parameters
stop being finite stops training alone, recorded as diverged with its own
message, while the others go on. Members whose rates differ keep their rate
in the optimizer's state (`optim.create_optimizer`'s `rate_in_state`): each
one's updates are those of the same group trained at its rate alone.

`workdir/seed_<s>/` (or `workdir/<name>/`) gets that member's `config.json`,
`metrics.jsonl` and TensorBoard events; `workdir/checkpoints/` holds the
stacked state, saved as a single run's is (every epoch, every
`checkpoint_every_steps`, and on SIGTERM or SIGINT), and running the same call
again resumes from it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Any

import ml_collections

from convnet import checkpoints, config_checks, train
from convnet import workdir as workdir_lib
from convnet.errors import ConfigError

seed_config = train.seed_config

# The fields in which a member's config may differ from its group's.
MEMBER_FIELDS = ("seed", "optimizer.learning_rate")
# A member's folder name: letters, digits and ._=,+- (a sweep's cell names), not a file of the
# group's folder.
MEMBER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._=,+-]{0,199}")
_RESERVED = (checkpoints.CHECKPOINTS, "profile")


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


def rate_config(
  config: ml_collections.ConfigDict, seed: int, learning_rate: float
) -> ml_collections.ConfigDict:
  """A copy of `config` with its seed and its peak learning rate set."""
  config = seed_config(config, seed)
  config.optimizer.learning_rate = float(learning_rate)
  return config


def train_group(
  config: ml_collections.ConfigDict,
  members: Sequence[tuple[str, ml_collections.ConfigDict]],
  workdir: str,
) -> list[dict[str, Any]]:
  """Trains each member's config in one vmapped program, in `workdir/<name>/`; resumes.

  Args:
    config: the group's config (its model, data, optimizer and schedule).
    members: (name, config) pairs, say `(f"lr={r},seed={s}", rate_config(config, s, r))`
      for rates x seeds. Each config may differ from `config` in `MEMBER_FIELDS`
      only; names are distinct folder names (`MEMBER_NAME`, not "checkpoints"
      or "profile"), and no two members have the same seed and rate.
    workdir: the group's folder: `checkpoints/` (the stacked state, whose loop
      records the members' names in their order) and one folder per member.

  Returns:
    One result for each member, in order, as `train_seeds` returns them
    (`vmap_group_size` is the number of members).

  Raises:
    ConfigError: in one line, a member that breaks the rules above (naming it,
      the field and both values), or a config that cannot work.
    CheckpointError: `workdir` holds a group of other members (names or
      order), or a member's saved config differs (another rate, say).
    train.SeedsDivergedError: a member diverged (see `train_seeds`); the
      others trained to the end, as they would alone.
    The errors of `train_seeds`, likewise.
  """
  members = [(name, member) for name, member in members]
  check_members(config, members)
  return train.train_members(config, workdir, members=members)


def check_members(
  config: ml_collections.ConfigDict, members: Sequence[tuple[str, ml_collections.ConfigDict]]
) -> None:
  """Refuses members that `train_group` cannot train together, in one line (see there).

  Raises:
    ConfigError: no member, a name that repeats or is not a folder name, a
      config that differs from `config` elsewhere than `MEMBER_FIELDS`, or two
      members of the same seed and rate; a member's config that cannot work
      (`config_checks.validate`).
  """
  if not members:
    raise ConfigError("a group needs at least one member")
  base = workdir_lib.flatten(json.loads(config.to_json_best_effort()))
  seen: dict[str, str] = {}
  for name, member in members:
    if not isinstance(name, str) or not MEMBER_NAME.fullmatch(name) or name in _RESERVED:
      raise ConfigError(
        f"member name {name!r} is not a folder name of letters, digits and ._=,+- (at most "
        f"200, starting with a letter or digit, not {' or '.join(_RESERVED)}): rename it"
      )
    if name in seen:
      raise ConfigError(f"member name {name!r} repeats: give each member its own name")
    flat = workdir_lib.flatten(json.loads(member.to_json_best_effort()))
    for field in sorted(set(base) | set(flat)):
      if field not in MEMBER_FIELDS and base.get(field) != flat.get(field):
        raise ConfigError(
          f"member {name!r}: {field} is {flat.get(field, '<absent>')!r}, not the group's "
          f"{base.get(field, '<absent>')!r}; members differ in {' and '.join(MEMBER_FIELDS)} only"
        )
    key = f"seed={member.seed}, optimizer.learning_rate={member.optimizer.learning_rate!r}"
    if key in seen.values():
      other = next(n for n, k in seen.items() if k == key)
      raise ConfigError(f"members {other!r} and {name!r} both have {key}: keep one")
    seen[name] = key
  for _, member in members:
    config_checks.validate(member)
