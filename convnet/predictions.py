"""A run's saved test predictions, and the paired statistics that need them.

Each run keeps, in its folder (a member's folder in a group), `FILE`:
`test_predictions.npz`, the predictions of its best epoch, the one whose test
accuracy it reports as `test_accuracy_at_best_validation` (`epochs.best_record`).
For every test example, in the test split's order, it holds the predicted
class, the label and the softmax probability of the label's class (float16),
with the step and epoch they were made at: about 4 KB for 1,000 examples,
25 KB for 10,000. `convnet.train` writes it (`save`) after the checkpoint of
each epoch that becomes the best, and a resumed run checks it against its
best epoch (`best_predictions.check_predictions`).

Two runs' predictions on the same test examples compare pairwise: `mcnemar`
for one pair of runs, `paired_bootstrap` for the seeds of two settings,
resampling seeds and test examples (or whole clusters of examples, such as a
spoken digit's voices: `cluster_labels`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import os
import stat
import zipfile
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from scipy import stats

from convnet import files, sources
from convnet import records as records_lib
from convnet.errors import FileFormatError

FILE = "test_predictions.npz"
# What a report says of the statistics made from these files (`compare_settings`).
METHOD = (
  "Test examples. Where the runs' test predictions are kept beside their records, each "
  "comparison also gets a paired bootstrap interval that resamples both seeds and test examples "
  "(10,000 resamples, the same draws for both settings, percentile interval; where test examples "
  "come in clusters, such as a spoken digit's voices, whole clusters are resampled), and "
  "McNemar's exact test of each seed's pair of runs: the column counts the seed pairs with "
  "p < 0.05, uncorrected (Holm's correction applies to the p-values of the seed-paired tests)."
)
FORMAT = "convnet test predictions 1"  # the file's "format" entry; a new layout gets a new one
MAX_BYTES = 64 * 2**20  # the largest file read, and the most its arrays may hold unpacked
_FIELDS = ("format", "predicted", "label", "true_probability", "step", "epoch", "num_classes")


@dataclasses.dataclass(frozen=True)
class Predictions:
  """One run's predictions of its test examples, at one step (see the module's docstring)."""

  predicted: np.ndarray  # (N,) int64: the predicted class (the logits' argmax)
  label: np.ndarray  # (N,) int64: the example's class
  true_probability: np.ndarray  # (N,) float32: the softmax probability of `label`'s class
  step: int  # the training step after which they were made
  epoch: float  # its epoch, as records give it (a whole number at an epoch's end)
  num_classes: int

  @property
  def correct(self) -> np.ndarray:
    """(N,) bool: whether each example was classified right."""
    return self.predicted == self.label

  @property
  def accuracy(self) -> float:
    """The fraction of examples classified right, as records give `test_accuracy`."""
    return float(np.mean(self.correct))


def path(folder: str) -> str:
  """Where a run's folder keeps its test predictions."""
  return os.path.join(folder, FILE)


def save(
  folder: str,
  predicted: np.ndarray,
  true_probability: np.ndarray,
  label: np.ndarray,
  *,
  step: int,
  epoch: float,
  num_classes: int,
) -> str:
  """Writes `folder/test_predictions.npz` atomically (`files.atomic_open`); returns its path.

  Args:
    predicted: (N,) the predicted class of each test example, in [0, num_classes).
    true_probability: (N,) the probability of each example's label, in [0, 1].
    label: (N,) each example's class.
    step, epoch: when they were made (an epoch's record's "step" and "epoch").
    num_classes: the number of classes; classes are stored in the smallest
      unsigned type that holds them (uint8 up to 256).

  Raises:
    ValueError: arrays of other shapes, classes out of range, or a probability
      outside [0, 1].
    WorkdirError: the file cannot be written; what stood there is left as it was.
  """
  predicted, label = np.asarray(predicted), np.asarray(label)
  true_probability = np.asarray(true_probability, np.float32)
  n = len(label)
  if label.ndim != 1 or predicted.shape != (n,) or true_probability.shape != (n,):
    raise ValueError(
      f"predicted {predicted.shape}, true_probability {true_probability.shape} and label "
      f"{label.shape} must all be (N,)"
    )
  for name, classes in (("predicted", predicted), ("label", label)):
    if n and (classes.min() < 0 or classes.max() >= num_classes):
      raise ValueError(f"{name} holds classes outside [0, {num_classes})")
  if not np.all((true_probability >= 0) & (true_probability <= 1)):
    raise ValueError("true_probability holds values outside [0, 1]")
  class_type = np.min_scalar_type(max(num_classes - 1, 0))
  arrays = {
    "format": np.array(FORMAT),
    "predicted": predicted.astype(class_type),
    "label": label.astype(class_type),
    "true_probability": true_probability.astype(np.float16),
    "step": np.array(int(step), np.int64),
    "epoch": np.array(float(epoch), np.float64),
    "num_classes": np.array(int(num_classes), np.int64),
  }
  target = path(folder)
  with files.atomic_open(target, "wb") as f:
    np.savez_compressed(f, **arrays)
  return target


def beside_record(record_path: str) -> str:
  """Where a sweep keeps a cell's test predictions: beside its record `CELL.json`, as
  `CELL.test_predictions.npz` (a report reads them from there, `for_records`)."""
  stem = record_path[: -len(".json")] if record_path.endswith(".json") else record_path
  return f"{stem}.{FILE}"


def keep_beside_record(folder: str, record_path: str) -> str | None:
  """Copies run `folder`'s test predictions beside its record (`beside_record`), atomically.

  The file is checked first (`load`). A run without predictions (one trained
  before runs kept them) leaves any copy there removed, so that a record never
  stands beside another run's predictions.

  Returns:
    The copy's path, or None where the run has none.

  Raises:
    FileFormatError: the run's file is damaged.
    WorkdirError: the copy cannot be written; what stood there is left as it was.
  """
  target = beside_record(record_path)
  try:
    data = _read_bytes(path(folder))
  except FileNotFoundError:
    with contextlib.suppress(FileNotFoundError):
      os.unlink(target)
    return None
  load(path(folder))
  with files.atomic_open(target, "wb") as f:
    f.write(data)
  return target


def for_records(sweep_dir: str, records: Sequence[Mapping[str, Any]]) -> list[Predictions] | None:
  """The test predictions of each of `records` (a sweep's, as `records.read_folder` gives them),
  read from beside each record in `sweep_dir/records`, in the same order; None where any is
  missing (a sweep written before runs kept them).

  Raises:
    FileFormatError: a file that is there but damaged (`load`), or one whose step or accuracy is
      not its record's: the report stops rather than compare other predictions than the runs'.
  """
  found = []
  for record in records:
    target = beside_record(os.path.join(sweep_dir, records_lib.FOLDER, f"{record['cell']}.json"))
    try:
      kept = load(target)
    except FileNotFoundError:
      return None
    accuracy = record.get("test_accuracy_at_best_validation")
    if accuracy is not None and abs(kept.accuracy - accuracy) > 1e-6:
      raise FileFormatError(
        f"{target}: its accuracy {kept.accuracy:.6f} is not its record's test accuracy at best "
        f"validation, {accuracy:.6f}: the file is damaged or another run's; move it away (the "
        "report then compares seeds only)"
      )
    found.append(kept)
  return found


def load(location: str) -> Predictions:
  """A run's test predictions: from its folder (`FILE` in it), or from the file itself.

  Raises:
    FileNotFoundError: there is no such file (the run has no test split, has
      not finished an epoch, or was trained before runs kept their predictions).
    FileFormatError: in one line, naming the file: it is not a file of this
      kind (not a zip of arrays, another program's, a field missing or of the
      wrong type or shape, a class or probability out of range).
  """
  target = path(location) if os.path.isdir(location) else location
  data = _read_bytes(target)
  try:
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
      unpacked = sum(info.file_size for info in archive.infolist())
    if unpacked > MAX_BYTES:
      raise FileFormatError(
        f"{target}: its arrays unpack to {unpacked:,} bytes, more than the {MAX_BYTES:,} that "
        "test predictions may hold"
      )
    with np.load(io.BytesIO(data), allow_pickle=False) as npz:
      arrays = {name: npz[name] for name in npz.files if name in _FIELDS}
      names = set(npz.files)
  except FileFormatError:
    raise
  except Exception as e:  # zipfile, numpy and zlib raise many kinds for a damaged file
    raise FileFormatError(
      f"{target} is not a readable .npz file ({_why(e)}): move it away; the report does without "
      "it, and a rerun of the sweep copies the run's own predictions again where it has them"
    ) from None
  return _checked(arrays, names, target)


def _read_bytes(target: str) -> bytes:
  """The bytes of the regular file `target`; a FIFO or folder is refused, not read."""
  fd = os.open(target, os.O_RDONLY | os.O_NONBLOCK)
  try:
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
      raise FileFormatError(f"{target} is not a regular file")
    if info.st_size > MAX_BYTES:
      raise FileFormatError(
        f"{target} holds {info.st_size:,} bytes, more than the {MAX_BYTES:,} that test "
        "predictions may hold"
      )
    os.set_blocking(fd, True)
    with os.fdopen(fd, "rb", closefd=False) as f:
      return f.read()
  finally:
    os.close(fd)


def _why(error: BaseException) -> str:
  text = str(error).splitlines()[0][:120] if str(error) else ""
  return f"{type(error).__name__}: {text}" if text else type(error).__name__


def _checked(arrays: Mapping[str, np.ndarray], names: set[str], target: str) -> Predictions:
  """The fields of a predictions file as `Predictions`, after checking each one."""

  def bad(what: str) -> FileFormatError:
    return FileFormatError(f"{target} is not a test predictions file of this project: {what}")

  missing = [name for name in _FIELDS if name not in names]
  if missing:
    raise bad(f"it has no {', '.join(missing)}")
  if arrays["format"].shape != () or str(arrays["format"]) != FORMAT:
    raise bad(f"format is {str(arrays['format'])[:40]!r}, not {FORMAT!r}")
  scalars = {}
  for name, kind in (("step", "i"), ("epoch", "f"), ("num_classes", "i")):
    value = arrays[name]
    if value.shape != () or value.dtype.kind != kind:
      raise bad(f"{name} is {value.dtype} of shape {value.shape}, not a scalar")
    scalars[name] = value.item()
  num_classes = scalars["num_classes"]
  if scalars["step"] < 0 or not scalars["epoch"] > 0 or num_classes < 1:
    raise bad(
      f"step {scalars['step']}, epoch {scalars['epoch']} and num_classes {num_classes} must be "
      ">= 0, > 0 and >= 1"
    )
  label = arrays["label"]
  if label.ndim != 1:
    raise bad(f"label has shape {label.shape}, not (N,)")
  for name, kind in (("predicted", "ui"), ("label", "ui"), ("true_probability", "f")):
    value = arrays[name]
    if value.shape != label.shape or value.dtype.kind not in kind:
      raise bad(f"{name} is {value.dtype} of shape {value.shape}, not (N,) = {label.shape}")
  for name in ("predicted", "label"):
    value = arrays[name]
    if len(value) and (value.min() < 0 or value.max() >= num_classes):
      raise bad(f"{name} holds classes outside [0, {num_classes})")
  probability = arrays["true_probability"].astype(np.float32)
  if not np.all((probability >= 0) & (probability <= 1)):
    raise bad("true_probability holds values outside [0, 1]")
  return Predictions(
    predicted=arrays["predicted"].astype(np.int64),
    label=label.astype(np.int64),
    true_probability=probability,
    step=int(scalars["step"]),
    epoch=float(scalars["epoch"]),
    num_classes=int(num_classes),
  )


def correct_matrix(runs: Sequence[Predictions]) -> np.ndarray:
  """(S, N) bool: whether each of S runs classified each test example right.

  Raises:
    ValueError: no runs, or runs whose test examples differ (their labels, or
      their number).
  """
  if not runs:
    raise ValueError("correct_matrix needs at least one run's predictions")
  first = runs[0].label
  for i, run in enumerate(runs[1:], 1):
    if run.label.shape != first.shape or not np.array_equal(run.label, first):
      raise ValueError(f"run {i}'s test labels differ from run 0's: not the same test examples")
  return np.stack([run.correct for run in runs])


# ----------------------------------------------------------------------------
# Paired statistics


def _as_correct(values: Any, name: str, ndim: int) -> np.ndarray:
  array = np.asarray(values)
  if array.ndim != ndim or array.size == 0:
    raise ValueError(f"{name} has shape {array.shape}; it must be a non-empty {ndim}-D array")
  if array.dtype != bool and not np.isin(array, (0, 1)).all():
    raise ValueError(f"{name} must hold booleans (or 0 and 1): whether each example was right")
  return array.astype(bool)


def mcnemar(correct_a: Any, correct_b: Any) -> tuple[int | None, float]:
  """McNemar's exact test for two runs classifying the same test examples.

  Of the discordant examples (right in one run, wrong in the other), under
  the null hypothesis each is as likely to favour either run: the two-sided
  p-value is the exact binomial test (`scipy.stats.binomtest`) of the count
  right in A only among them, with probability 1/2.

  Args:
    correct_a, correct_b: (N,) bool, whether each run classified each example right.

  Returns:
    (statistic, p_value): the statistic is the smaller of the two discordant
    counts (as statsmodels' exact test gives it), None where no example is
    discordant (then the p-value is 1).

  Raises:
    ValueError: shapes that are not one (N,), or values that are not booleans.
  """
  a = _as_correct(correct_a, "correct_a", 1)
  b = _as_correct(correct_b, "correct_b", 1)
  if a.shape != b.shape:
    raise ValueError(f"correct_a {a.shape} and correct_b {b.shape} must be the same examples")
  only_a, only_b = int(np.sum(a & ~b)), int(np.sum(b & ~a))
  if only_a + only_b == 0:
    return None, 1.0
  p_value = stats.binomtest(only_a, only_a + only_b, 0.5, alternative="two-sided").pvalue
  return min(only_a, only_b), float(p_value)


def paired_bootstrap(
  correct_a: Any,
  correct_b: Any,
  num_resamples: int = 10_000,
  seed: int = 0,
  clusters: Any = None,
  confidence: float = 0.95,
) -> tuple[float, float, float]:
  """The accuracy difference A - B and its paired bootstrap percentile interval, in points.

  Row s of both arrays is seed s (the same validation split, training subset
  and data order in both settings), and column i test example i. Each
  resample draws S seeds with replacement and N test examples with
  replacement (or, with `clusters`, as many clusters as there are, whole,
  with replacement), the same draws for both arms, and takes the mean over
  the drawn seeds of each seed's accuracy difference on the drawn examples.
  The interval holds both sources of noise: which seeds were run, and which
  test examples were drawn. Resamples are fixed by `seed`.

  Args:
    correct_a, correct_b: (S, N) bool, whether run s of each setting
      classified example i right.
    num_resamples: bootstrap resamples (>= 1).
    seed: the resampling's random seed.
    clusters: None, or (N,) labels of the clusters whose examples are not
      independent (a spoken digit's voice: `cluster_labels`), resampled whole.
    confidence: the interval's coverage, in (0, 1).

  Returns:
    (difference, low, high) in accuracy points (percent): the mean of A's
    accuracies minus B's, and the percentile interval.

  Raises:
    ValueError: arrays of different or empty shapes, non-booleans, clusters
      of another length, or a bad `num_resamples` or `confidence`.
  """
  a = _as_correct(correct_a, "correct_a", 2)
  b = _as_correct(correct_b, "correct_b", 2)
  if a.shape != b.shape:
    raise ValueError(f"correct_a {a.shape} and correct_b {b.shape} must be the same (S, N)")
  if int(num_resamples) < 1 or not 0 < confidence < 1:
    raise ValueError(f"num_resamples={num_resamples} must be >= 1, confidence in (0, 1)")
  num_seeds, num_examples = a.shape
  difference_SN = a.astype(np.float64) - b.astype(np.float64)
  if clusters is None:
    # Only the examples where some seed's arms differ move the difference; the others only
    # fill the N draws. So each resample draws how many of its N land among those m, then
    # which: the same multinomial counts, drawn in m columns rather than N.
    differing = np.flatnonzero(difference_SN.any(axis=0))
    units_SU, sizes_U = difference_SN[:, differing], None
  else:
    clusters = np.asarray(clusters)
    if clusters.shape != (num_examples,):
      raise ValueError(f"clusters has shape {clusters.shape}, not one label per example, (N,)")
    _, cluster_of = np.unique(clusters, return_inverse=True)
    num_clusters = int(cluster_of.max()) + 1
    units_SU = np.stack([np.bincount(cluster_of, d, num_clusters) for d in difference_SN])
    sizes_U = np.bincount(cluster_of, minlength=num_clusters).astype(np.float64)
  num_units = units_SU.shape[1]
  if not units_SU.any():  # the arms agree on every example of every seed
    return 0.0, 0.0, 0.0
  rng = np.random.default_rng(seed)
  differences = np.empty(int(num_resamples))
  chunk = max(1, 2**21 // max(num_units, num_seeds))  # a few tens of MB of draws at a time
  for start in range(0, len(differences), chunk):
    count = min(chunk, len(differences) - start)
    if sizes_U is None:
      landed = rng.binomial(num_examples, num_units / num_examples, count)
      rows = np.repeat(np.arange(count), landed)
      unit_weights = _counts(rows, rng.integers(0, num_units, landed.sum()), count, num_units)
      examples = np.full(count, float(num_examples))
    else:
      draws = rng.integers(0, num_units, (count, num_units))
      unit_weights = _counts(
        np.repeat(np.arange(count), num_units), draws.ravel(), count, num_units
      )
      examples = unit_weights @ sizes_U  # (count,): the examples drawn
    draws = rng.integers(0, num_seeds, (count, num_seeds))
    seed_weights = _counts(np.repeat(np.arange(count), num_seeds), draws.ravel(), count, num_seeds)
    per_seed = unit_weights @ units_SU.T  # (count, S): each seed's summed difference
    totals = np.sum(seed_weights * per_seed, axis=1)
    differences[start : start + count] = totals / (num_seeds * examples)
  tail = 100 * (1 - confidence) / 2
  low, high = np.percentile(differences, [tail, 100 - tail])
  return 100 * float(difference_SN.mean()), 100 * float(low), 100 * float(high)


def compare_settings(
  a: Mapping[Any, Predictions],
  b: Mapping[Any, Predictions],
  clusters: Any = None,
  num_resamples: int = 10_000,
) -> dict[str, Any]:
  """Setting a minus setting b on the same test examples, from {seed: Predictions} of each.

  Over the seeds both have: the paired bootstrap over seeds and examples
  (`paired_bootstrap`, clusters resampled whole where given) and McNemar's exact
  test of each seed's pair of runs (`mcnemar`).

  Returns:
    {} where no seed is shared; else `example_seeds` (the shared seeds' count),
    `bootstrap_difference`, `bootstrap_ci_low`, `bootstrap_ci_high` (fractions:
    0.01 is one percentage point), `mcnemar_p` ([p] per shared seed, in seed
    order) and `mcnemar_below` (how many of them are below 0.05).

  Raises:
    ValueError: the runs' test examples differ (`correct_matrix`).
  """
  seeds = sorted(set(a) & set(b), key=str)
  if not seeds:
    return {}
  correct = correct_matrix([a[s] for s in seeds] + [b[s] for s in seeds])
  correct_a, correct_b = correct[: len(seeds)], correct[len(seeds) :]
  difference, low, high = paired_bootstrap(correct_a, correct_b, num_resamples, clusters=clusters)
  p_values = [mcnemar(x, y)[1] for x, y in zip(correct_a, correct_b, strict=True)]
  return {
    "example_seeds": len(seeds),
    "bootstrap_difference": difference / 100,
    "bootstrap_ci_low": low / 100,
    "bootstrap_ci_high": high / 100,
    "mcnemar_p": p_values,
    "mcnemar_below": sum(p < 0.05 for p in p_values),
  }


def _counts(rows: np.ndarray, draws: np.ndarray, num_rows: int, size: int) -> np.ndarray:
  """(num_rows, size) float: how often each index in [0, size) was drawn in each row."""
  return np.bincount(rows * size + draws, minlength=num_rows * size).reshape(num_rows, size) * 1.0


def cluster_labels(data_config: Mapping[str, Any]) -> np.ndarray | None:
  """(N,) the cluster of each test example, in the test split's order; None if independent.

  A data source whose test examples come in groups that are not independent
  says so with an `example_clusters(data_config)` function: spoken digits give
  each test clip's voice (6 test voices). Others have none, and their examples
  are resampled one by one.

  Raises:
    ConfigError, DataError: as the source's `load` does (the data is read).
  """
  clusters = getattr(sources.get(data_config["source"]), "example_clusters", None)
  return None if clusters is None else np.asarray(clusters(data_config))
