"""scripts/sweeps.sh's own logic, with a stand-in `python` that records how it was called."""

import os
import stat
import subprocess

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(REPO, "scripts", "sweeps.sh")


@pytest.fixture
def fake_python(tmp_path):
  """A `python` that logs its arguments, one call a line, and exits with $FAKE_RC (default 0)."""
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  log = tmp_path / "calls.log"
  fake = bin_dir / "python"
  fake.write_text(f'#!/bin/sh\necho "$*" >> {log}\nexit "${{FAKE_RC:-0}}"\n')
  fake.chmod(fake.stat().st_mode | stat.S_IEXEC)

  def run(*args, cwd=tmp_path, **env):
    environ = dict(os.environ, PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}", **env)
    done = subprocess.run(
      [SCRIPT, *args], cwd=cwd, env=environ, capture_output=True, text=True, timeout=60
    )
    calls = log.read_text().splitlines() if log.exists() else []
    log.unlink(missing_ok=True)
    return done, calls

  return run


def test_no_dataset_is_a_usage_line(fake_python):
  done, calls = fake_python()
  assert done.returncode == 2 and calls == []
  assert done.stderr.strip().startswith("usage: scripts/sweeps.sh embedded|fashion_mnist")


def test_a_misspelt_sweep_is_named_with_the_sweeps_there_are_before_anything_runs(fake_python):
  done, calls = fake_python("embedded", SWEEPS="padding bogus")
  assert done.returncode == 2 and calls == []  # padding did not run either
  assert "SWEEPS: no sweep named bogus; the sweeps are:" in done.stderr
  assert "kernel_size" in done.stderr and len(done.stderr.strip().splitlines()) == 1


def test_flags_without_a_folder_are_flags_and_the_folder_defaults(fake_python):
  done, calls = fake_python("embedded", "--sweep.max_steps=1", SWEEPS="padding")
  assert done.returncode == 0, done.stderr
  (call,) = calls  # no records were written, so no report is made
  assert f"--workdir={REPO}/runs/sweeps/embedded/padding" in call
  assert call.endswith("--sweep.max_steps=1")


def test_relative_folders_are_the_callers(fake_python, tmp_path):
  done, calls = fake_python("embedded", "rel", SWEEPS="padding", RESULTS="res")
  assert done.returncode == 0, done.stderr
  assert f"--workdir={tmp_path}/rel/padding" in calls[0]


def test_a_failed_sweep_goes_on_to_the_next_and_a_signalled_one_stops_the_script(
  fake_python, tmp_path
):
  done, calls = fake_python("embedded", str(tmp_path / "r"), SWEEPS="padding stride", FAKE_RC="1")
  assert done.returncode == 1 and len(calls) == 2
  done, calls = fake_python("embedded", str(tmp_path / "r"), SWEEPS="padding stride", FAKE_RC="130")
  assert done.returncode == 130 and len(calls) == 1  # Ctrl-C: stride never starts


def test_runs_and_results_in_one_folder_keep_their_records(fake_python, tmp_path):
  records = tmp_path / "same" / "padding" / "records"
  records.mkdir(parents=True)
  (records / "cell.json").write_text("{}")
  (tmp_path / "same" / "padding" / "sweep.json").write_text("{}")
  done, calls = fake_python(
    "embedded", str(tmp_path / "same"), SWEEPS="padding", RESULTS=str(tmp_path / "same")
  )
  assert done.returncode == 0, done.stderr
  assert [c.split()[1] for c in calls] == ["convnet.sweep", "convnet.report"]
  assert (records / "cell.json").read_text() == "{}"


def test_the_report_is_made_and_the_records_copied_where_results_go(fake_python, tmp_path):
  records = tmp_path / "runs" / "kernel_size" / "records"
  records.mkdir(parents=True)
  (records / "cell.json").write_text("{}")
  (tmp_path / "runs" / "kernel_size" / "sweep.json").write_text("{}")
  stale = tmp_path / "res" / "kernel_size" / "records"
  stale.mkdir(parents=True)
  (stale / "old.json").write_text("{}")
  done, calls = fake_python("embedded", "runs", SWEEPS="kernel_size", RESULTS="res")
  assert done.returncode == 0, done.stderr
  assert calls[1].endswith(
    f"convnet.report {tmp_path}/runs/kernel_size --out={tmp_path}/res/kernel_size "
    "--reference=kernel_size=3"
  )
  assert sorted(os.listdir(stale)) == ["cell.json"]  # the copy replaces what was there
  assert (tmp_path / "res" / "kernel_size" / "sweep.json").exists()
