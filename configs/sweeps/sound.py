r"""A convnet shaped for sound against the dense baseline and the image convnet, 5 seeds.

On the spoken digits, clean and noisy (test voices never heard in training):
- the dense baseline of configs/spoken_digits_dense.py (164,554 parameters);
- the book's image convnet of configs/spoken_digits.py (162,218), which
  treats the (40 bands, 64 frames) spectrogram as a picture;
- a 1D convnet over time (`data.layout="sequence"`: 64 frames of 40 mel-band
  channels): three convolutions of 64, 128 and 128 filters, 5 frames wide,
  max pooling over 2 frames after the first two, a global average over time,
  then 64 units (144,906 parameters): what it learns at one moment of a word
  it applies at every moment, and the global average lets a word start
  anywhere in the window;
- the 1D convnet and the dense baseline with SpecAugment's masks
  (`augment.*`): two bands of up to 8 frames and two of up to 6 mel bands
  blanked in each training example, drawn anew every step.

  python -m convnet.sweep --sweep=configs/sweeps/sound.py --workdir=runs/sound --vmap_seeds
  python -m convnet.report runs/sound
"""

import ml_collections

from convnet.configs import spoken_digits
from convnet.sweep import axis, product

MASKS = {
  "augment.time_masks": 2,
  "augment.time_mask_width": 8,
  "augment.freq_masks": 2,
  "augment.freq_mask_width": 6,
}


def get_config() -> ml_collections.ConfigDict:
  return spoken_digits.get_config()


def models() -> list[dict]:
  """The five models, as overrides of configs/spoken_digits.py."""
  dense = {"model.name": "dense", "model.dense_features": (64,)}
  over_time = {
    "data.layout": "sequence",
    "model.name": "convnet",
    "model.conv.features": (64, 128, 128),
    "model.conv.kernel_size": 5,
    "model.pool.type": ("max", "max", "none"),
    "model.head": "global_avg",
    "model.dense_features": (64,),
  }
  return [
    dense,
    dense | MASKS,
    {"model.name": "convnet", "model.dense_features": (64,)},
    over_time,
    over_time | MASKS,
  ]


def sweep():
  data = axis("data.name", ["spoken_digits", "spoken_digits_noisy"])
  return product(data, models(), axis("seed", range(5)))
