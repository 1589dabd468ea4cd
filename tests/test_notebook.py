"""docs/quickstart.ipynb: committed without outputs, run in this environment's Python by nbmake."""

import hashlib
import os
import subprocess
import sys

import nbformat
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOK = os.path.join(REPO, "docs", "quickstart.ipynb")


def _code_cells():
  notebook = nbformat.read(NOTEBOOK, as_version=4)
  nbformat.validate(notebook)
  return notebook, [cell for cell in notebook.cells if cell.cell_type == "code"]


def test_the_notebook_is_committed_without_outputs():
  _, cells = _code_cells()
  assert cells, "the notebook has no code"
  with_outputs = [i for i, cell in enumerate(cells) if cell.outputs]
  counted = [i for i, cell in enumerate(cells) if cell.execution_count is not None]
  assert not with_outputs and not counted, (
    f"code cells {with_outputs or counted} hold outputs or execution counts: clear them "
    "(jupyter nbconvert --clear-output --inplace docs/quickstart.ipynb)"
  )


def test_the_notebook_trains_both_models_offline_on_the_embedded_digits():
  _, cells = _code_cells()
  code = "\n".join(cell.source for cell in cells)
  assert "from convnet.configs import dense, mnist" in code
  assert 'config.data.source = "embedded"' in code
  assert "train.train_and_evaluate(" in code and "tempfile.mkdtemp(" in code


def test_its_kernel_is_this_python():
  # nbmake starts the kernel the notebook names; jupyter_client runs "python3" as this interpreter.
  from jupyter_client.manager import KernelManager

  notebook, _ = _code_cells()
  name = notebook.metadata.kernelspec.name
  assert name == "python3"
  command = KernelManager(kernel_name=name).format_kernel_cmd()
  assert os.path.realpath(command[0]) == os.path.realpath(sys.executable), command


@pytest.mark.slow  # 20 to 45 s on 2 vCPUs: two short trainings and their figures
def test_the_notebook_runs(tmp_path):
  with open(NOTEBOOK, "rb") as f:
    before = hashlib.sha256(f.read()).hexdigest()
  env = dict(os.environ, CUDA_VISIBLE_DEVICES="", MPLBACKEND="Agg")
  command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--nbmake"]
  done = subprocess.run(
    [*command, "--nbmake-timeout=600", f"--rootdir={tmp_path}", NOTEBOOK],
    cwd=tmp_path,
    capture_output=True,
    text=True,
    env=env,
  )
  assert done.returncode == 0, done.stdout[-5000:] + done.stderr[-2000:]
  assert "1 passed" in done.stdout, done.stdout[-2000:]
  with open(NOTEBOOK, "rb") as f:
    assert hashlib.sha256(f.read()).hexdigest() == before, "running the notebook changed its file"
