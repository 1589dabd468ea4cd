"""The user's log: progress lines on long waits, and no platform probe from JAX."""

import functools
import logging
import subprocess
import sys

from convnet import logs
from convnet.sources import spoken_digits


class FakeClock:
  """A clock that moves only when told: `step` seconds at each reading."""

  def __init__(self, step: float):
    self.now, self.step = 0.0, step

  def __call__(self) -> float:
    self.now += self.step
    return self.now


# Two voices, one speed and pitch: the smallest spoken-digit data with a test split.
SMALL_PARAMS = spoken_digits.Params(
  accents=("gmw/en", "gmw/en-US"),
  variants=("m1", "f2"),
  test_accents=("gmw/en-US",),
  test_variants=("f2",),
  speeds=(170,),
  pitches=(50,),
)


def _messages(caplog) -> list[str]:
  return [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]


def test_progress_logs_count_rate_and_time_left_every_few_seconds(caplog):
  caplog.set_level(logging.INFO)
  # Each item takes 2 s of the fake clock; a line every 5 s, after items 3, 6 and 9 of 10.
  items = list(logs.progress(range(10), "Making things", 10, "things", 5.0, FakeClock(2.0)))
  assert items == list(range(10))
  assert _messages(caplog) == [
    "Making things: 3/10 things (30%), 0.5 things/s, about 14s left",
    "Making things: 6/10 things (60%), 0.5 things/s, about 8s left",
    "Making things: 9/10 things (90%), 0.5 things/s, about 2s left",
    "Making things: 10 things in 22s",
  ]


def test_progress_gives_the_rate_since_the_line_before(caplog):
  caplog.set_level(logging.INFO)
  # Five items of 1 s, then five of 4 s: the time left follows the slower rate.
  readings = iter([0, 1, 2, 3, 4, 5, 6, 10, 14, 18, 22, 22])
  list(logs.progress(range(10), "Making", 10, "things", 5.0, lambda: next(readings)))
  assert _messages(caplog) == [
    "Making: 5/10 things (50%), 1.0 things/s, about 5s left",
    "Making: 7/10 things (70%), 0.4 things/s, about 8s left",
    "Making: 9/10 things (90%), 0.2 things/s, about 4s left",
    "Making: 10 things in 22s",
  ]


def test_progress_on_a_quick_job_logs_nothing(caplog):
  caplog.set_level(logging.INFO)
  assert sum(logs.progress(range(1000), "Adding", 1000, "numbers", 5.0, FakeClock(0.001))) == (
    499500
  )
  assert _messages(caplog) == []


def test_spoken_digit_generation_logs_its_progress(monkeypatch, caplog):

  caplog.set_level(logging.INFO)
  monkeypatch.setattr(logs, "progress", functools.partial(logs.progress, every=0.0))
  params = SMALL_PARAMS
  spoken_digits.generate(params, workers=1)
  clips = len(params.voices) * len(spoken_digits.DIGIT_WORDS)
  messages = _messages(caplog)
  assert f"Speaking the digits with espeak-ng: 1/{clips} clips" in messages[0]
  assert f"Speaking the digits with espeak-ng: {clips} clips in " in "\n".join(messages)
  assert f"Computing the spoken digits' spectrograms: {clips} clips in " in messages[-1]


def test_jax_platform_probes_stay_out_of_the_log(caplog):
  caplog.set_level(logging.INFO)
  logs.hide_platform_probes()
  probe = logging.getLogger("jax._src.xla_bridge")
  probe.info("Unable to initialize backend 'tpu': INTERNAL: Failed to open libtpu.so")
  probe.warning("An NVIDIA GPU may be present on this machine, but a CUDA-enabled jaxlib is not")
  assert [r.getMessage()[:13] for r in caplog.records] == ["An NVIDIA GPU"]


def test_a_command_log_opens_without_the_probe():
  done = subprocess.run(
    [sys.executable, "-m", "convnet.summary", "--config=dense"],
    capture_output=True,
    text=True,
    check=True,
  )
  assert "Unable to initialize backend" not in done.stderr, done.stderr
  assert done.stdout.startswith("dense on mnist: input (28, 28, 1), 10 classes"), done.stdout
