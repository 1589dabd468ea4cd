"""Spoken digits: synthesis by espeak-ng, spectrograms, the split by voice, and the cache."""

import json
import os

import numpy as np
import pytest

from convnet import input_pipeline
from convnet.errors import ConfigError, DataError
from convnet.sources import spoken_digits
from tests.conftest import train_briefly

# Five voices, one speed and pitch: 50 clips, generated in about a second. Training voices:
# two accents by two variants; the test voice: the third accent with the third variant.
SMALL = spoken_digits.Params(
  accents=("gmw/en", "gmw/en-US", "gmw/en-GB-scotland"),
  variants=("m1", "f2", "m4"),
  test_accents=("gmw/en-GB-scotland",),
  test_variants=("m4",),
  speeds=(170,),
  pitches=(50,),
)


@pytest.fixture(scope="module")
def small():
  return spoken_digits.generate(SMALL)


@pytest.fixture
def presets(monkeypatch, tmp_path):
  """`data.name` presets shrunk to SMALL, cached under a fresh folder."""
  monkeypatch.setenv("CONVNET_CACHE_DIR", str(tmp_path / "cache"))
  small_presets = {
    "spoken_digits": SMALL,
    "spoken_digits_noisy": spoken_digits.dataclasses.replace(SMALL, noise_snr_db=(0.0, 20.0)),
  }
  monkeypatch.setattr(spoken_digits, "PRESETS", small_presets)
  return tmp_path / "cache"


def _data_config(**overrides):
  config = {"source": "spoken_digits", "name": "spoken_digits", "validation_fraction": 0.2}
  config.update(overrides)
  return config


def test_shapes_and_labels(small):
  assert small["train_images"].shape == (40, 40, 64, 1)
  assert small["test_images"].shape == (10, 40, 64, 1)
  assert small["train_images"].dtype == np.float32
  for split, voices in (("train", 4), ("test", 1)):
    assert small[f"{split}_labels"].dtype == np.int64
    # Every digit once for each of the split's voices.
    np.testing.assert_array_equal(
      np.bincount(small[f"{split}_labels"], minlength=10), [voices] * 10
    )
  assert np.isfinite(small["train_images"]).all()
  # Standardised by the training clips.
  assert abs(float(small["train_images"].mean())) < 1e-5
  assert float(small["train_images"].std()) == pytest.approx(1.0, abs=1e-5)
  assert list(small["voices"]) == [
    "gmw/en+m1",
    "gmw/en+f2",
    "gmw/en-US+m1",
    "gmw/en-US+f2",
    "gmw/en-GB-scotland+m4",
  ]


def test_no_voice_is_in_both_splits(small):
  train_voices, test_voices = set(small["train_voices"]), set(small["test_voices"])
  assert train_voices == {0, 1, 2, 3} and test_voices == {4}


@pytest.mark.parametrize("name", ["spoken_digits", "spoken_digits_noisy"])
def test_no_accent_or_variant_of_a_test_voice_is_heard_in_training(name):
  params = spoken_digits.PRESETS[name]
  test = params.is_test_voice()
  voices = np.array(params.voices)
  assert (len(voices), int(test.sum())) == (56, 6)
  train_accents, train_variants = zip(*(v.split("+") for v in voices[~test]), strict=True)
  test_accents, test_variants = zip(*(v.split("+") for v in voices[test]), strict=True)
  assert not set(train_accents) & set(test_accents)
  assert not set(train_variants) & set(test_variants)
  assert len(set(voices)) == len(voices)


def test_voices_that_espeak_ng_lacks_or_speaks_alike_are_errors(monkeypatch):
  # espeak-ng falls back to a default voice without a word for a name it does not know.
  unknown = spoken_digits.dataclasses.replace(
    SMALL, accents=("gmw/en", "en-gb", "gmw/en-GB-scotland")
  )
  with pytest.raises(DataError, match="no accents 'en-gb'"):
    spoken_digits.generate(unknown)
  with pytest.raises(ConfigError, match="test_variants=.*must be some, not all, of variants"):
    spoken_digits.Params(variants=("m1",), test_variants=("m1",))
  # gmw/en-US and gmw/en-US-nyc say "one" alike.
  alike = spoken_digits.dataclasses.replace(
    SMALL, accents=("gmw/en-US", "gmw/en-US-nyc", "gmw/en-GB-scotland")
  )
  monkeypatch.setattr(spoken_digits, "DIGIT_WORDS", ("one",))
  with pytest.raises(DataError, match=r"'gmw/en-US\+m1' and 'gmw/en-US-nyc\+m1' the same way"):
    spoken_digits.generate(alike)


def test_the_same_seed_gives_the_same_dataset_and_another_seed_another(small):
  again = spoken_digits.generate(SMALL)
  for key in small:
    np.testing.assert_array_equal(again[key], small[key])
  other = spoken_digits.generate(spoken_digits.dataclasses.replace(SMALL, seed=1))
  np.testing.assert_array_equal(other["train_labels"], small["train_labels"])
  np.testing.assert_array_equal(other["test_voices"], small["test_voices"])
  # The seed moves each word within its window.
  assert not np.array_equal(other["train_images"], small["train_images"])


def test_noise_is_seeded_and_mixed_in(small):
  noisy = spoken_digits.dataclasses.replace(SMALL, noise_snr_db=(0.0, 0.0))
  first, second = spoken_digits.generate(noisy), spoken_digits.generate(noisy)
  np.testing.assert_array_equal(first["train_images"], second["train_images"])
  # At 0 dB the silence around a word fills with noise: the quietest tenth of each clean
  # spectrogram is its floor (80 dB under its peak); with noise it is far above it.
  clean = small["train_images"][..., 0]
  loud = first["train_images"][..., 0]
  spread_clean = np.percentile(clean, 10, axis=(1, 2)) - clean.min(axis=(1, 2))
  spread_noisy = np.percentile(loud, 10, axis=(1, 2)) - loud.min(axis=(1, 2))
  assert (spread_clean < 1e-4).all()
  assert (spread_noisy > 0.1).all()


def test_mel_filterbank_triangles():
  bank = spoken_digits.mel_filterbank()
  assert bank.shape == (40, 257)
  assert bank.min() >= 0.0 and bank.max() <= 1.0
  peaks = bank.argmax(axis=1)
  assert (np.diff(peaks) >= 0).all()  # centres rise with the band
  # Mel spacing: the low bands are narrower than the high ones.
  widths = (bank > 0).sum(axis=1)
  assert widths[-1] > 4 * widths[2]


@pytest.mark.parametrize("hz", [300.0, 1000.0, 4000.0])
def test_log_mel_puts_a_tone_in_its_band(hz):
  t = np.arange(spoken_digits.CLIP_SAMPLES) / spoken_digits.SAMPLE_RATE
  tone = np.sin(2 * np.pi * hz * t).astype(np.float32)
  bank = spoken_digits.mel_filterbank()
  spec = spoken_digits.log_mel(tone, bank)
  assert spec.shape == (40, 64)
  bin_of_tone = round(hz * spoken_digits.FFT_SIZE / spoken_digits.SAMPLE_RATE)
  # The band whose triangle weighs the tone's bin most is the loudest in every frame.
  np.testing.assert_array_equal(spec.argmax(axis=0), np.full(64, bank[:, bin_of_tone].argmax()))
  assert spec.max() - spec.min() == pytest.approx(spoken_digits.TOP_DB, abs=1e-3)


def test_a_word_too_long_for_the_window_or_silent_is_an_error():
  long = np.ones(int(1.2 * spoken_digits.ESPEAK_RATE), np.float32)
  with pytest.raises(DataError, match="lasts 1.20 s.*window of 1.04 s"):
    spoken_digits.spectrogram(long, np.random.default_rng(0), SMALL, "the clip")
  with pytest.raises(DataError, match="the clip: espeak-ng wrote only silence"):
    spoken_digits.spectrogram(
      np.zeros(100, np.float32), np.random.default_rng(0), SMALL, "the clip"
    )


def test_a_bad_wav_stream_is_an_error():
  with pytest.raises(DataError, match="espeak-ng -v x: did not write a WAV stream"):
    spoken_digits.read_wav(b"not a wav", "espeak-ng -v x")
  clip = spoken_digits.synthesise("en-us", 170, 50, "one")
  assert clip.dtype == np.float32 and 0.1 < len(clip) / spoken_digits.ESPEAK_RATE < 1.5


def test_load_splits_by_voice_and_caches_by_parameters(presets, monkeypatch):
  dataset = input_pipeline.load(_data_config(), seed=0)
  assert dataset.input_shape == (40, 64, 1)
  assert dataset.class_names[:3] == ("zero", "one", "two")
  assert (len(dataset.train), len(dataset.validation), len(dataset.test)) == (32, 8, 10)
  folders = os.listdir(presets)
  assert len(folders) == 1 and folders[0].startswith("spoken_digits-v1-")
  record = json.loads((presets / folders[0] / "params.json").read_text())
  assert record["accents"] == list(SMALL.accents) and record["espeak_ng"].startswith("eSpeak NG")
  assert input_pipeline.input_spec(_data_config()) == ((40, 64, 1), 10)

  # A second load reads the cache: nothing is synthesised.
  def no_synthesis(*args):
    raise AssertionError("synthesised again")

  monkeypatch.setattr(spoken_digits, "synthesise", no_synthesis)
  again = input_pipeline.load(_data_config(), seed=0)
  np.testing.assert_array_equal(again.test.images, dataset.test.images)
  # Other parameters get a folder of their own; the first is left as it was.
  monkeypatch.undo()
  monkeypatch.setenv("CONVNET_CACHE_DIR", str(presets))
  other = {"spoken_digits": spoken_digits.dataclasses.replace(SMALL, seed=1)}
  monkeypatch.setattr(spoken_digits, "PRESETS", other)
  input_pipeline.load(_data_config(), seed=0)
  assert len(os.listdir(presets)) == 2


def test_without_espeak_ng_a_matching_cache_is_used_or_the_error_says_what_to_install(
  presets, monkeypatch
):
  made = input_pipeline.load(_data_config(), seed=0)
  monkeypatch.setattr(spoken_digits.shutil, "which", lambda name: None)
  found = input_pipeline.load(_data_config(), seed=0)
  np.testing.assert_array_equal(found.train.images, made.train.images)
  with pytest.raises(DataError, match="apt-get install espeak-ng.*CONVNET_CACHE_DIR"):
    input_pipeline.load(_data_config(name="spoken_digits_noisy"), seed=0)


def test_a_damaged_cache_is_named_and_left_alone(presets):
  input_pipeline.load(_data_config(), seed=0)
  (folder,) = os.listdir(presets)
  path = presets / folder / spoken_digits.CACHE_FILE
  path.write_bytes(path.read_bytes()[:1000])
  damaged = path.read_bytes()
  with pytest.raises(DataError, match=f"{path}: damaged spoken-digit cache"):
    input_pipeline.load(_data_config(), seed=0)
  assert path.read_bytes() == damaged


def test_an_unwritable_cache_is_named_before_any_synthesis(monkeypatch, tmp_path):
  blocker = tmp_path / "a_file"
  blocker.write_text("not a folder")
  monkeypatch.setenv("CONVNET_CACHE_DIR", str(blocker))
  monkeypatch.setattr(spoken_digits, "PRESETS", {"spoken_digits": SMALL})

  def no_synthesis(*args):
    raise AssertionError("synthesised before the cache folder was made")

  monkeypatch.setattr(spoken_digits, "synthesise", no_synthesis)
  with pytest.raises(
    DataError, match=f"{blocker}/spoken_digits-v1-.*cannot write.*CONVNET_CACHE_DIR"
  ):
    input_pipeline.load(_data_config(), seed=0)
  assert blocker.read_text() == "not a folder"


def test_unknown_name_is_a_config_error():
  with pytest.raises(ConfigError, match="data.name='mnist'.*spoken_digits_noisy"):
    input_pipeline.load(_data_config(name="mnist"), seed=0)
  with pytest.raises(ConfigError, match="data.name='mnist'"):
    input_pipeline.input_spec(_data_config(name="mnist"))


@pytest.mark.slow
def test_the_convnet_and_dense_configs_train(presets, tmp_path):
  from convnet.configs import spoken_digits as convnet_config
  from convnet.configs import spoken_digits_dense as dense_config

  # Pinned: update only if the configs change on purpose.
  for name, module, params in (
    ("convnet", convnet_config, 162_218),
    ("dense", dense_config, 164_554),
  ):
    config = module.get_config()
    config.data.validation_fraction = 0.2
    assert train_briefly(config, tmp_path / name)["num_params"] == params


def test_the_command_line_prints_the_cache_and_the_voices(presets, capsys):
  from absl import flags

  spoken_digits.define_flags()
  try:
    flags.FLAGS(["spoken_digits", "--name=spoken_digits"])
    spoken_digits.main(["spoken_digits"])
  finally:
    for name in ("name", "figure"):
      delattr(flags.FLAGS, name)
  out = capsys.readouterr().out.splitlines()
  assert out[0].startswith(str(presets)) and out[0].endswith("spoken_digits.npz")
  assert out[1] == "train: 40 clips, 4 voices: gmw/en+f2, gmw/en+m1, gmw/en-US+f2, gmw/en-US+m1"
  assert out[2] == "test: 10 clips, 1 voice: gmw/en-GB-scotland+m4"
