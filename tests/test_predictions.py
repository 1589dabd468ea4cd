"""Saved test predictions (`convnet.predictions`) and the paired statistics made from them.

A run keeps the predictions of the epoch whose test accuracy it reports; the file is small,
checked when read, and stays its best epoch's through resumes and reruns. McNemar's test and
the paired bootstrap are checked against independent computations on hand-made data.
"""

import functools
import os
import re
import zipfile

import jax
import numpy as np
import pytest
from scipy import stats

from convnet import epochs, input_pipeline, models, optim, predictions, seeds, train
from convnet import steps as steps_lib
from convnet import workdir as workdir_lib
from convnet.errors import FileFormatError
from convnet.sources import spoken_digits
from tests.conftest import REPO

# ----------------------------------------------------------------------------
# The file


def _made_up(n=1000, num_classes=10, accuracy=0.9, seed=0):
  """Predictions of `n` examples, about `accuracy` of them right, confident where right."""
  rng = np.random.default_rng(seed)
  label = rng.integers(0, num_classes, n)
  right = rng.random(n) < accuracy
  predicted = np.where(right, label, (label + rng.integers(1, num_classes, n)) % num_classes)
  probability = np.where(right, 1 - rng.beta(0.3, 8, n), rng.beta(1, 4, n))
  return predicted, probability, label


def test_saved_predictions_read_back_as_written_and_are_small(tmp_path):
  predicted, probability, label = _made_up(10_000)
  written = predictions.save(
    str(tmp_path), predicted, probability, label, step=120, epoch=3, num_classes=10
  )
  assert written == str(tmp_path / predictions.FILE)
  # A few bytes an example: 10,000 examples beside a checkpoint's megabytes.
  assert os.path.getsize(written) < 30_000
  for location in (str(tmp_path), written):
    run = predictions.load(location)
    np.testing.assert_array_equal(run.predicted, predicted)
    np.testing.assert_array_equal(run.label, label)
    np.testing.assert_allclose(run.true_probability, probability, atol=5e-4)  # float16
    assert (run.step, run.epoch, run.num_classes) == (120, 3.0, 10)
    assert run.accuracy == np.mean(predicted == label)
  assert not [n for n in os.listdir(tmp_path) if n != predictions.FILE]  # no temporary file left


def _damage(path, how):
  data = bytearray(path.read_bytes())
  if how == "truncated":
    path.write_bytes(data[: len(data) // 2])
  elif how == "bytes flipped":
    for i in range(len(data) // 3, len(data) // 3 + 64):
      data[i] ^= 0xFF
    path.write_bytes(bytes(data))
  elif how == "text":
    path.write_text('{"not": "arrays"}')
  elif how == "another program's arrays":
    np.savez_compressed(path.open("wb"), predicted=np.zeros(3), label=np.zeros(3))
  elif how == "a class out of range":
    with np.load(path) as npz:
      arrays = dict(npz)
    arrays["predicted"][0] = 10
    np.savez_compressed(path.open("wb"), **arrays)
  elif how == "a probability as a string":
    with np.load(path) as npz:
      arrays = dict(npz)
    arrays["true_probability"] = np.array(["x"] * len(arrays["label"]))
    np.savez_compressed(path.open("wb"), **arrays)
  elif how == "a zip bomb":
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
      archive.writestr("predicted.npy", b"\0" * (predictions.MAX_BYTES + 1))


@pytest.mark.parametrize(
  "how",
  [
    "truncated",
    "bytes flipped",
    "text",
    "another program's arrays",
    "a class out of range",
    "a probability as a string",
    "a zip bomb",
  ],
)
def test_a_damaged_or_foreign_file_is_refused_in_one_line(tmp_path, how):
  predictions.save(str(tmp_path), *_made_up(200), step=8, epoch=1, num_classes=10)
  _damage(tmp_path / predictions.FILE, how)
  with pytest.raises(FileFormatError) as error:
    predictions.load(str(tmp_path))
  message = str(error.value)
  assert "\n" not in message and str(tmp_path / predictions.FILE) in message


def test_a_folder_without_predictions_says_so(tmp_path):
  with pytest.raises(FileNotFoundError):
    predictions.load(str(tmp_path))


def test_saving_refuses_arrays_that_are_not_predictions(tmp_path):
  predicted, probability, label = _made_up(10)
  with pytest.raises(ValueError, match="must all be"):
    predictions.save(
      str(tmp_path), predicted[:5], probability, label, step=1, epoch=1, num_classes=10
    )
  with pytest.raises(ValueError, match="outside"):
    predictions.save(str(tmp_path), predicted, probability, label, step=1, epoch=1, num_classes=5)
  with pytest.raises(ValueError, match="outside"):
    predictions.save(
      str(tmp_path), predicted, probability + 2, label, step=1, epoch=1, num_classes=10
    )
  assert not os.listdir(tmp_path)


def _run(seed):
  predicted, probability, label = _made_up(50, seed=seed)
  return predictions.Predictions(predicted, label, probability.astype(np.float32), 4, 1.0, 10)


def test_correct_matrix_stacks_runs_on_the_same_examples_only():
  runs = [_run(0), _run(0)]
  correct = predictions.correct_matrix(runs)
  assert correct.shape == (2, 50) and correct.dtype == bool
  np.testing.assert_array_equal(correct[0], runs[0].predicted == runs[0].label)
  with pytest.raises(ValueError, match="differ"):
    predictions.correct_matrix([*runs, _run(1)])


# ----------------------------------------------------------------------------
# McNemar's test


def test_mcnemar_on_a_hand_worked_case():
  # A is right on the 60 first examples, B on the 50 first: 10 discordant pairs, all A's.
  a, b = np.arange(100) < 60, np.arange(100) < 50
  assert predictions.mcnemar(a, b) == (0, 2 * 0.5**10)  # P(X = 0 or X = 10), X ~ Bin(10, 1/2)
  assert predictions.mcnemar(b, a) == (0, 2 * 0.5**10)
  # Identical runs: no discordant pair, nothing to test.
  assert predictions.mcnemar(a, a) == (None, 1.0)
  # 3 against 1: P(X <= 1) * 2 = 2 * 5/16.
  a, b = np.array([1, 1, 1, 0, 1, 1]), np.array([0, 0, 0, 1, 1, 1])
  assert predictions.mcnemar(a, b) == (1, 2 * 5 / 16)


def test_mcnemar_matches_statsmodels():
  contingency = pytest.importorskip("statsmodels.stats.contingency_tables")
  rng = np.random.default_rng(1)
  for n, p_a, p_b in ((40, 0.8, 0.7), (300, 0.9, 0.85), (1000, 0.95, 0.95)):
    a, b = rng.random(n) < p_a, rng.random(n) < p_b
    table = [[np.sum(a & b), np.sum(a & ~b)], [np.sum(~a & b), np.sum(~a & ~b)]]
    expected = contingency.mcnemar(table, exact=True)
    statistic, p_value = predictions.mcnemar(a, b)
    assert statistic == expected.statistic
    assert p_value == pytest.approx(expected.pvalue, rel=1e-12)


def test_mcnemar_refuses_what_is_not_one_pair_of_runs():
  with pytest.raises(ValueError, match="same examples"):
    predictions.mcnemar(np.ones(3, bool), np.ones(4, bool))
  with pytest.raises(ValueError, match="booleans"):
    predictions.mcnemar(np.array([0.5, 1.0]), np.ones(2, bool))


# ----------------------------------------------------------------------------
# The paired bootstrap


def test_identical_runs_differ_by_zero():
  correct = np.random.default_rng(0).random((3, 200)) < 0.8
  assert predictions.paired_bootstrap(correct, correct, 100, 0) == (0.0, 0.0, 0.0)


def test_ten_more_right_gives_the_binomial_interval():
  # One seed; A right on 10 more of 100 examples. A resample's difference is the number of
  # those 10 among 100 draws, in points: Binomial(100, 0.1), whose 2.5% and 97.5% quantiles
  # are the interval.
  a, b = np.arange(100) < 60, np.arange(100) < 50
  difference, low, high = predictions.paired_bootstrap(a[None], b[None], 20_000, seed=0)
  assert difference == 10.0
  assert (low, high) == pytest.approx(tuple(stats.binom.ppf([0.025, 0.975], 100, 0.1)), abs=1)
  assert predictions.paired_bootstrap(b[None], a[None], 20_000, seed=0)[0] == -10.0


def test_seeds_are_resampled_in_pairs():
  # Two seeds: on seed 0 A is right on every example and B on none, on seed 1 they agree.
  # Resampling two seeds gives {0, 0}, {0, 1} or {1, 1}: 100, 50 or 0 points.
  a, b = np.zeros((2, 50), bool), np.zeros((2, 50), bool)
  a[0] = True
  assert predictions.paired_bootstrap(a, b, 4000, seed=0) == (50.0, 0.0, 100.0)


def test_clusters_are_resampled_whole():
  # Two voices of 30 clips: A beats B on every clip of the first, they agree on the second.
  # Resampling voices gives 100, 50 or 0 points, each with its chance; resampling clips one
  # by one keeps about half of each and gives a narrow interval around 50.
  a, b = np.zeros((1, 60), bool), np.zeros((1, 60), bool)
  a[0, :30] = True
  clusters = np.repeat(["voice a", "voice b"], 30)
  assert predictions.paired_bootstrap(a, b, 4000, 0, clusters) == (50.0, 0.0, 100.0)
  _, low, high = predictions.paired_bootstrap(a, b, 4000, 0)
  assert 25 < low < 50 < high < 75


def test_the_bootstrap_refuses_arrays_it_cannot_pair():
  a = np.ones((2, 5), bool)
  with pytest.raises(ValueError, match="same"):
    predictions.paired_bootstrap(a, np.ones((3, 5), bool))
  with pytest.raises(ValueError, match="clusters"):
    predictions.paired_bootstrap(a, a, clusters=np.arange(4))
  with pytest.raises(ValueError, match="2-D"):
    predictions.paired_bootstrap(np.ones(5, bool), np.ones(5, bool))


def test_spoken_digits_cluster_their_test_clips_by_voice(monkeypatch):
  voices = np.repeat(np.arange(20, 26), 4)
  monkeypatch.setattr(
    spoken_digits, "load_arrays", lambda params: ({"test_voices": voices}, "cache.npz")
  )
  found = predictions.cluster_labels({"source": "spoken_digits", "name": "spoken_digits"})
  np.testing.assert_array_equal(found, voices)
  assert predictions.cluster_labels({"source": "embedded"}) is None


# ----------------------------------------------------------------------------
# The evaluation's per-example output


def test_the_evaluation_gives_each_examples_prediction_in_order(config, embedded):
  config.model.name = "dense"
  config.model.dense_features = (8,)
  model = models.create_model(config.model, (28, 28, 1), 10)
  tx = optim.create_optimizer(config.optimizer, steps_per_epoch=10, total_steps=100)
  state = steps_lib.create_train_state(jax.random.key(0), model, (28, 28, 1), tx)
  split = input_pipeline.Split(
    input_pipeline.scale(embedded.test_images[:90]), embedded.test_labels[:90].astype(np.int32)
  )
  logits = np.asarray(state.apply_fn({"params": state.params}, split.images))
  probabilities = np.asarray(jax.nn.softmax(logits))[np.arange(90), split.labels]
  plain = epochs.evaluate(jax.jit(steps_lib.eval_step), state, split, 32)
  for microbatch_size in (0, 16):  # microbatches come back in the batch's order
    eval_fn = jax.jit(
      functools.partial(steps_lib.eval_step, per_example=True, microbatch_size=microbatch_size)
    )
    metrics, per_example = epochs.evaluate(eval_fn, state, split, 32, predictions=True)
    np.testing.assert_array_equal(per_example["predicted"], logits.argmax(-1))
    np.testing.assert_allclose(per_example["true_probability"], probabilities, rtol=1e-5)
    assert metrics["accuracy"] == plain["accuracy"] == np.mean(logits.argmax(-1) == split.labels)
    assert epochs.evaluate(eval_fn, state, split, 32) == metrics  # predictions stay unread


# ----------------------------------------------------------------------------
# Runs


def _small(config):
  """conftest's config as a tiny dense run: 4 epochs of 4 steps."""
  config.model.name = "dense"
  config.model.dense_features = (8,)
  config.optimizer.name = "sgd"
  config.optimizer.learning_rate = 0.3
  config.batch_size = 64
  config.microbatch_size = 0
  config.steps_per_epoch = 4
  config.num_epochs = 4
  config.log_every_steps = 4
  return config


def _check(folder, result, test_labels):
  """The folder's predictions are its result's best epoch's, example for example."""
  run = predictions.load(str(folder))
  assert run.epoch == result["best_epoch"]
  best = epochs.best_record(workdir_lib.read_metrics(str(folder)))
  assert run.step == best["step"]
  np.testing.assert_array_equal(run.label, test_labels)
  assert np.mean(run.predicted == test_labels) == result["test_accuracy_at_best_validation"]
  assert os.path.getsize(predictions.path(str(folder))) < 8_000  # 1,000 test digits
  return run


@pytest.mark.slow  # a short run, run again
def test_a_run_keeps_its_best_epochs_test_predictions(config, tmp_path):
  config = _small(config)
  workdir = tmp_path / "run"
  result = train.train_and_evaluate(config, str(workdir))
  labels = input_pipeline.load(config.data, config.seed).test.labels
  _check(workdir, result, labels)
  # The same command again trains nothing and leaves the file as it was.
  path = predictions.path(str(workdir))
  before = (open(path, "rb").read(), os.stat(path).st_mtime_ns)
  train.train_and_evaluate(config, str(workdir))
  assert (open(path, "rb").read(), os.stat(path).st_mtime_ns) == before


@pytest.mark.slow  # a run stopped by max_steps, resumed, then a stale file made again
def test_a_resumed_run_ends_with_its_best_epochs_predictions(config, tmp_path):
  config = _small(config)
  workdir = str(tmp_path / "run")
  config.max_steps = 6  # within epoch 2: its partial epoch may be the best, and then dropped
  train.train_and_evaluate(config, workdir)
  first = predictions.load(workdir)
  assert first.step == epochs.best_record(workdir_lib.read_metrics(workdir))["step"]
  config.max_steps = -1
  result = train.train_and_evaluate(config, workdir)
  labels = input_pipeline.load(config.data, config.seed).test.labels
  run = _check(workdir, result, labels)
  assert result["best_epoch"] < result["epoch"], "premise: the best epoch is not the last"
  # A stop between the best epoch's checkpoint and its predictions leaves older ones: the
  # next start makes them again from that checkpoint.
  stale = dict(step=1, epoch=0.25, num_classes=10)
  predictions.save(workdir, run.predicted, run.true_probability, run.label, **stale)
  again = train.train_and_evaluate(config, workdir)
  remade = _check(workdir, again, labels)
  np.testing.assert_array_equal(remade.predicted, run.predicted)
  np.testing.assert_allclose(remade.true_probability, run.true_probability)
  # A damaged file too.
  with open(predictions.path(workdir), "r+b") as f:
    f.truncate(100)
  _check(workdir, train.train_and_evaluate(config, workdir), labels)


@pytest.mark.slow  # two seeds trained together, one of them stopping early
def test_each_member_of_a_group_keeps_its_own_predictions(config, tmp_path):
  config = _small(config)
  config.num_epochs = 6
  config.early_stopping.patience = 1
  results = seeds.train_seeds(config, [0, 1], str(tmp_path / "group"))
  labels = input_pipeline.load(config.data, 0).test.labels
  runs = [
    _check(tmp_path / "group" / f"seed_{s}", r, labels)
    for s, r in zip((0, 1), results, strict=True)
  ]
  assert not np.array_equal(runs[0].true_probability, runs[1].true_probability)  # two models
  assert not os.path.exists(predictions.path(str(tmp_path / "group")))


@pytest.mark.slow  # a group in which one seed diverges
def test_a_diverged_seed_leaves_the_others_predictions_theirs(config, tmp_path):
  config = _small(config)
  config.optimizer.momentum = 0.9
  config.optimizer.learning_rate = 1e8
  with pytest.raises(train.SeedsDivergedError) as error:
    seeds.train_seeds(config, [0, 1], str(tmp_path / "group"))
  labels = input_pipeline.load(config.data, 0).test.labels
  finished = [
    (s, r) for s, r in zip((0, 1), error.value.results, strict=True) if not isinstance(r, Exception)
  ]
  assert len(finished) == 1, "premise: one seed diverges and one finishes"
  seed, result = finished[0]
  _check(tmp_path / "group" / f"seed_{seed}", result, labels)


# ----------------------------------------------------------------------------
# The docs


def test_the_docs_snippet_reads_a_runs_predictions(tmp_path, monkeypatch, capsys):
  with open(os.path.join(REPO, "docs", "training.md")) as f:
    page = f.read()
  section = page[page.index("## Saved test predictions") :]
  snippet = re.search(r"```python\n(.*?)```", section, re.DOTALL)[1]
  folder = tmp_path / "runs" / "mnist"
  folder.mkdir(parents=True)
  predicted, probability, label = _made_up(100)
  predictions.save(str(folder), predicted, probability, label, step=40, epoch=2, num_classes=10)
  monkeypatch.chdir(tmp_path)
  exec(compile(snippet, "docs/training.md", "exec"), {})
  printed = capsys.readouterr().out
  assert f"epoch 2, step 40: {100 * np.mean(predicted == label):.2f}% right" in printed
