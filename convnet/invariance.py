r"""Test accuracy on shifted and rotated copies of a trained run's test images.

The classic argument for a convnet is that it does not care much where the
object is: its convolutions share weights across positions and its pooling
forgets a little of where. This module measures that on a trained run, which
never saw a moved image: each test image is moved by whole pixels (`shift`) or
turned about its centre (`rotate`), and the run's accuracy on each copy is set
beside its accuracy on the untouched test split.

  python -m convnet.invariance RUN_OR_SWEEP_DIR [--out=DIR] [--transforms=dy=+2,rotate=-15]

- On one run (a workdir of `convnet.main`, or one `seed_<s>/` of a group):
  prints a table and writes `invariance.json` in the run (or `--out`).
- On a sweep folder (it has `records/`): evaluates every finished run and
  writes `invariance.json` and `invariance.md` beside the records (or in
  `--out`): per setting and transform the mean accuracy over seeds with its
  interval (`stats.accuracy_interval`), and, where the sweep pairs a model with
  the dense baseline at matched parameter counts (`analysis.matched_pairs`),
  each pair's difference in the accuracy lost to each transform, paired over
  seeds (`stats.paired_difference`), the table one family for Holm's
  correction (`stats.with_holm`).

A transform is named `dy=K` (moved K pixels down the first image axis; up
where K < 0), `dx=K` (K pixels along the second, right where K > 0) or
`rotate=D` (D degrees, counter-clockwise as the image is drawn, row 0 at the
top). The run's checkpoint is that of its best validation epoch, the model
behind `test_accuracy_at_best_validation`; its accuracy on the untouched split
is checked against what the run recorded (`trained.check_test_accuracy`).
A run trained on permuted positions (`data.permute_pixels`) has each test
image moved as an image, then permuted as in training. Runs on reduced
inputs (`data.features`), on sequences (`data.layout`) and on data other
than 2D images are refused.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import re
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from absl import app, flags
from scipy import ndimage

from convnet import analysis, cli, files, input_pipeline, interpret, stats
from convnet import records as records_lib
from convnet.errors import CheckpointError, ConfigError, ConvnetError, DataError, NoCheckpointsError

# Shifts of 2 and 4 pixels each way along each image axis, and turns of 15 degrees each way.
DEFAULT_TRANSFORMS = (
  *(f"dy={k:+d}" for k in (-4, -2, 2, 4)),
  *(f"dx={k:+d}" for k in (-4, -2, 2, 4)),
  "rotate=-15",
  "rotate=+15",
)
ORIGINAL = "original"  # the untouched test split's key in every result
RESULT_FILE = "invariance.json"
REPORT_FILE = "invariance.md"
_TRANSFORM = re.compile(r"(?P<kind>dy|dx|rotate)=(?P<amount>[+-]?\d+(\.\d+)?)")


# ----------------------------------------------------------------------------
# Transforms


def shift(images_NHWC: np.ndarray, dy: int, dx: int) -> np.ndarray:
  """Images moved `dy` pixels down and `dx` right (negative: up, left), zeros filling in.

  Nothing wraps around: what leaves the frame is lost. A shift as large as the
  image leaves zeros.

  Args:
    images_NHWC: (N, H, W, C) images.
    dy, dx: whole pixels along the first and second image axes.

  Returns:
    (N, H, W, C), of the images' dtype.
  """
  images = np.asarray(images_NHWC)
  if images.ndim != 4:
    raise ValueError(f"shift takes images (N, H, W, C); got shape {images.shape}")
  moved = np.zeros_like(images)
  height, width = images.shape[1:3]

  def spans(k: int, size: int) -> tuple[slice, slice]:  # (target, source) along one axis
    k = max(-size, min(size, k))
    return slice(max(k, 0), size + min(k, 0)), slice(max(-k, 0), size - max(k, 0))

  (to_y, from_y), (to_x, from_x) = spans(int(dy), height), spans(int(dx), width)
  moved[:, to_y, to_x] = images[:, from_y, from_x]
  return moved


def rotate(images_NHWC: np.ndarray, degrees: float) -> np.ndarray:
  """Images turned `degrees` counter-clockwise (row 0 drawn at the top) about their centre.

  Bilinear interpolation (`scipy.ndimage.rotate`, order 1); what comes in from
  outside the frame is 0. The shape is kept: the corners turned out are lost.
  `rotate(x, 90)` is `np.rot90(x, axes=(1, 2))` for square images, but at the
  edge pixels, where interpolation reads outside the frame.

  Args:
    images_NHWC: (N, H, W, C) images.
    degrees: the angle; 0 returns the images unchanged.

  Returns:
    (N, H, W, C) float32 (of the images' dtype where they are floats).
  """
  images = np.asarray(images_NHWC)
  if images.ndim != 4:
    raise ValueError(f"rotate takes images (N, H, W, C); got shape {images.shape}")
  if degrees % 360 == 0:
    return images.copy()
  dtype = images.dtype if np.issubdtype(images.dtype, np.floating) else np.float32
  turned = ndimage.rotate(
    images.astype(dtype), degrees, axes=(2, 1), reshape=False, order=1, mode="constant", cval=0
  )
  return turned.astype(dtype)


@dataclasses.dataclass(frozen=True)
class Transform:
  """One transform of test images: `kind` "dy", "dx" or "rotate", and its amount."""

  kind: str
  amount: float

  @property
  def name(self) -> str:
    """`dy=+2`, `dx=-4`, `rotate=+15`: the transform's key in every result."""
    amount = self.amount
    text = f"{int(amount):+d}" if float(amount).is_integer() else f"{amount:+g}"
    return f"{self.kind}={text}"

  def __call__(self, images_NHWC: np.ndarray) -> np.ndarray:
    if self.kind == "rotate":
      return rotate(images_NHWC, self.amount)
    dy, dx = (int(self.amount), 0) if self.kind == "dy" else (0, int(self.amount))
    return shift(images_NHWC, dy, dx)


def parse_transforms(names: Sequence[str]) -> list[Transform]:
  """The transforms `names` gives (`dy=K`, `dx=K` with K whole pixels, `rotate=D` in degrees).

  A name given twice counts once.

  Raises:
    ConfigError: no names, or one that is not of those forms; the message
      names it and the forms.
  """
  if isinstance(names, str):
    names = [names]
  if not names:
    raise ConfigError(f"--transforms is empty: {_FORMS}")
  transforms = {}
  for name in names:
    match = _TRANSFORM.fullmatch(str(name).strip().replace(" ", ""))
    if match is None:
      raise ConfigError(f"--transforms: {name!r} is not a transform: {_FORMS}")
    kind, amount = match["kind"], float(match["amount"])
    if kind != "rotate" and not amount.is_integer():
      raise ConfigError(f"--transforms: {name!r} shifts by whole pixels only: {_FORMS}")
    if not math.isfinite(amount) or abs(amount) >= 1e6:
      raise ConfigError(f"--transforms: {name!r} is out of range: {_FORMS}")
    transform = Transform(kind, amount)
    transforms.setdefault(transform.name, transform)
  return list(transforms.values())


_FORMS = (
  "give a comma-separated list of dy=K (K pixels down, negative up), dx=K (right, negative "
  "left) and rotate=D (degrees counter-clockwise), e.g. dy=+2,dx=-4,rotate=15"
)


# ----------------------------------------------------------------------------
# One run


def check_input(run: Any) -> None:
  """Refuses a run whose model does not read 2D images of pixels (`trained.TrainedRun`).

  Raises:
    ConfigError: the run reads reduced inputs (`data.features`), sequences
      (`data.layout`), or data whose examples are not (H, W, C).
  """
  data = run.config.data
  features, layout = data.get("features", "pixels"), data.get("layout", "image")
  shape = tuple(run.dataset.input_shape)
  if features != "pixels" or layout != "image" or len(shape) != 3:
    raise ConfigError(
      f"{run.workdir}: convnet.invariance moves 2D images, and this run's model reads examples "
      f"of shape {shape} (data.source={data.get('source')!r}, data.features={features!r}, "
      f"data.layout={layout!r}): evaluate a run on images of pixels"
    )


def transformed_test_images(run: Any, transform: Transform) -> np.ndarray:
  """The run's test images under `transform`, as its model reads them, (N, H, W, C) float32.

  Where the run trained on permuted positions (`data.permute_pixels`), the
  images are put back in place, transformed, and permuted again.
  """
  images = run.dataset.test.images
  seed = run.config.data.get("permute_pixels", 0)
  if not seed:
    return transform(images).astype(np.float32)
  spatial = images.shape[1:-1]
  permutation = input_pipeline.pixel_permutation(spatial, seed)
  flat = images.reshape(len(images), len(permutation), images.shape[-1])
  original = np.empty_like(flat)
  original[:, permutation] = flat
  moved = transform(original.reshape(images.shape)).reshape(flat.shape)
  return np.ascontiguousarray(moved[:, permutation]).reshape(images.shape).astype(np.float32)


def evaluate(
  workdir: str, transforms: Sequence[str] = DEFAULT_TRANSFORMS, checkpoint: str = "best"
) -> dict[str, Any]:
  """A trained run's test accuracy on its untouched test split and on each transformed copy.

  Args:
    workdir: a run of `convnet.main`, or one `seed_<s>/` of a group.
    transforms: names as `parse_transforms` takes them.
    checkpoint: "best" (the epoch of best validation accuracy) or "latest".

  Returns:
    `workdir`, `checkpoint`, `step` (the checkpoint's), `test_images` (how
    many), `check` (how the untouched accuracy compares with the run's
    records), and `accuracy`: {"original": a, transform name: a, ...}, each a
    fraction in [0, 1], in the order given.

  Raises:
    ConfigError: a bad transform name, a shift by the image's size or more, or a run that
      does not read 2D images.
    CheckpointError: no such run, no such checkpoint, or files that no longer
      give the accuracy the run recorded.
    ConfigError, DataError: the run's data cannot be built.
  """
  from convnet import trained  # imports JAX, which parsing transforms does not need

  parsed = parse_transforms(transforms)
  run = trained.load(workdir, checkpoint)
  check_input(run)
  height, width = run.dataset.input_shape[:2]
  for transform in parsed:
    size = {"dy": height, "dx": width}.get(transform.kind)
    if size is not None and abs(transform.amount) >= size:
      raise ConfigError(
        f"--transforms: {transform.name} moves every pixel off this run's {height}x{width} "
        f"images; shift by less than {size}"
      )
  labels = np.asarray(run.dataset.test.labels)
  if not len(labels):
    raise DataError(f"{workdir}: the run's data has no test images")

  def accuracy(images: np.ndarray) -> tuple[float, np.ndarray]:
    probabilities = interpret.predict(run.model, run.params, images)
    return float(np.mean(probabilities.argmax(-1) == labels)), probabilities

  original, probabilities = accuracy(run.dataset.test.images)
  check = trained.check_test_accuracy(run, probabilities)
  results = {ORIGINAL: original}
  for transform in parsed:
    results[transform.name] = accuracy(transformed_test_images(run, transform))[0]
  return {
    "workdir": workdir,
    "checkpoint": checkpoint,
    "step": int(run.step),
    "test_images": len(labels),
    "check": check,
    "accuracy": results,
  }


def run_table(result: Mapping[str, Any]) -> str:
  """`evaluate`'s result as a text table: each test set, its accuracy and the change from the
  untouched split, in percent."""
  accuracy = result["accuracy"]
  base = accuracy[ORIGINAL]
  width = max(len(name) for name in accuracy)
  lines = [f"{'test set':<{width}}  accuracy  change"]
  for name, value in accuracy.items():
    change = "" if name == ORIGINAL else f"{100 * (value - base):+7.2f}"
    lines.append(f"{name:<{width}}  {100 * value:7.2f}%  {change}".rstrip())
  return "\n".join(lines)


# ----------------------------------------------------------------------------
# A sweep


def run_folder(sweep_dir: str, record: Mapping[str, Any]) -> str:
  """The workdir of a record's run: its `workdir`, which must lie under the sweep folder.

  Raises:
    DataError: the record's workdir leaves the sweep folder.
  """
  relative = os.path.normpath(str(record["workdir"]))
  if os.path.isabs(relative) or relative == ".." or relative.startswith(".." + os.sep):
    raise DataError(
      f"{sweep_dir}/records: cell {record['cell']}'s workdir {record['workdir']!r} is not under "
      "the sweep folder; move that record out of records/"
    )
  return os.path.join(sweep_dir, relative)


def evaluate_sweep(
  sweep_dir: str, transforms: Sequence[str] = DEFAULT_TRANSFORMS
) -> dict[str, Any]:
  """Every finished run of a sweep on the transformed test sets, with the statistics.

  Returns:
    `transforms` (names, in order), `runs` (one per finished cell, in sweep
    order: `cell`, `setting`, `seed`, `workdir`, `counted` (finished and not
    collapsed, `analysis.counted`), `step`, `accuracy` as `evaluate` gives
    it), `not_finished` (cells of another status), `settings` (`settings`)
    and `pairs` (`pair_differences`).

  Raises:
    ConfigError: a bad transform name, or runs that do not read 2D images.
    DataError, FileFormatError: no records, records of several sweeps, a bad record.
    CheckpointError: a finished run whose checkpoint or files cannot be read.
  """
  names = [t.name for t in parse_transforms(transforms)]
  records = analysis.load_records(sweep_dir)
  runs, not_finished = [], []
  done = [r for r in sorted(records, key=lambda r: r["index"]) if r["status"] == "done"]
  for i, record in enumerate(done, 1):
    logging.info("Evaluating %s (%d of %d)", record["cell"], i, len(done))
    folder = run_folder(sweep_dir, record)
    try:
      result = evaluate(folder, names)
    except NoCheckpointsError:
      raise NoCheckpointsError(
        f"finished cell {record['cell']} of {sweep_dir} has no checkpoints left in {folder}, "
        "and its record stands, so rerunning the sweep trains nothing: move "
        f"{records_lib.FOLDER}/{record['cell']}.json out of {records_lib.FOLDER}/ and rerun the "
        "sweep to train that cell again"
      ) from None
    runs.append(
      {
        "cell": record["cell"],
        "setting": record["setting"],
        "seed": records_lib.seed(record),
        "workdir": record["workdir"],
        "counted": analysis.counted(record),
        "step": result["step"],
        "accuracy": result["accuracy"],
      }
    )
  not_finished = [
    {"cell": r["cell"], "status": r["status"]} for r in records if r["status"] != "done"
  ]
  return {
    "transforms": names,
    "runs": runs,
    "not_finished": not_finished,
    "settings": settings(records, runs, names),
    "pairs": pair_differences(records, runs, names),
  }


def _by_seed(runs: Sequence[Mapping[str, Any]], setting: str, name: str) -> dict[Any, float]:
  """{seed: accuracy on test set `name`} of a setting's counted runs."""
  return {r["seed"]: r["accuracy"][name] for r in runs if r["setting"] == setting and r["counted"]}


def settings(
  records: Sequence[Mapping[str, Any]], runs: Sequence[Mapping[str, Any]], names: Sequence[str]
) -> list[dict[str, Any]]:
  """Per setting (`analysis.summarize`'s rows, in order), its mean accuracy over counted seeds
  on each test set, with `stats.accuracy_interval` (NaN with fewer than 2 seeds).

  Each row: `setting`, `label`, `model`, `seeds`, and `accuracy`: {test set:
  {"mean", "ci_low", "ci_high"}}, "original" first.
  """
  rows = []
  for row in analysis.summarize(records):
    seeds = _by_seed(runs, row["setting"], ORIGINAL)
    if not seeds:
      continue
    accuracy = {}
    for name in (ORIGINAL, *names):
      values = list(_by_seed(runs, row["setting"], name).values())
      low, high = stats.accuracy_interval(values)
      accuracy[name] = {"mean": float(np.mean(values)), "ci_low": low, "ci_high": high}
    rows.append(
      {
        "setting": row["setting"],
        "label": row["label"],
        "model": row["model"],
        "seeds": len(seeds),
        "accuracy": accuracy,
      }
    )
  return rows


def pair_differences(
  records: Sequence[Mapping[str, Any]], runs: Sequence[Mapping[str, Any]], names: Sequence[str]
) -> list[dict[str, Any]]:
  """Per matched pair and transform, the model's accuracy lost minus the baseline's, over seeds.

  The pairs are `analysis.matched_pairs`' (a model against the dense baseline at
  matched parameter counts, each arm at its tuned rate where the sweep tunes
  one). A run's loss on a transform is its accuracy on the untouched split minus
  that on the transformed one; the model's and the baseline's are paired over
  the seeds both hold (`stats.paired_difference`): below 0, the model loses
  less. All rows are one family for Holm's correction (`stats.with_holm`).

  Each row: `model`, `baseline` (labels), `model_setting`, `baseline_setting`,
  `transform`, `model_drop` and `baseline_drop` (mean losses over the shared
  seeds), and the paired fields (`seeds`, `difference`, `ci_low`, `ci_high`,
  `p`), `p_holm`, `survives`.
  """
  rows = []
  for pair in analysis.matched_pairs(records):
    model, baseline = pair["model"], pair["baseline"]
    for name in names:
      drops = []
      for side in (model, baseline):
        original = _by_seed(runs, side["setting"], ORIGINAL)
        moved = _by_seed(runs, side["setting"], name)
        drops.append({seed: original[seed] - moved[seed] for seed in original})
      shared = [seed for seed in drops[0] if seed in drops[1]]
      rows.append(
        {
          "model": model["label"],
          "baseline": baseline["label"],
          "model_setting": model["setting"],
          "baseline_setting": baseline["setting"],
          "transform": name,
          "model_drop": _mean([drops[0][s] for s in shared]),
          "baseline_drop": _mean([drops[1][s] for s in shared]),
          **stats.paired_difference(*drops),
        }
      )
  return stats.with_holm(rows)


def _mean(values: Sequence[float]) -> float:
  return float(np.mean(values)) if len(values) else math.nan


def _percent(value: float) -> str:
  return "–" if math.isnan(value) else f"{100 * value:.2f}"


def _interval(low: float, high: float, sign: str = "") -> str:
  if math.isnan(low):
    return "–"
  return f"[{100 * low:{sign}.2f}, {100 * high:{sign}.2f}]"


def report_markdown(result: Mapping[str, Any], title: str) -> str:
  """`evaluate_sweep`'s result as Markdown: the accuracy table, the pairs' table, the methods."""
  names = result["transforms"]
  lines = [
    f"# Shifted and rotated test images: {title}",
    "",
    "Test accuracy (%) of each setting's runs, at their best validation epoch, on the untouched "
    "test split and on copies of it moved by whole pixels (`dy`: down the first image axis, "
    "`dx`: along the second; zeros fill in) or turned about the centre (`rotate`, degrees "
    "counter-clockwise, bilinear). Mean over seeds, and its 95% interval; no run saw a moved "
    "image in training.",
    "",
    "| setting | model | seeds | test set | accuracy % | 95% interval |",
    "|---|---|---|---|---|---|",
  ]
  for row in result["settings"]:
    for name in (ORIGINAL, *names):
      a = row["accuracy"][name]
      lines.append(
        f"| {row['label']} | {row['model']} | {row['seeds']} | {name} | {_percent(a['mean'])} "
        f"| {_interval(a['ci_low'], a['ci_high'])} |"
      )
  pairs = result["pairs"]
  lines.append("")
  if pairs:
    lines += [
      "Accuracy lost to each transform (untouched minus transformed, percentage points), the "
      "model's minus the dense baseline's at matched parameter counts, paired over the seeds "
      "both ran: below 0, the model loses less. The rows are one family for Holm's correction.",
      "",
      "| model | baseline | test set | seeds | model's loss | baseline's loss | difference "
      "| paired 95% interval | p | p (Holm) | survives |",
      "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for p in pairs:
      p_raw = "–" if math.isnan(p["p"]) else f"{p['p']:.3g}"
      p_holm = "–" if math.isnan(p["p_holm"]) else f"{p['p_holm']:.3g}"
      survives = "–" if p["survives"] is None else ("yes" if p["survives"] else "no")
      difference = "–" if math.isnan(p["difference"]) else f"{100 * p['difference']:+.2f}"
      lines.append(
        f"| {p['model']} | {p['baseline']} | {p['transform']} | {p['seeds']} "
        f"| {_percent(p['model_drop'])} | {_percent(p['baseline_drop'])} | {difference} "
        f"| {_interval(p['ci_low'], p['ci_high'], '+')} | {p_raw} | {p_holm} | {survives} |"
      )
  else:
    lines.append(
      "No setting of this sweep pairs with a dense baseline at matched parameter counts: no "
      "differences are given."
    )
  left_out = [r["cell"] for r in result["runs"] if not r["counted"]]
  lines += ["", "Statistics. " + stats.INTERVAL_METHOD, "", stats.POLICY]
  if left_out:
    lines += [
      "",
      "Collapsed runs (finished, training loss at chance), evaluated but left out of every mean "
      "and difference: " + ", ".join(f"`{c}`" for c in left_out) + ".",
    ]
  if result["not_finished"]:
    cells = ", ".join(f"`{c['cell']}` ({c['status']})" for c in result["not_finished"])
    lines += ["", f"Cells not finished, so not evaluated: {cells}."]
  return "\n".join(lines) + "\n"


def earlier_transforms(path: str) -> list[str]:
  """The transforms of the `invariance.json` already at `path`, if one is there and readable.

  A rerun with other transforms evaluates these as well, so that none of the earlier results
  is lost.

  Raises:
    DataError: a file there that is not a result of `convnet.invariance`: it is left as it is.
  """
  if not os.path.lexists(path):
    return []
  try:
    earlier = files.read_json(path)
    names = earlier["transforms"] if "transforms" in earlier else list(earlier["accuracy"])[1:]
    return [t.name for t in parse_transforms(names)]
  except (ConvnetError, OSError, KeyError, TypeError, IndexError) as e:
    raise DataError(
      f"{path} is not a result of convnet.invariance ({e}); it is left as it is: move it away, "
      "or give --out=DIR for the new results"
    ) from None


def write(path: str, out: str | None = None, transforms: Sequence[str] = DEFAULT_TRANSFORMS):
  """Evaluates a run or a sweep folder and writes its files; returns (text to print, paths).

  A folder with `records/` is a sweep (`evaluate_sweep`: `invariance.json` and
  `invariance.md`), one with `config.json` a run (`evaluate`:
  `invariance.json`); the files go to `out`, by default `path` itself. The
  transforms of an `invariance.json` already there are evaluated again beside
  `transforms`, so that a rerun with others loses none of its results.

  Raises:
    ConvnetError: one line, naming the folder, transform or file at fault.
  """
  if not os.path.isdir(path):
    raise DataError(f"{path} is not a folder: give a run's workdir or a sweep folder")
  names = [t.name for t in parse_transforms(transforms)]
  kept = [n for n in earlier_transforms(os.path.join(out or path, RESULT_FILE)) if n not in names]
  if kept:
    logging.info("Evaluating again the transforms %s already in %s", ", ".join(kept), RESULT_FILE)
  transforms = kept + names
  if os.path.isdir(os.path.join(path, records_lib.FOLDER)):
    result = evaluate_sweep(path, transforms)
    text = report_markdown(result, os.path.basename(os.path.normpath(os.path.abspath(path))))
    folder = files.prepare_folder(out or path, [RESULT_FILE, REPORT_FILE])
    paths = [os.path.join(folder, RESULT_FILE), os.path.join(folder, REPORT_FILE)]
    files.atomic_write(paths[0], files.json_text(result))
    files.atomic_write(paths[1], text)
    return text, paths
  if not os.path.isfile(os.path.join(path, "config.json")):
    raise CheckpointError(
      f"{path} is neither a run (it has no config.json) nor a sweep folder (it has no "
      f"{records_lib.FOLDER}/): give a workdir of convnet.main, one seed_<s>/ of a group, or a "
      "folder of convnet.sweep"
    )
  result = evaluate(path, transforms)
  folder = files.prepare_folder(out or path, [RESULT_FILE])
  paths = [os.path.join(folder, RESULT_FILE)]
  files.atomic_write(paths[0], files.json_text(result))
  return f"{result['check']}\n{run_table(result)}", paths


# ----------------------------------------------------------------------------
# Command line

FLAGS = flags.FLAGS


def define_flags(flag_values: flags.FlagValues = FLAGS) -> None:
  """Defines this command's flags, when it runs as a program."""
  cli.define(
    flag_values,
    (
      ("string", "out", None, "Where to write the results; default: the run or sweep folder."),
      (
        "list",
        "transforms",
        list(DEFAULT_TRANSFORMS),
        "The transformed test sets: dy=K, dx=K (whole pixels), rotate=D (degrees).",
      ),
    ),
  )


def main(argv):
  if len(argv) != 2:
    given = f"; got {' '.join(map(repr, argv[1:]))}" if len(argv) > 2 else ""
    cli.usage_error(
      "give one run's workdir or one sweep folder: python -m convnet.invariance "
      f"RUN_OR_SWEEP_DIR [--out=DIR] [--transforms=dy=+2,rotate=15]{given}"
    )
  cli.start(argv[:1])
  try:
    parse_transforms(FLAGS.transforms)
    text, paths = write(argv[1], FLAGS.out, FLAGS.transforms)
  except ConvnetError as e:
    sys.exit(f"error: {e}")
  print(text)
  print("Wrote " + ", ".join(paths))


if __name__ == "__main__":
  define_flags()
  app.run(main, flags_parser=cli.parse_flags)
