r"""The "spoken_digits" source: digit words synthesised by espeak-ng, as log-mel spectrograms.

A dataset that needs no download: every clip is spoken by Debian's `espeak-ng`
(`apt-get install espeak-ng`) with one of several voices (an English accent
and a voice variant, such as `gmw/en-GB-scotland+f3`), speeds and pitches,
with white noise mixed in for the noisy variant. Each clip is trimmed of
silence, placed at a random offset in a window of 1.04 s, resampled to 16 kHz
and turned into a log-mel spectrogram of 40 mel bands by 64 frames: an image
of shape (40, 64, 1), frequency from low to high down the rows, time across
the columns.

The split is by voice: the test voices' accents and variants are never heard
in training (see `Params`). Within the training voices, the validation split
of `input_pipeline.load` is drawn by example.

The dataset is generated once and cached as `spoken_digits.npz` (with a
readable `params.json`) in a folder named after a hash of everything that
shapes it: the parameters below, this generator's version and espeak-ng's own
version. Change any of them and a new folder is made; nothing is overwritten.
The cache lives in `$CONVNET_CACHE_DIR`, else `$XDG_CACHE_HOME/convnet`, else
`~/.cache/convnet`. Generate it ahead of a run (about a minute on 2 cores):

  python -m convnet.sources.spoken_digits --name=spoken_digits
  python -m convnet.sources.spoken_digits --name=spoken_digits_noisy --figure=spectrograms.png

`input_pipeline.load` with `data.source="spoken_digits"` generates it on first
use too; `data.name` chooses the preset (`PRESETS`).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import hashlib
import json
import os
import shutil
import stat
import subprocess
import sys
import zipfile
from collections.abc import Mapping
from typing import Any

import numpy as np
from absl import app, flags, logging
from scipy import signal

from convnet import cache, cli, logs, sources
from convnet.errors import ConfigError, ConvnetError, DataError, FileFormatError
from convnet.files import atomic_open, atomic_write, read_json, save_figure

# Bump when a change to this file changes the arrays it makes: old caches are then left alone.
GENERATOR_VERSION = 1
DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
ESPEAK_RATE = 22050  # espeak-ng's output sample rate
SAMPLE_RATE = 16000
FFT_SIZE = 512
HOP = 256
NUM_FRAMES = 64
NUM_MELS = 40
CLIP_SAMPLES = FFT_SIZE + HOP * (NUM_FRAMES - 1)  # 16,640 samples, 1.04 s: exactly 64 frames
TOP_DB = 80.0  # each spectrogram's floor, below its own maximum
SILENCE = 0.01  # of the clip's peak: quieter samples at either end are trimmed
FADE = 160  # samples (10 ms at 16 kHz) faded in and out at the ends of a trimmed word
CACHE_FILE = "spoken_digits.npz"


@dataclasses.dataclass(frozen=True)
class Params:
  """Everything that shapes the dataset; its hash names the cache folder.

  A voice is an accent (an espeak-ng voice file) with a voice variant, which
  sets the speaker's pitch and formants. The test voices are the test accents
  with the test variants; the training voices are the other accents with the
  other variants. Mixed pairs are left out, so that neither the accent nor the
  variant of a test voice is heard in training.
  """

  accents: tuple[str, ...] = (
    "gmw/en",
    "gmw/en-US",
    "gmw/en-GB-x-rp",
    "gmw/en-GB-x-gbclan",
    "gmw/en-GB-x-gbcwmd",
    "gmw/en-GB-scotland",
    "gmw/en-029",
  )
  variants: tuple[str, ...] = (
    "m1", "m2", "m3", "m5", "m6", "m7", "f1", "f2", "f4", "f5", "m4", "m8", "f3"
  )  # fmt: skip
  test_accents: tuple[str, ...] = ("gmw/en-GB-scotland", "gmw/en-029")
  test_variants: tuple[str, ...] = ("m4", "m8", "f3")
  speeds: tuple[int, ...] = (130, 170, 210)  # words per minute
  pitches: tuple[int, ...] = (25, 45, 65, 85)  # espeak-ng's 0..99
  noise_snr_db: tuple[float, float] | None = None  # white noise, SNR drawn per clip in this range
  seed: int = 0  # each clip's offset in the window, and its noise

  def __post_init__(self):
    for field in ("accents", "variants"):
      test = getattr(self, f"test_{field}")
      if not set(test) < set(getattr(self, field)):
        raise ConfigError(f"spoken digits: test_{field}={test!r} must be some, not all, of {field}")

  @property
  def voices(self) -> tuple[str, ...]:
    """Training voices, then test voices."""
    return self._voices(train=True) + self._voices(train=False)

  def _voices(self, train: bool) -> tuple[str, ...]:
    accents = [a for a in self.accents if (a in self.test_accents) != train]
    variants = [v for v in self.variants if (v in self.test_variants) != train]
    return tuple(f"{a}+{v}" for a in accents for v in variants)

  def is_test_voice(self) -> np.ndarray:
    """A boolean per voice, in `voices` order."""
    num_train = len(self._voices(train=True))
    return np.arange(len(self.voices)) >= num_train


# The datasets that `data.name` names with `data.source="spoken_digits"`.
PRESETS = {
  "spoken_digits": Params(),
  "spoken_digits_noisy": Params(noise_snr_db=(0.0, 20.0)),
}
INPUT_SHAPE = (NUM_MELS, NUM_FRAMES, 1)


def load(data_config: Mapping[str, Any]) -> sources.RawData:
  """The spectrograms of the preset `data.name`, from the cache (made on first use).

  Images are float32 (N, 40, 64, 1), standardised; labels int64 (N,), indexing
  DIGIT_WORDS. The test split holds the clips of the test voices only; no clip
  of theirs is among the training examples.

  Raises:
    ConfigError: `data.name` is not a preset.
    DataError: espeak-ng failed, or the cache cannot be written or read.
  """
  name = data_config["name"]
  arrays, path = load_arrays(params_for(name))
  raw = sources.RawData(
    name=name,
    train_images=arrays["train_images"],
    train_labels=arrays["train_labels"],
    test_images=arrays["test_images"],
    test_labels=arrays["test_labels"],
    num_classes=len(DIGIT_WORDS),
    class_names=DIGIT_WORDS,
  )
  return sources.check_data(raw, path)


def example_clusters(data_config: Mapping[str, Any]) -> np.ndarray:
  """(N,) int64: the voice of each test clip, in the test split's order (indices into voices).

  A clip's voice shapes all its words: a paired bootstrap resamples voices whole
  (`convnet.predictions.cluster_labels`).
  """
  arrays, _ = load_arrays(params_for(data_config["name"]))
  return arrays["test_voices"]


def input_spec(data_config: Mapping[str, Any]) -> tuple[tuple[int, ...], int]:
  """(40, 64, 1) and 10 classes, once `data.name` is checked (a ConfigError if not a preset)."""
  params_for(data_config["name"])
  return INPUT_SHAPE, len(DIGIT_WORDS)


def params_for(name: str) -> Params:
  """The preset that `data.name` names; a ConfigError naming the presets if none."""
  return PRESETS[sources.check_name(name, PRESETS, "spoken_digits", "a spoken-digit dataset")]


def espeak_version() -> str:
  """The installed espeak-ng's version."""
  out = subprocess.run(["espeak-ng", "--version"], capture_output=True, text=True, check=False)
  # "eSpeak NG text-to-speech: 1.51  Data at: /usr/lib/...": the data path is this machine's.
  return out.stdout.split("Data at")[0].strip()


def fingerprint(params: Params, version: str) -> dict:
  """What the cache folder's name hashes, and what its params.json records."""
  return {
    "generator_version": GENERATOR_VERSION,
    "espeak_ng": version,
    "sample_rate": SAMPLE_RATE,
    "fft_size": FFT_SIZE,
    "hop": HOP,
    "num_frames": NUM_FRAMES,
    "num_mels": NUM_MELS,
    "top_db": TOP_DB,
    "silence": SILENCE,
    "fade": FADE,
    **dataclasses.asdict(params),
  }


def cache_dir(params: Params, version: str, root: str | None = None) -> str:
  """The folder of one version of the dataset: spoken_digits-v<N>-<hash of its fingerprint>."""
  text = json.dumps(fingerprint(params, version), sort_keys=True)
  digest = hashlib.sha256(text.encode()).hexdigest()[:12]
  return os.path.join(root or cache.root(), f"spoken_digits-v{GENERATOR_VERSION}-{digest}")


# ----------------------------------------------------------------------------
# Synthesis and features


def synthesise(voice: str, speed: int, pitch: int, word: str) -> np.ndarray:
  """One clip from espeak-ng, as float32 samples in [-1, 1] at ESPEAK_RATE."""
  command = ["espeak-ng", "-v", voice, "-s", str(speed), "-p", str(pitch), "--stdout", word]
  try:
    out = subprocess.run(command, capture_output=True, check=True, timeout=60)
  except subprocess.CalledProcessError as e:
    message = e.stderr.decode(errors="replace").strip()
    raise DataError(f"{' '.join(command)} failed: {message or e}") from None
  return read_wav(out.stdout, " ".join(command))


def read_wav(data: bytes, origin: str) -> np.ndarray:
  """16-bit mono PCM from a WAV stream whose sizes may be placeholders (as --stdout writes).

  Returns float32 samples in [-1, 1), shape (samples,), at ESPEAK_RATE.

  Raises:
    DataError: naming `origin`, if the stream is not WAV, not 16-bit mono PCM at
      ESPEAK_RATE, or holds no data.
  """
  if data[:4] != b"RIFF" or data[8:12] != b"WAVE":
    raise DataError(f"{origin}: did not write a WAV stream")
  position, fmt = 12, None
  while position + 8 <= len(data):
    chunk, size = (
      data[position : position + 4],
      int.from_bytes(data[position + 4 : position + 8], "little"),
    )
    body = position + 8
    if chunk == b"fmt ":
      fmt = data[body : body + 16]
    elif chunk == b"data":
      if fmt is None:
        break
      channels = int.from_bytes(fmt[2:4], "little")
      rate = int.from_bytes(fmt[4:8], "little")
      bits = int.from_bytes(fmt[14:16], "little")
      if (int.from_bytes(fmt[0:2], "little"), channels, rate, bits) != (1, 1, ESPEAK_RATE, 16):
        raise DataError(
          f"{origin}: expected 16-bit mono PCM at {ESPEAK_RATE} Hz, found {bits}-bit, "
          f"{channels} channels at {rate} Hz"
        )
      samples = data[body : body + size]
      samples = samples[: len(samples) // 2 * 2]  # the streamed size overstates: take what came
      return np.frombuffer(samples, "<i2").astype(np.float32) / np.float32(32768)
    position = body + size + (size & 1)
  raise DataError(f"{origin}: no PCM data in its WAV stream")


def trim(clip: np.ndarray) -> np.ndarray:
  """The clip without the quiet samples at either end (below SILENCE of its peak)."""
  peak = np.abs(clip).max()
  if peak == 0:
    return clip[:0]
  loud = np.flatnonzero(np.abs(clip) > SILENCE * peak)
  return clip[loud[0] : loud[-1] + 1]


def mel_filterbank(
  num_mels: int = NUM_MELS, fft_size: int = FFT_SIZE, sample_rate: int = SAMPLE_RATE
) -> np.ndarray:
  """Triangular filters evenly spaced on the mel scale (HTK's formula), (num_mels, bins)."""

  def to_mel(hz):
    return 2595.0 * np.log10(1.0 + np.asarray(hz) / 700.0)

  def to_hz(mel):
    return 700.0 * (10.0 ** (np.asarray(mel) / 2595.0) - 1.0)

  edges = to_hz(np.linspace(to_mel(0.0), to_mel(sample_rate / 2), num_mels + 2))
  bins = np.fft.rfftfreq(fft_size, 1.0 / sample_rate)
  lower, centre, upper = edges[:-2, None], edges[1:-1, None], edges[2:, None]
  rising = (bins - lower) / (centre - lower)
  falling = (upper - bins) / (upper - centre)
  return np.maximum(0.0, np.minimum(rising, falling)).astype(np.float32)


def log_mel(clip: np.ndarray, filterbank: np.ndarray) -> np.ndarray:
  """A 16 kHz clip of CLIP_SAMPLES samples as a (mels, frames) spectrogram in dB."""
  frames = np.lib.stride_tricks.sliding_window_view(clip, FFT_SIZE)[::HOP]
  power = np.abs(np.fft.rfft(frames * signal.get_window("hann", FFT_SIZE), axis=-1)) ** 2
  db = 10.0 * np.log10(np.maximum(filterbank @ power.T, 1e-10))
  return np.maximum(db, db.max() - TOP_DB).astype(np.float32)


def spectrogram(clip: np.ndarray, rng: np.random.Generator, params: Params, origin: str):
  """One synthesised clip (at ESPEAK_RATE) as the dataset's (mels, frames) spectrogram."""
  voiced = trim(clip)
  voiced = signal.resample_poly(voiced, SAMPLE_RATE, ESPEAK_RATE).astype(np.float32)
  if len(voiced) == 0:
    raise DataError(f"{origin}: espeak-ng wrote only silence")
  if len(voiced) > CLIP_SAMPLES:
    raise DataError(
      f"{origin}: the word lasts {len(voiced) / SAMPLE_RATE:.2f} s, which does not fit the "
      f"window of {CLIP_SAMPLES / SAMPLE_RATE:.2f} s; choose faster speeds"
    )
  # Fade in and out, so that the cut made by trimming does not click across every band.
  ramp = np.sin(np.linspace(0.0, np.pi / 2, min(FADE, len(voiced) // 2)), dtype=np.float32) ** 2
  voiced[: len(ramp)] *= ramp
  voiced[len(voiced) - len(ramp) :] *= ramp[::-1]
  window = np.zeros(CLIP_SAMPLES, np.float32)
  offset = rng.integers(0, CLIP_SAMPLES - len(voiced) + 1)
  window[offset : offset + len(voiced)] = voiced / np.abs(voiced).max()
  if params.noise_snr_db is not None:
    snr_db = rng.uniform(*params.noise_snr_db)
    signal_power = np.mean(voiced**2) / np.abs(voiced).max() ** 2
    noise = rng.standard_normal(CLIP_SAMPLES) * np.sqrt(signal_power / 10 ** (snr_db / 10))
    window += noise.astype(np.float32)
  return log_mel(window, mel_filterbank())


# ----------------------------------------------------------------------------
# The dataset


def generate(params: Params, workers: int | None = None) -> dict[str, np.ndarray]:
  """Synthesises every clip and computes its spectrogram.

  Returns arrays: "train_images"/"test_images" float32 (N, 40, 64, 1), standardised
  by the training clips' mean and standard deviation; "train_labels"/"test_labels"
  int64; "train_voices"/"test_voices", indices into "voices".
  """
  check_voices(params)
  voices = params.voices
  jobs = [
    (v, speed, pitch, digit)
    for v in range(len(voices))
    for speed in params.speeds
    for pitch in params.pitches
    for digit in range(len(DIGIT_WORDS))
  ]

  def clip(job):
    v, speed, pitch, digit = job
    return synthesise(voices[v], speed, pitch, DIGIT_WORDS[digit])

  with concurrent.futures.ThreadPoolExecutor(workers or os.cpu_count() or 1) as pool:
    made = pool.map(clip, jobs)
    clips = list(logs.progress(made, "Speaking the digits with espeak-ng", len(jobs), "clips"))
  _check_distinct(clips, jobs, voices)
  # One generator per clip, keyed by the seed and the clip's position: the same seed gives
  # the same offsets and noise whatever order the clips were made in.
  clips_and_jobs = logs.progress(
    enumerate(zip(clips, jobs, strict=True)),
    "Computing the spoken digits' spectrograms",
    len(jobs),
    "clips",
  )
  images = np.stack(
    [
      spectrogram(c, np.random.default_rng([params.seed, i]), params, _describe(job, voices))
      for i, (c, job) in clips_and_jobs
    ]
  )[..., None]
  voice = np.array([job[0] for job in jobs], np.int64)
  labels = np.array([job[3] for job in jobs], np.int64)
  test = params.is_test_voice()[voice]
  mean, std = images[~test].mean(), images[~test].std()
  images = ((images - mean) / std).astype(np.float32)
  return {
    "train_images": images[~test],
    "train_labels": labels[~test],
    "train_voices": voice[~test],
    "test_images": images[test],
    "test_labels": labels[test],
    "test_voices": voice[test],
    "voices": np.array(voices),
  }


def check_voices(params: Params) -> None:
  """Every accent and variant must be one that espeak-ng has: it falls back silently otherwise."""
  for field, option, prefix in (
    ("accents", "--voices", ""),
    ("variants", "--voices=variant", "!v/"),
  ):
    out = subprocess.run(["espeak-ng", option], capture_output=True, text=True, check=False)
    known = {line.split()[4] for line in out.stdout.splitlines()[1:] if len(line.split()) > 4}
    missing = [name for name in getattr(params, field) if prefix + name not in known]
    if missing:
      raise DataError(
        f"spoken digits: espeak-ng has no {field} {', '.join(map(repr, missing))} "
        f"(`espeak-ng {option}` lists them, in its File column)"
      )


def _check_distinct(clips: list[np.ndarray], jobs: list[tuple], voices: tuple[str, ...]) -> None:
  """Two voices that speak every word the same way would make the split by voice a lie."""
  sounds: dict[int, list[bytes]] = {}
  for c, (v, *_) in zip(clips, jobs, strict=True):
    sounds.setdefault(v, []).append(hashlib.sha256(c.tobytes()).digest())
  seen: dict[tuple[bytes, ...], int] = {}
  for v, digests in sounds.items():
    first = seen.setdefault(tuple(digests), v)
    if first != v:
      raise DataError(
        f"spoken digits: espeak-ng speaks every clip of {voices[first]!r} and {voices[v]!r} "
        f"the same way; choose voices that differ"
      )


def _describe(job, voices) -> str:
  v, speed, pitch, digit = job
  return f"espeak-ng -v {voices[v]} -s {speed} -p {pitch} {DIGIT_WORDS[digit]!r}"


ARRAYS = (
  "train_images",
  "train_labels",
  "train_voices",
  "test_images",
  "test_labels",
  "test_voices",
  "voices",
)


def load_arrays(params: Params, root: str | None = None) -> tuple[dict[str, np.ndarray], str]:
  """The cached dataset of `params`, generated (and cached) first if it is missing.

  Without espeak-ng, a cache of the same parameters made by any espeak-ng
  version is used (copied from another machine, say).

  Returns:
    (the arrays as `generate` gives them, the path of the cache file).
  """
  root = root or cache.root()
  if shutil.which("espeak-ng") is None:
    path = _find_cached(params, root)
    return _read(path), path
  version = espeak_version()
  folder = cache_dir(params, version, root)
  path = os.path.join(folder, CACHE_FILE)
  if not os.path.exists(path):
    try:
      os.makedirs(folder, exist_ok=True)  # before minutes of synthesis, not after
      logging.info("Making the spoken digits (once; cached in %s)", folder)
      _write(folder, generate(params), fingerprint(params, version))
    except OSError as e:
      raise DataError(
        f"{folder}: cannot write the spoken-digit cache ({e.strerror or e}); set "
        f"CONVNET_CACHE_DIR to a writable folder"
      ) from None
  return _read(path), path


def _find_cached(params: Params, root: str) -> str:
  """A cache file of `params` under `root`, whatever espeak-ng made it; else a DataError."""
  wanted = json.loads(json.dumps(fingerprint(params, "")))  # tuples as JSON gives them back
  del wanted["espeak_ng"]
  prefix = f"spoken_digits-v{GENERATOR_VERSION}-"
  for name in sorted(os.listdir(root)) if os.path.isdir(root) else []:
    record = os.path.join(root, name, "params.json")
    if not (name.startswith(prefix) and os.path.isfile(record)):
      continue
    try:
      found = read_json(record)
    except (OSError, FileFormatError):
      continue  # not a record of this dataset's parameters: look on
    if not isinstance(found, dict):
      continue
    found.pop("espeak_ng", None)
    if found == wanted and os.path.isfile(os.path.join(root, name, CACHE_FILE)):
      return os.path.join(root, name, CACHE_FILE)
  raise DataError(
    f"spoken digits need espeak-ng to synthesise speech, and it is not on PATH, nor is a cache "
    f"of these parameters in {root}: install it (Debian/Ubuntu: sudo apt-get install espeak-ng) "
    f"or copy a cache folder made elsewhere into {root} (see $CONVNET_CACHE_DIR)"
  )


def _write(folder: str, arrays: dict[str, np.ndarray], record: dict) -> None:
  """Writes the cache file, then its params.json, each atomically."""
  with atomic_open(os.path.join(folder, CACHE_FILE), "wb") as f:
    np.savez(f, **arrays)
  atomic_write(os.path.join(folder, "params.json"), json.dumps(record, indent=2) + "\n")


def _read(path: str) -> dict[str, np.ndarray]:
  """Reads and checks a cache file; a DataError naming it if it is damaged.

  Damaged: not a regular file, not the arrays `generate` makes, images of
  another shape than their labels', or spectrograms that are not finite (one
  NaN would make the loss NaN at the first step that draws it).
  """
  remedy = "delete its folder to generate it again"
  try:
    # Opened without blocking and checked first: np.load would wait forever on a FIFO.
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    with os.fdopen(fd, "rb") as file:
      mode = os.fstat(fd).st_mode
      if not stat.S_ISREG(mode):
        raise DataError(f"{path}: the spoken-digit cache is not a regular file; {remedy}")
      os.set_blocking(fd, True)
      with np.load(file, allow_pickle=False) as data:
        arrays = {k: data[k] for k in ARRAYS}
  except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
    raise DataError(
      f"{path}: damaged spoken-digit cache ({type(e).__name__}: {e}); {remedy}"
    ) from None
  for split in ("train", "test"):
    n = len(arrays[f"{split}_labels"])
    images = arrays[f"{split}_images"]
    if images.shape != (n, *INPUT_SHAPE) or len(arrays[f"{split}_voices"]) != n:
      raise DataError(
        f"{path}: damaged spoken-digit cache ({split} images of shape "
        f"{images.shape} for {n} labels); {remedy}"
      )
    if images.dtype != np.float32:
      raise DataError(
        f"{path}: damaged spoken-digit cache ({split} images of type {images.dtype}, not "
        f"float32); {remedy}"
      )
    bad = images.size - int(np.count_nonzero(np.isfinite(images)))
    if bad:
      raise DataError(
        f"{path}: damaged spoken-digit cache ({bad:,} of the {images.size:,} values of its "
        f"{split} spectrograms are not finite: NaN or infinite); {remedy}"
      )
  return arrays


# ----------------------------------------------------------------------------
# Command line


def plot(arrays: dict[str, np.ndarray], path: str) -> None:
  """One training spectrogram of each digit, as a PNG."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, axes = plt.subplots(2, 5, figsize=(12, 4.6), constrained_layout=True)
  voices = arrays["voices"]
  for digit, ax in enumerate(axes.flat):
    i = int(np.flatnonzero(arrays["train_labels"] == digit)[0])
    image = ax.imshow(
      arrays["train_images"][i, ..., 0], origin="lower", aspect="auto", cmap="magma"
    )
    ax.set_title(f"{DIGIT_WORDS[digit]} ({voices[arrays['train_voices'][i]]})", fontsize=9)
    ax.set_xlabel("frame (16 ms)", fontsize=8)
    ax.set_ylabel("mel band", fontsize=8)
    ax.tick_params(labelsize=7)
  fig.colorbar(image, ax=axes, shrink=0.8, label="standardised log-mel power")
  save_figure(fig, path, dpi=64)  # atomic, and never through a symbolic link
  plt.close(fig)


FLAGS = flags.FLAGS


def define_flags(flag_values: flags.FlagValues = FLAGS) -> None:
  """Defines this command's flags, --name and --figure: when it runs, never at import."""
  flags.DEFINE_enum(
    "name", "spoken_digits", sorted(PRESETS), "The dataset to generate.", flag_values=flag_values
  )
  flags.DEFINE_string(
    "figure",
    None,
    "Also write one spectrogram of each digit to this PNG.",
    flag_values=flag_values,
  )


def main(argv):
  """Makes (or finds) the cache of the preset --name; prints its path and each split's voices."""
  cli.start(argv, quiet=False)
  try:
    arrays, path = load_arrays(params_for(FLAGS.name))
  except ConvnetError as e:
    sys.exit(f"error: {e}")
  voices = arrays["voices"]
  print(path)
  for split in ("train", "test"):
    used = sorted(set(voices[arrays[f"{split}_voices"]]))
    count = f"{len(used)} voice" + ("" if len(used) == 1 else "s")
    print(f"{split}: {len(arrays[f'{split}_labels'])} clips, {count}: {', '.join(used)}")
  if FLAGS.figure:
    plot(arrays, FLAGS.figure)
    print(f"Wrote {FLAGS.figure}")


if __name__ == "__main__":
  define_flags()
  app.run(main, flags_parser=cli.parse_flags)
