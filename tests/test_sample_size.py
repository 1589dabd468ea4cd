"""Training on N examples: `data.num_train` subsets and `steps_per_epoch` step budgets."""

import json

import numpy as np
import pytest

from convnet import epochs, input_pipeline, run_setup, train
from convnet import workdir as workdir_lib
from convnet.errors import ConfigError


def _rows(images):
  return {row.tobytes() for row in np.asarray(images).reshape(len(images), -1)}


def _load(config, num_train, seed=0):
  config.data.num_train = num_train
  return input_pipeline.load(config.data, seed)


def test_subsets_are_nested_across_sizes_and_apart_from_validation_and_test(config):
  full = _load(config, 0)
  sizes = [50, 200, 1000, len(full.train)]
  subsets = [_load(config, n) for n in sizes]
  for smaller, larger in zip(subsets, subsets[1:], strict=False):
    assert _rows(smaller.train.images) <= _rows(larger.train.images)
  for n, subset in zip(sizes, subsets, strict=True):
    assert len(subset.train) == n
    assert _rows(subset.train.images) <= _rows(full.train.images)
    assert not _rows(subset.train.images) & _rows(subset.validation.images)
    assert not _rows(subset.train.images) & _rows(subset.test.images)
    np.testing.assert_array_equal(subset.validation.images, full.validation.images)
    np.testing.assert_array_equal(subset.test.labels, full.test.labels)


def test_a_subset_is_the_same_for_a_seed_and_another_for_another_seed(config):
  a, b = _load(config, 100), _load(config, 100)
  np.testing.assert_array_equal(a.train.images, b.train.images)
  np.testing.assert_array_equal(a.train.labels, b.train.labels)
  other = _load(config, 100, seed=1)
  assert _rows(other.train.images) != _rows(a.train.images)


@pytest.mark.parametrize("num_train", [-1, 3401, 10**9])
def test_a_size_the_split_cannot_give_is_refused_by_field(config, num_train):
  if num_train < 0:
    with pytest.raises(ConfigError, match=r"data.num_train=-1"):
      from convnet import config_checks

      config.data.num_train = num_train
      config_checks.validate(config)
    return
  with pytest.raises(ConfigError, match=f"data.num_train={num_train}.*1 to the 3400 training"):
    _load(config, num_train)


def test_epoch_order_in_passes_gives_every_example_once_a_pass():
  order = epochs.epoch_order(50, seed=3, epoch=2, length=160)
  assert len(order) == 160  # three whole passes and the start of a fourth: what is asked for
  for k in range(3):
    assert sorted(order[50 * k : 50 * (k + 1)]) == list(range(50))
  assert len(set(order[150:].tolist())) == 10  # no example twice within the fourth pass
  np.testing.assert_array_equal(order[:50], epochs.epoch_order(50, seed=3, epoch=2))
  np.testing.assert_array_equal(order, epochs.epoch_order(50, seed=3, epoch=2, length=200)[:160])


@pytest.mark.slow
def test_a_small_sample_trains_the_step_budget_not_a_few_steps(config, tmp_path):
  config.data.num_train = 50
  config.batch_size = 32
  config.microbatch_size = 0
  config.steps_per_epoch = 20
  config.num_epochs = 2
  config.log_every_steps = 0
  result = train.train_and_evaluate(config, str(tmp_path))
  assert result["step"] == 40 and result["epoch"] == 2
  records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert [r["step"] for r in records if r["kind"] == "epoch"] == [20, 40]
  assert result["train_accuracy"] > 0.5  # 50 examples seen 25 times: learned, at least them


def test_a_batch_larger_than_the_sample_is_refused(config):
  config.data.num_train = 50
  with pytest.raises(ConfigError, match="batch_size=256 is larger than the 50 training examples"):
    run_setup.model_and_optimizer(config, _load(config, 50))


def test_runs_saved_before_the_new_fields_are_still_the_same_run(config, tmp_path):
  workdir_lib.write_config(str(tmp_path), config)
  path = tmp_path / "config.json"
  saved = json.loads(path.read_text())
  del saved["data"]["num_train"], saved["data"]["num_validation"], saved["steps_per_epoch"]
  path.write_text(json.dumps(saved))
  workdir_lib.check_resumable(str(tmp_path), config)
  config.data.num_train = 100
  with pytest.raises(Exception, match=r"data.num_train: 0 \(saved\) vs 100 \(now\)"):
    workdir_lib.check_resumable(str(tmp_path), config)
  config.data.num_train, config.data.num_validation = 0, 100
  with pytest.raises(Exception, match=r"data.num_validation: 0 \(saved\) vs 100 \(now\)"):
    workdir_lib.check_resumable(str(tmp_path), config)


def _validation(config, num_validation, seed=0, num_train=0):
  config.data.num_validation = num_validation
  return _load(config, num_train, seed)


def test_validation_sets_are_nested_within_the_held_out_split_and_leave_training_alone(config):
  full = _validation(config, 0)
  sizes = [1, 100, 250, len(full.validation)]
  subsets = [_validation(config, v) for v in sizes]
  for smaller, larger in zip(subsets, subsets[1:], strict=False):
    assert _rows(smaller.validation.images) <= _rows(larger.validation.images)
  for v, subset in zip(sizes, subsets, strict=True):
    assert len(subset.validation) == v
    assert _rows(subset.validation.images) <= _rows(full.validation.images)
    np.testing.assert_array_equal(subset.train.images, full.train.images)
    np.testing.assert_array_equal(subset.test.labels, full.test.labels)
  # Labels stay with their images.
  by_row = dict(zip(_rows_list(full.validation.images), full.validation.labels, strict=True))
  small = subsets[1]
  assert [by_row[r] for r in _rows_list(small.validation.images)] == list(small.validation.labels)


def _rows_list(images):
  return [row.tobytes() for row in np.asarray(images).reshape(len(images), -1)]


def test_a_validation_subset_follows_its_seed_and_not_the_training_size(config):
  a = _validation(config, 100, num_train=50)
  b = _validation(config, 100, num_train=800)
  np.testing.assert_array_equal(a.validation.images, b.validation.images)
  other = _validation(config, 100, seed=1, num_train=50)
  assert _rows(other.validation.images) != _rows(a.validation.images)
  assert not _rows(b.train.images) & _rows(b.validation.images)


@pytest.mark.parametrize("num_validation", [601, 10**9])
def test_a_validation_size_the_split_cannot_give_names_both_fields(config, num_validation):
  with pytest.raises(
    ConfigError,
    match=f"data.num_validation={num_validation} must be 0 .* or 1 to the 600 examples that "
    r"data.validation_fraction=0.15 holds out; raise data.validation_fraction",
  ):
    _validation(config, num_validation)


def test_a_negative_validation_size_is_refused_by_field(config):
  from convnet import config_checks

  config.data.num_validation = -1
  with pytest.raises(ConfigError, match=r"data.num_validation=-1: .*is 0 \(all\) or more"):
    config_checks.validate(config)
