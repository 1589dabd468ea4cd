r"""The first convnet of "Deep Learning with JavaScript", section 4.2, on MNIST.

conv 16@3x3 relu, max-pool 2/2, conv 32@3x3 relu, max-pool 2/2, conv 32@3x3
relu, flatten, dense 64 relu, dense 10: 33,194 parameters. RMSprop, as in the
book, with 15% of the training images held out for validation.

  python -m convnet.main --config=configs/mnist.py --workdir=runs/mnist

TFDS downloads MNIST once. Offline, on the 5,000 digits shipped in the package:

  python -m convnet.main --config=configs/mnist.py --workdir=runs/mnist_5k \
      --config.data.source=embedded

Measured (docs/findings.md, single runs): on the 5,000 embedded digits, 94.60%
test accuracy after 10 epochs (95.10% at the best validation epoch), 8.1 s on 2
vCPUs, 2026-11-27; 94.50% (95.10%) on 2026-11-30 and 94.10% (95.10%) on 2026-12-07, on
CPUs with AVX-512, where float rounding differs.
"""

import os

import ml_collections


def one_or_many(value) -> ml_collections.FieldReference:
  """A model field that holds one value or a tuple of them, from the command line too.

  `--config.FIELD=V` is parsed as the type of the field's default, so a field
  whose default is `3` would refuse `'((5, 5), 3, 3)'`; a field typed `object`
  takes any Python literal (`5`, `'((5, 5), 3, 3)'`, `SAME`), and
  `convnet.model_config` checks what it gets.
  """
  return ml_collections.FieldReference(value, field_type=object)


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.seed = 0

  config.data = ml_collections.ConfigDict()
  config.data.source = "tfds"  # "tfds", "idx", "embedded", "mnist1d", "spoken_digits", "shapes3d"
  config.data.name = "mnist"  # the TFDS dataset
  config.data.tfds_data_dir = os.environ.get("TFDS_DATA_DIR", "")  # "": TFDS's default
  config.data.tfds_manual_dir = ""  # IDX files to prepare `name` from, with no download
  config.data.idx_dir = os.environ.get("CONVNET_IDX_DIR", "")
  config.data.train_split = "train"
  config.data.test_split = "test"
  config.data.validation_fraction = 0.15
  config.data.num_train = 0  # 0: every training example; N: N of them, nested across N by seed
  config.data.num_validation = 0  # 0: the whole validation split; V: V of it, nested by seed
  config.data.features = "pixels"  # or "pca", "top_variance": for the dense model
  config.data.num_features = 0  # components or pixels kept by "pca" and "top_variance"
  config.data.layout = "image"  # or "sequence": (rows, columns, 1) as columns of `rows` channels
  config.data.permute_pixels = 0  # N > 0: one fixed permutation of the positions, drawn from N
  # data.source="canvas": each image of `base` at a random place on a size x size canvas, over
  # `clutter` pieces cut from other images (convnet/sources/canvas.py); positions drawn by `seed`.
  config.data.canvas = ml_collections.ConfigDict()
  config.data.canvas.base = "idx"  # a source of 2D images: "idx" (data.idx_dir), "embedded", ...
  config.data.canvas.size = 56
  config.data.canvas.clutter = 0
  config.data.canvas.seed = 0

  # One value for every block, or a tuple with one value per block (see
  # model_config.conv_blocks). Sizes are ints or tuples with one entry per spatial axis.
  # These fields take either form from the command line too (see `one_or_many`).
  config.model = ml_collections.ConfigDict(type_safe=False)
  config.model.name = "convnet"  # or "dense"
  config.model.conv = ml_collections.ConfigDict(type_safe=False)
  config.model.conv.features = one_or_many((16, 32, 32))
  config.model.conv.kernel_size = one_or_many(3)
  config.model.conv.strides = one_or_many(1)
  config.model.conv.padding = one_or_many("VALID")  # "VALID", "SAME", or explicit amounts
  config.model.conv.activation = one_or_many("relu")
  config.model.pool = ml_collections.ConfigDict(type_safe=False)
  config.model.pool.type = one_or_many(("max", "max", "none"))  # "max", "avg" or "none"
  config.model.pool.window = one_or_many(2)
  config.model.pool.strides = one_or_many(2)
  config.model.pool.padding = one_or_many("VALID")
  config.model.head = "flatten"  # or "global_avg", "global_max"
  config.model.dense_features = one_or_many((64,))
  config.model.dense_activation = "relu"
  config.model.implementation = "matmul"  # or "lax": same function, slower on CPU
  # The dots' compute dtype: "float32" or "bfloat16" (mixed precision: parameters, optimizer
  # state, loss and metrics stay float32). See docs/performance.md for when bfloat16 pays.
  config.model.dtype = "float32"

  config.optimizer = ml_collections.ConfigDict()
  config.optimizer.name = "rmsprop"  # "rmsprop", "adam" or "sgd"
  config.optimizer.learning_rate = 1e-3
  config.optimizer.schedule = "constant"  # "constant", "cosine" or "warmup_cosine"
  config.optimizer.warmup_epochs = 0.0
  config.optimizer.momentum = 0.0  # for rmsprop and sgd
  config.optimizer.rmsprop_decay = 0.9

  config.batch_size = 128
  config.steps_per_call = 8  # train steps per dispatch to the device
  config.microbatch_size = 64  # examples per forward/backward pass; 0: the whole batch
  config.mesh_shape = -1  # devices the batches are split across; -1: all of them
  config.eval_batch_size = 1024
  config.num_epochs = 10
  config.steps_per_epoch = 0  # 0: one pass over the training data; N: N steps, in passes
  config.max_steps = -1  # stop after this many steps; -1 for no limit
  config.label_smoothing = 0.0
  config.l1_penalty = 0.0  # times the sum of |kernel weights|, added to the loss
  # SpecAugment's masks on training examples (convnet/augment.py): bands of up to `..._width`
  # consecutive time steps (columns) or frequencies (rows, or a sequence's channels) set to 0.
  config.augment = ml_collections.ConfigDict()
  config.augment.time_masks = 0
  config.augment.time_mask_width = 0
  config.augment.freq_masks = 0
  config.augment.freq_mask_width = 0
  config.log_every_steps = 100
  config.checkpoint_every_steps = 0  # 0: at the end of every epoch only
  config.profile_steps = 0  # > 0: trace this many steps with jax.profiler into WORKDIR/profile
  config.checkpoint_keep = 2
  # Stop a run once validation accuracy stops improving (docs/training.md, "Early stopping").
  config.early_stopping = ml_collections.ConfigDict()
  config.early_stopping.patience = 0  # epochs without improvement before it stops; 0: never
  config.early_stopping.min_delta = 0.0  # what counts as an improvement, in accuracy (0.001: 0.1%)
  return config
