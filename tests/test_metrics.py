"""Metrics are one dict: docs/adding_a_metric.md's example, made as written, reaches everything.

The page's edit adds top-2 accuracy to `steps.example_metrics`. With it, a run, a run stopped
mid-epoch and resumed, a group of seeds and a sweep record each carry the new metric, and its
value equals top-2 accuracy computed with NumPy from the trained parameters.
"""

import difflib
import inspect
import json
import os
import re

import jax
import numpy as np
import pytest

from convnet import (
  analysis,
  checkpoints,
  input_pipeline,
  models,
  report,
  seeds,
  steps,
  sweep,
  sweep_records,
  train,
)
from tests.conftest import book_state
from tests.test_train import _events

PAGE = os.path.join(os.path.dirname(os.path.dirname(__file__)), "docs", "adding_a_metric.md")
NAME = "top_2_accuracy"


def _page_code() -> str:
  with open(PAGE) as f:
    (code,) = re.findall(r"```python\n(.*?)```", f.read(), re.DOTALL)
  return code


def _body_lines(source: str) -> list[str]:
  """A function's source lines without its docstring."""
  source = re.sub(r'\n  """.*?"""\n', "\n", source, count=1, flags=re.DOTALL)
  return [line for line in source.splitlines() if line.strip()]


def test_the_page_makes_one_insertion_in_example_metrics():
  ops = difflib.SequenceMatcher(
    a=_body_lines(inspect.getsource(steps.example_metrics)), b=_body_lines(_page_code())
  ).get_opcodes()
  changes = [op for op in ops if op[0] != "equal"]
  assert [op[0] for op in changes] == ["insert"], changes


@pytest.fixture
def top_2(monkeypatch):
  """`steps.example_metrics` as the page writes it, in the module's namespace."""
  namespace = dict(vars(steps))
  exec(_page_code(), namespace)  # noqa: S102 - the page's code, as a user would paste it
  monkeypatch.setattr(steps, "example_metrics", namespace["example_metrics"])


def _small(config):
  config.batch_size = 64
  config.microbatch_size = 32
  config.steps_per_epoch = 6
  config.num_epochs = 2
  config.log_every_steps = 3
  config.checkpoint_every_steps = 3
  return config


def _records(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f]


def _numpy_top_2(config, workdir) -> float:
  """Top-2 accuracy of the run's last parameters on its test split, computed here."""
  data = input_pipeline.load(config.data, config.seed)
  model = models.create_model(config.model, data.input_shape, data.num_classes)
  params, _ = checkpoints.restore_params(workdir)
  logits = np.asarray(jax.jit(model.apply)({"params": params}, data.test.images))
  top = np.argsort(-logits, axis=-1)[:, :2]
  return float(np.mean(np.any(top == data.test.labels[:, None], axis=-1)))


def test_a_new_metric_reaches_records_log_tensorboard_and_result(top_2, config, tmp_path, caplog):
  config = _small(config)
  with caplog.at_level("INFO"):
    result = train.train_and_evaluate(config, str(tmp_path / "run"))
  epochs = [r for r in _records(tmp_path / "run") if r["kind"] == "epoch"]
  assert len(epochs) == 2
  for record in epochs:
    for split in ("train", "validation", "test"):
      top_1, top_2_value = record[f"{split}_accuracy"], record[f"{split}_{NAME}"]
      assert top_1 <= top_2_value <= 1.0, (split, top_1, top_2_value)
  assert result[f"test_{NAME}"] == epochs[-1][f"test_{NAME}"]
  best = max(epochs, key=lambda r: r["validation_accuracy"])
  assert result[f"test_{NAME}_at_best_validation"] == best[f"test_{NAME}"]
  assert f"test_{NAME}=" in caplog.text
  expected = _numpy_top_2(config, str(tmp_path / "run"))
  assert result[f"test_{NAME}"] == pytest.approx(expected, abs=1e-6)
  assert expected > result["test_accuracy"]  # a real top-2, not top-1 under another name

  scalars, _ = _events(str(tmp_path / "run"))
  for tag in (f"epoch/train_{NAME}", f"validation/{NAME}", f"test/{NAME}"):
    assert [step for step, _ in scalars[tag]] == [6, 12], tag
  assert scalars[f"test/{NAME}"][-1][1] == pytest.approx(result[f"test_{NAME}"], abs=1e-6)


@pytest.mark.slow
def test_a_new_metric_resumes_mid_epoch_as_if_never_stopped(top_2, config, tmp_path):
  config = _small(config)
  straight = train.train_and_evaluate(config, str(tmp_path / "straight"))
  stopped = config.copy_and_resolve_references()
  stopped.max_steps = 9  # mid-way through the second epoch, after a checkpoint at step 9
  train.train_and_evaluate(stopped, str(tmp_path / "resumed"))
  _, loop = checkpoints.read_loop(str(tmp_path / "resumed"))
  assert set(loop["epoch_sums"]) == {"loss", "accuracy", NAME, "count"}
  assert loop["epoch_sums"]["count"] == [3 * 64]
  resumed = train.train_and_evaluate(config, str(tmp_path / "resumed"))
  for key in (f"train_{NAME}", f"validation_{NAME}", f"test_{NAME}", "train_loss"):
    assert resumed[key] == straight[key], key


@pytest.mark.slow
def test_a_new_metric_reaches_each_seed_and_the_sweep_record(top_2, config, tmp_path):
  config = _small(config)
  config.num_epochs = 1
  results = seeds.train_seeds(config, [0, 1], str(tmp_path / "group"))
  for seed, result in zip((0, 1), results, strict=True):
    (record,) = [r for r in _records(tmp_path / "group" / f"seed_{seed}") if r["kind"] == "epoch"]
    assert result[f"test_{NAME}"] == record[f"test_{NAME}"]
    assert record["test_accuracy"] <= record[f"test_{NAME}"]
  assert results[0][f"test_{NAME}"] != results[1][f"test_{NAME}"]

  cells = sweep.expand(lambda: [{"seed": 0}])
  (written,) = sweep.run_sweep(config, cells, str(tmp_path / "sweep"))
  assert written["status"] == "done"
  with open(sweep_records.record_path(str(tmp_path / "sweep"), cells[0])) as f:
    record = json.load(f)
  assert record[f"test_{NAME}"] == pytest.approx(results[0][f"test_{NAME}"], abs=1e-6)
  assert record[f"validation_{NAME}"] >= record["validation_accuracy"]
  records = analysis.load_records(str(tmp_path / "sweep"))
  (row,) = analysis.summarize(records)
  assert row[f"test_{NAME}_mean"] == record[f"test_{NAME}_at_best_validation"]
  table = report.markdown([row], records)
  assert f"| {NAME} |" in table.replace("| loss | ", "| ")  # a column of the metrics table


def test_old_checkpoints_epoch_sums_are_read_as_sums():
  # Checkpoints written before the steps returned sums kept the per-step mean losses' sum,
  # the correct predictions and the steps: the same epoch, read as sums over examples.
  loop = {"epoch_loss_sum": [6.0, 3.0], "epoch_correct": [50.0, 60.0], "epoch_steps": [3, 3]}
  sums = train.epoch_sums(loop, 2, batch_size=32)
  np.testing.assert_allclose(sums["loss"], [192.0, 96.0])
  np.testing.assert_allclose(sums["accuracy"], [50.0, 60.0])
  np.testing.assert_allclose(sums["count"], [96.0, 96.0])
  assert steps.means({k: v[0] for k, v in sums.items()}) == {
    "loss": pytest.approx(2.0),
    "accuracy": pytest.approx(50 / 96),
  }
  assert loop == {}  # the old keys leave the loop, so the next save has only the new ones
  assert train.epoch_sums({}, 3, batch_size=32) == {}


def test_eval_step_sums_every_metric_over_real_examples_only(config, embedded):
  state = book_state(config)
  images = input_pipeline.scale(embedded.test_images[:40])
  labels = embedded.test_labels[:40].astype(np.int32)
  mask = (np.arange(40) < 25).astype(np.float32)
  sums = jax.jit(steps.eval_step)(state, {"image": images, "label": labels, "mask": mask})
  assert float(sums["count"]) == 25
  logits = np.asarray(jax.jit(state.apply_fn)({"params": state.params}, images))[:25]
  assert float(sums["accuracy"]) == np.sum(np.argmax(logits, -1) == labels[:25])
  expected_loss = np.sum(np.asarray(steps.cross_entropy(logits, labels[:25])))
  np.testing.assert_allclose(float(sums["loss"]), expected_loss, rtol=1e-5)


@pytest.mark.slow
def test_with_label_smoothing_the_loss_is_the_plain_cross_entropy_and_the_smoothed_one_is_named(
  config, embedded, tmp_path
):
  # One name, one quantity: `train_loss` is the cross-entropy that `validation_loss` is; the
  # loss the optimizer minimises with label smoothing is `train_smoothed_loss`.
  state = book_state(config)
  images = input_pipeline.scale(embedded.train_images[:64])
  labels = embedded.train_labels[:64].astype(np.int32)
  logits = np.asarray(jax.jit(state.apply_fn)({"params": state.params}, images))
  step = jax.jit(lambda s, b: steps.train_step(s, b, label_smoothing=0.2))
  _, sums = step(state, {"image": images, "label": labels})
  means = steps.means(sums)
  plain = float(np.mean(steps.cross_entropy(logits, labels)))
  smoothed = float(np.mean(steps.cross_entropy(logits, labels, 0.2)))
  assert means["loss"] == pytest.approx(plain, rel=1e-5)
  assert means["smoothed_loss"] == pytest.approx(smoothed, rel=1e-5)
  assert abs(smoothed - plain) > 1e-3  # the two differ, so the test tells them apart
  _, unsmoothed = jax.jit(steps.train_step)(state, {"image": images, "label": labels})
  assert "smoothed_loss" not in unsmoothed  # no label smoothing, no second loss

  config.label_smoothing = 0.2
  config.num_epochs, config.steps_per_epoch = 1, 4
  train.train_and_evaluate(config, str(tmp_path / "run"))
  (record,) = [r for r in _records(tmp_path / "run") if r["kind"] == "epoch"]
  assert record["train_loss"] > 0 and record["train_smoothed_loss"] > 0
  assert abs(record["train_smoothed_loss"] - record["train_loss"]) > 1e-4
  scalars, _ = _events(str(tmp_path / "run"))
  assert "epoch/train_smoothed_loss" in scalars and "validation/smoothed_loss" not in scalars
