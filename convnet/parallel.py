"""Devices and hosts: the data-parallel mesh, its shardings, and multi-host start-up.

Training is data parallel over a one-axis mesh, `data`: every device holds the
parameters (replicated) and computes on its slice of each global batch; XLA
sums the gradients across devices. The same jitted steps run on one device or
many, in one process or several (`jax.distributed`); only the mesh changes.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from convnet.errors import ConfigError

DATA_AXIS = "data"


def create_mesh(mesh_shape: int = -1) -> Mesh:
  """A one-axis mesh over the first `mesh_shape` devices of every process; -1: all devices."""
  devices = jax.devices()
  if mesh_shape == -1:
    mesh_shape = len(devices)
  if not 1 <= mesh_shape <= len(devices):
    raise ConfigError(
      f"mesh_shape={mesh_shape!r}: use -1 (all {len(devices)} devices) or a number of devices "
      f"from 1 to {len(devices)}"
    )
  if mesh_shape % jax.process_count():
    raise ConfigError(
      f"mesh_shape={mesh_shape} does not divide among the {jax.process_count()} processes"
    )
  per_process = mesh_shape // jax.process_count()
  chosen = [
    d
    for p in range(jax.process_count())
    for d in [d for d in devices if d.process_index == p][:per_process]
  ]
  return Mesh(np.array(chosen), (DATA_AXIS,))


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Arrays split along their first (batch) axis across the mesh's devices."""
  return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
  """Arrays held whole by every device of the mesh."""
  return NamedSharding(mesh, PartitionSpec())


def check_batch_sizes(config: Mapping[str, Any], num_devices: int) -> None:
  """Every batch the devices share must split evenly among them."""
  for field in ("batch_size", "eval_batch_size", "microbatch_size"):
    value = config[field]
    if value % num_devices:
      raise ConfigError(
        f"{field}={value} does not split evenly across the mesh's {num_devices} devices; "
        f"use a multiple of {num_devices}, or set mesh_shape to a device count that divides it"
      )


def put(tree, sharding: NamedSharding):
  """Host arrays, the same in every process, as global arrays with `sharding`.

  Each process hands its own devices only their slices of each array.
  """

  def one(x):
    x = np.asarray(x)
    return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])

  return jax.tree.map(one, tree)


def is_main_process() -> bool:
  """Process 0 writes the config, metrics and events; every process writes checkpoints."""
  return jax.process_index() == 0


def initialize_distributed(
  coordinator_address: str | None = None,
  num_processes: int | None = None,
  process_id: int | None = None,
) -> None:
  """Joins the processes of a multi-host run (`jax.distributed.initialize`).

  With no arguments, JAX finds them on SLURM, Open MPI and TPU pods. On CPUs,
  the processes' collectives go through gloo.
  """
  jax.config.update("jax_cpu_collectives_implementation", "gloo")  # used by CPU devices only
  jax.distributed.initialize(
    coordinator_address=coordinator_address, num_processes=num_processes, process_id=process_id
  )
