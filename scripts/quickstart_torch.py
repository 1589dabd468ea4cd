"""The quick start's job in PyTorch eager, to time beside `python -m convnet.main`.

The same job as `python -m convnet.main --config=configs/mnist.py
--config.data.source=embedded`: the 5,000 embedded digits with the same
validation split (`input_pipeline.load` of the config's `data`), the book's
convnet (`frameworks.torch_book_convnet`, 33,194 parameters), batch 128,
RMSprop at 1e-3 (decay 0.9), 10 epochs in a new order each, and validation
and test accuracy after every epoch. Needs PyTorch (the CPU build:
`pip install "torch==2.13.0+cpu"` where the index has it).

  python scripts/quickstart_torch.py
"""

import time

START = time.perf_counter()

import numpy as np  # noqa: E402
import torch  # noqa: E402

from convnet import frameworks, input_pipeline  # noqa: E402
from convnet.configs import mnist  # noqa: E402


def accuracy(model, split, batch_size: int = 1024) -> float:
  correct = 0
  with torch.no_grad():
    for start in range(0, len(split), batch_size):
      images = torch.from_numpy(split.images[start : start + batch_size]).permute(0, 3, 1, 2)
      labels = torch.from_numpy(split.labels[start : start + batch_size]).long()
      correct += int((model(images).argmax(-1) == labels).sum())
  return correct / len(split)


def main() -> None:
  config = mnist.get_config()
  config.data.source = "embedded"
  data = input_pipeline.load(config.data, config.seed)
  torch.manual_seed(config.seed)
  model = frameworks.torch_book_convnet()
  optimizer = torch.optim.RMSprop(
    model.parameters(), lr=config.optimizer.learning_rate, alpha=config.optimizer.rmsprop_decay
  )
  loss_fn = torch.nn.CrossEntropyLoss()
  images = torch.from_numpy(data.train.images).permute(0, 3, 1, 2).contiguous()
  labels = torch.from_numpy(data.train.labels).long()
  steps_per_epoch = len(labels) // config.batch_size
  for epoch in range(config.num_epochs):
    order = torch.from_numpy(np.random.default_rng([config.seed, epoch]).permutation(len(labels)))
    model.train()
    for step in range(steps_per_epoch):
      idx = order[step * config.batch_size : (step + 1) * config.batch_size]
      optimizer.zero_grad()
      loss = loss_fn(model(images[idx]), labels[idx])
      loss.backward()
      optimizer.step()
    model.eval()
    validation, test = accuracy(model, data.validation), accuracy(model, data.test)
    print(f"epoch {epoch + 1}: validation {validation:.4f} test {test:.4f}")
  print(f"whole process: {time.perf_counter() - START:.1f} s")


if __name__ == "__main__":
  main()
