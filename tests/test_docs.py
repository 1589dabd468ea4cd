"""The docs as written: every page's links, named paths, code blocks and command lines.

The pages are README.md, docs/*.md and results/README.md. Python blocks must parse and shell
blocks pass `bash -n`; links, images and the repository paths named in backticks must exist;
every `python -m convnet.X ...` line is parsed by that program's own flag definitions (each
flag known, each value valid, each config or sweep file loaded with its overrides) without
running it. The cheap commands run as written here; the quick start's training, figures and
export run as written in the slow tier.
"""

from __future__ import annotations

import ast
import glob
import importlib
import json
import os
import re
import shlex
import subprocess
import sys

import pytest
from absl import flags

from convnet import cli
from tests.conftest import REPO, cpu_env

PAGES = sorted(
  os.path.relpath(path, REPO)
  for path in [
    os.path.join(REPO, "README.md"),
    os.path.join(REPO, "results", "README.md"),
    *glob.glob(os.path.join(REPO, "docs", "*.md")),
  ]
)
LANGUAGES = {"python", "sh", "yaml", ""}  # "" is a program's output, shown as it prints
PATH_ROOTS = ("results/", "configs/", "scripts/", "convnet/", "docs/", "tests/")
# Paths a page names that are not in the repository on purpose: the file a reader writes.
NOT_IN_THE_REPOSITORY = {"convnet/sources/noisy_bars.py"}
# Values that stand in for a command line's placeholders, and the shell variables of examples.
PLACEHOLDERS = {"DIR": "/tmp/convnet-docs-dir", "SWEEP_DIR": "/tmp/convnet-docs-dir", "N": "2"}
SHELL_VARIABLES = {
  "i": "0",
  "SLURM_ARRAY_TASK_ID": "0",
  "SLURM_ARRAY_TASK_COUNT": "8",
  "SLURM_SUBMIT_DIR": ".",
  "job": "1",
  "JOB_COMPLETION_INDEX": "0",
}
# The programs a page runs with `python -m`, each with a `define_flags(flag_values)`;
# `convnet.configs` takes no flags, and runs in `test_the_cheap_commands_run_as_written`.
NO_FLAGS = {"convnet.configs"}
POSITIONAL = {"convnet.report": 1, "convnet.invariance": 1}  # the sweep (or run) directory


def _read(page: str) -> str:
  with open(os.path.join(REPO, page)) as f:
    return f.read()


def _blocks(text: str) -> list[tuple[str, str]]:
  """The fenced blocks of a page: (language, code)."""
  return re.findall(r"^```(\w*)\n(.*?)^```[ \t]*$", text, re.DOTALL | re.MULTILINE)


def _prose(text: str) -> str:
  """The page without its fenced blocks."""
  return re.sub(r"^```\w*\n.*?^```[ \t]*$", "", text, flags=re.DOTALL | re.MULTILINE)


def _inline_code(text: str) -> list[str]:
  """The inline code spans of a page's prose, a span's line breaks made spaces."""
  return [" ".join(span.split()) for span in re.findall(r"`([^`]+)`", _prose(text))]


def _slug(heading: str) -> str:
  """GitHub's anchor for a heading: lower case, punctuation dropped, spaces made hyphens."""
  text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
  return text.replace(" ", "-")


def _anchors(page: str) -> set[str]:
  anchors, seen = set(), {}
  for heading in re.findall(r"^#{1,6} (.+)$", _prose(_read(page)), re.MULTILINE):
    slug = _slug(heading)
    anchors.add(slug if slug not in seen else f"{slug}-{seen[slug]}")
    seen[slug] = seen.get(slug, 0) + 1
  return anchors


def _links(text: str) -> list[str]:
  """The targets of a page's Markdown links and images, outside code."""
  prose = re.sub(r"`[^`]*`", "", _prose(text))
  return re.findall(r"\]\(([^)\s]+)\)", prose)


def test_every_block_is_python_shell_or_output():
  for page in PAGES:
    for language, _ in _blocks(_read(page)):
      assert language in LANGUAGES, f"{page}: a ```{language} block; use python, sh or none"


@pytest.mark.parametrize("page", PAGES)
def test_every_python_block_parses(page):
  for language, code in _blocks(_read(page)):
    if language == "python":
      # A registry line is shown as it sits in its dict: parsed as an entry of one.
      entry = re.fullmatch(r"\s+(\"[^\n]*\",)\n", code)
      try:
        ast.parse("{" + entry[1] + "}" if entry else code)
      except SyntaxError as e:
        pytest.fail(f"{page}: a Python block does not parse: {e}\n{code}")


def test_every_shell_block_parses():
  for page in PAGES:
    for language, code in _blocks(_read(page)):
      if language == "sh":
        done = subprocess.run(["bash", "-n"], input=code, capture_output=True, text=True)
        assert done.returncode == 0, f"{page}: a sh block does not parse: {done.stderr}\n{code}"


def test_every_yaml_block_parses():
  yaml = pytest.importorskip("yaml")
  blocks = [(p, c) for p in PAGES for lang, c in _blocks(_read(p)) if lang == "yaml"]
  assert blocks, "no page has a yaml block: this test checks nothing"
  for page, code in blocks:
    try:
      yaml.safe_load(code)
    except yaml.YAMLError as e:
      pytest.fail(f"{page}: a yaml block does not parse: {e}\n{code}")


def test_every_server_a_page_starts_listens_on_this_machine_only():
  # `http.server` binds every interface unless told otherwise: the page's folder (a trained
  # model and test images) would be served to the whole network.
  servers = [
    (page, line)
    for page in PAGES
    for language, code in _blocks(_read(page))
    if language == "sh"
    for line in code.splitlines()
    if "http.server" in line
  ]
  assert servers, "no page starts a server: this test checks nothing"
  for page, line in servers:
    assert "--bind 127.0.0.1" in line, f"{page}: {line}"


def test_every_link_and_image_resolves():
  problems = []
  for page in PAGES:
    folder = os.path.dirname(os.path.join(REPO, page))
    for target in _links(_read(page)):
      if re.match(r"[a-z]+:", target):  # http:, https:, mailto:
        continue
      path, _, anchor = target.partition("#")
      full = os.path.normpath(os.path.join(folder, path)) if path else os.path.join(REPO, page)
      if not os.path.exists(full):
        problems.append(f"{page}: ({target}) is not a file or folder")
      elif anchor and full.endswith(".md"):
        if anchor not in _anchors(os.path.relpath(full, REPO)):
          problems.append(f"{page}: ({target}) names no heading of {os.path.relpath(full, REPO)}")
  assert not problems, "\n".join(problems)


def test_every_docs_page_is_linked_from_the_readme():
  linked = {os.path.normpath(t.partition("#")[0]) for t in _links(_read("README.md"))}
  pages = {os.path.relpath(p, REPO) for p in glob.glob(os.path.join(REPO, "docs", "*.md"))}
  assert pages <= linked, f"not linked from README.md: {sorted(pages - linked)}"


def _named_paths(text: str) -> list[str]:
  """Repository paths in a page's inline code and shell blocks, flag names and values split."""
  words = []
  for span in _inline_code(text) + [c for lang, c in _blocks(text) if lang == "sh"]:
    for word in span.split():
      word = word.strip("'\"(),;")
      words.append(word.partition("=")[2] if "=" in word else word)  # a flag's value
  return [w for w in words if w.startswith(PATH_ROOTS)]


def _is_placeholder(part: str) -> bool:
  return bool(re.fullmatch(r"[A-Z][A-Z_]*|.*[<>{}].*", part))


def test_every_named_path_exists():
  problems = []
  for page in PAGES:
    for path in _named_paths(_read(page)):
      if path in NOT_IN_THE_REPOSITORY or "|" in path:
        continue
      parts = path.rstrip("/").split("/")
      known = next((i for i, part in enumerate(parts) if _is_placeholder(part)), len(parts))
      pattern = os.path.join(REPO, *parts[:known])
      if not glob.glob(pattern):
        problems.append(f"{page}: `{path}` does not exist")
  assert not problems, "\n".join(problems)


# ----------------------------------------------------------------------------
# Command lines


def _shell_lines(code: str) -> list[str]:
  """A shell block's lines, continuations joined and comments dropped."""
  code = code.replace("\\\n", " ")
  return [line.split(" #", 1)[0].strip() for line in code.splitlines() if line.strip()]


def _substitute(line: str) -> str:
  def value(match):
    name = match[1] or match[2]
    assert name in SHELL_VARIABLES, f"no example value for ${name} in: {line}"
    return SHELL_VARIABLES[name]

  return re.sub(r"\$\{(\w+)\}|\$(\w+)", value, line)


def _commands(line: str) -> list[tuple[str, list[str]]]:
  """The `python -m MODULE args` and `python scripts/X.py args` in a line: (program, args).

  A quoted argument that holds a whole command (`--wrap="python -m ..."`) is searched too;
  bracketed optional parts (`[--shard=i/n]`) are left out.
  """
  lexer = shlex.shlex(_substitute(line), posix=True, punctuation_chars=True)
  lexer.whitespace_split = True
  tokens = list(lexer)
  found = []
  for i, token in enumerate(tokens):
    if "python -m " in token and token != "python":  # a command inside a quoted argument
      found += _commands(token.split("=", 1)[-1])
    if token not in ("python", "python3"):
      continue
    if tokens[i + 1 : i + 2] == ["-m"] and i + 2 < len(tokens):
      program, start = tokens[i + 2], i + 3
    elif i + 1 < len(tokens) and tokens[i + 1].startswith("scripts/"):
      program, start = tokens[i + 1], i + 2
    else:
      continue
    args, optional = [], False
    for arg in tokens[start:]:
      if arg in ("&&", "||", ";", "&", "|", ")", "(") or arg.startswith("#"):
        break
      optional = optional or arg.startswith("[")
      if not optional:
        args.append(PLACEHOLDERS.get(arg, arg))
      optional = optional and not arg.endswith("]")
    found.append((program, args))
  return found


def _page_commands() -> list[tuple[str, str, list[str], bool]]:
  """Every command of every page: (page, program, args, whether it is in a shell block)."""
  commands = []
  for page in PAGES:
    text = _read(page)
    for language, code in _blocks(text):
      if language in ("sh", "yaml"):  # a YAML block: a container's command, one line
        for line in _shell_lines(code):
          commands += [(page, p, a, True) for p, a in _commands(line)]
    for span in _inline_code(text):
      if span.startswith(("python ", "python3 ")) or " python " in span:
        # A program named without arguments (`python -m convnet.export`) is a reference.
        commands += [(page, p, a, False) for p, a in _commands(span) if a]
  return commands


def _parse(program: str, args: list[str], capsys, monkeypatch) -> list[str]:
  """Parses `args` as `program` does, into fresh flags; the arguments that are not flags."""
  module = importlib.import_module(program)
  flag_values = flags.FlagValues()
  module.define_flags(flag_values)
  argv = [program, *args]
  monkeypatch.setattr(sys, "argv", argv)  # where ml_collections reads --config.x overrides
  try:
    rest = cli.parse_flags(argv, flag_values)
  except SystemExit:
    pytest.fail(f"python -m {program} {shlex.join(args)}: {capsys.readouterr().err.strip()}")
  return rest


def _defines(script: str, flag: str) -> bool:
  """Whether the script's source defines the flag `flag`: an absl flag or an argparse option."""
  with open(os.path.join(REPO, script)) as f:
    source = f.read()
  absl = rf"(DEFINE_\w+\(|\(\"\w+\", )\s*\"{re.escape(flag)}\""
  argparse = rf"add_argument\(\s*\"--{re.escape(flag)}\""
  return re.search(f"{absl}|{argparse}", source) is not None


def _sweeps_script_lines() -> list[tuple[str, list[str]]]:
  """Every `[VAR=...] scripts/sweeps.sh DATASET ...` of every page: (page, its words)."""
  lines = []
  for page in PAGES:
    text = _read(page)
    spans = _inline_code(text)
    for language, code in _blocks(text):
      spans += _shell_lines(code) if language == "sh" else []
    for span in spans:
      words = shlex.split(span)
      named = "scripts/sweeps.sh" in words and words[-1] != "scripts/sweeps.sh"
      if named and "|" not in span:  # a command, not the script's name or its usage line
        lines.append((page, words))
  return lines


def test_every_sweeps_script_line_names_real_sweeps_and_overrides(capsys, monkeypatch):
  # `scripts/sweeps.sh DATASET [RUNS_DIR] [--sweep.FIELD=VALUE ...]`: the dataset is one the
  # script knows, SWEEPS names shipped sweeps, and the overrides parse on each sweep it runs.
  monkeypatch.chdir(REPO)
  with open(os.path.join(REPO, "scripts", "sweeps.sh")) as f:
    script = f.read()
  usage = re.search(r"usage: scripts/sweeps.sh (\S+)", script)[1].split("|")
  lines = _sweeps_script_lines()
  assert len(lines) >= 8
  for page, words in lines:
    at = words.index("scripts/sweeps.sh")
    env = dict(w.split("=", 1) for w in words[:at])
    dataset, rest = words[at + 1], words[at + 2 :]
    assert dataset in usage, f"{page}: scripts/sweeps.sh has no dataset {dataset}"
    own = [dataset] if dataset in ("spoken_digits", "shapes3d") else None
    default = own or re.search(r"sweeps=\$\{SWEEPS:-([^}]*)\}", script)[1].split()
    for sweep in env.get("SWEEPS", " ".join(default)).split():
      path = f"configs/sweeps/{sweep}.py"
      assert os.path.isfile(path), f"{page}: SWEEPS names {sweep}, which is not a sweep"
      overrides = [w for w in rest if w.startswith("--")]
      _parse(
        "convnet.sweep", [f"--sweep={path}", "--workdir=/tmp/x", *overrides], capsys, monkeypatch
      )


def test_the_pages_have_commands_to_check():
  programs = {program for _, program, _, _ in _page_commands()}
  assert {"convnet.main", "convnet.sweep", "convnet.report", "convnet.export"} <= programs


def test_every_command_line_parses(capsys, monkeypatch):
  monkeypatch.chdir(REPO)  # the pages' commands run from the repository root
  for page, program, args, in_block in _page_commands():
    if program.startswith("scripts/"):
      assert os.path.isfile(os.path.join(REPO, program)), f"{page}: no {program}"
      for arg in args:
        if arg.startswith("--"):
          name = arg[2:].split("=", 1)[0]
          assert _defines(program, name), f"{page}: {program} has no flag --{name}"
      continue
    if not program.startswith("convnet.") or program in NO_FLAGS:
      continue
    flag_values = flags.FlagValues()
    importlib.import_module(program).define_flags(flag_values)
    if not in_block and "workdir" in flag_values and not any("--workdir" in a for a in args):
      args = [*args, f"--workdir={PLACEHOLDERS['DIR']}"]  # "add --workdir=DIR", the page says
    rest = _parse(program, args, capsys, monkeypatch)
    expected = POSITIONAL.get(program, 0)
    assert len(rest) - 1 == expected, f"{page}: python -m {program} {shlex.join(args)}: {rest[1:]}"


def test_every_config_override_in_the_prose_parses(capsys, monkeypatch):
  # The overrides the pages give as examples, such as --config.model.conv.kernel_size='(5, 5)',
  # each on the book's config as `convnet.main` parses them.
  monkeypatch.chdir(REPO)
  overrides = []
  for page in PAGES:
    for span in _inline_code(_read(page)):
      if span.startswith("--config.") and "FIELD" not in span:
        overrides += [a for a in shlex.split(span) if a.startswith("--config.")]
  assert len(overrides) > 10
  for override in overrides:
    name, _, value = override.partition("=")
    argv = [
      "--config=configs/mnist.py",
      "--workdir=/tmp/x",
      f"{name}={PLACEHOLDERS.get(value, value)}",
    ]
    _parse("convnet.main", argv, capsys, monkeypatch)


# ----------------------------------------------------------------------------
# Commands run as written


def _block_with(page: str, needle: str) -> str:
  blocks = [code for language, code in _blocks(_read(page)) if needle in code]
  assert blocks, f"{page} has no block with {needle!r}"
  return blocks[0]


def _run(line: str, **replacements) -> subprocess.CompletedProcess:
  """Runs a page's command line from the repository root, with this interpreter's python."""
  for old, new in replacements.items():
    line = line.replace(old, new)
  argv = shlex.split(line)
  assert argv[0] == "python", line
  return subprocess.run(
    [sys.executable, *argv[1:]], cwd=REPO, capture_output=True, text=True, env=cpu_env()
  )


def test_the_cheap_commands_run_as_written():
  lines = [
    *_shell_lines(_block_with("docs/interpretation.md", "convnet.summary")),
    *_shell_lines(_block_with("docs/training.md", "python -m convnet.configs")),
  ]
  lines = [line for line in lines if "convnet.visualize" not in line]  # that one needs a run
  assert len(lines) == 3, lines
  processes = {
    line: subprocess.Popen(
      [sys.executable, *shlex.split(line)[1:]],
      cwd=REPO,
      stdout=subprocess.PIPE,
      stderr=subprocess.PIPE,
      text=True,
      env=cpu_env(),
    )
    for line in lines
  }
  outputs = {}
  for line, process in processes.items():
    out, err = process.communicate(timeout=120)
    assert process.returncode == 0, f"{line}: {err[-2000:]}"
    outputs[line] = out
  summary, counts, listing = (outputs[line] for line in lines)
  # The layer table the page shows is the one the command prints.
  table = next(code for lang, code in _blocks(_read("docs/interpretation.md")) if lang == "")
  for row in table.strip().splitlines():
    assert row in summary, f"docs/interpretation.md's layer table: {row!r} is not printed"
  assert "33,194" in counts and "33,400" in counts
  # Every config the training page lists is one that `python -m convnet.configs` lists.
  training = _read("docs/training.md").split("## Configs by name", 1)[1].split("\n## ", 1)[0]
  named = re.findall(r"^\| `(\w+)\.py`(?:, `(\w+)\.py`)?", training, re.MULTILINE)
  names = {n for pair in named for n in pair if n}
  assert len(names) >= 9
  listed = set(re.findall(r"^  (\w+)\s", listing, re.MULTILINE))
  assert names <= listed, f"not listed by python -m convnet.configs: {names - listed}"


@pytest.mark.slow  # about 3 minutes on 2 vCPUs: 10 epochs of two models, figures, ONNX
def test_the_quick_start_runs_as_written(tmp_path):
  (install_and_train,) = _shell_lines(_block_with("README.md", "pip install"))
  train = "python -m convnet.main" + install_and_train.split("python -m convnet.main", 1)[1]
  workdir = "runs/mnist_5k"
  assert f"--workdir={workdir} " in train
  moved = {workdir: str(tmp_path / "mnist_5k")}
  done = _run(train, **moved)
  assert done.returncode == 0, done.stderr[-3000:]
  with open(tmp_path / "mnist_5k" / "metrics.jsonl") as f:
    last = [json.loads(line) for line in f if '"epoch"' in line][-1]
  assert last["epoch"] == 10 and last["test_accuracy"] > 0.9, last

  # Then the figures and the export the README runs on that workdir, and Export's ONNX snippet.
  for line in _shell_lines(_block_with("README.md", "convnet.visualize")):
    done = _run(line, **moved)
    assert done.returncode == 0, f"{line}: {done.stderr[-3000:]}"
  assert (tmp_path / "mnist_5k" / "figures" / "curves.png").exists()
  assert (tmp_path / "mnist_5k" / "onnx" / "model.onnx").exists()
  snippet = _block_with("docs/export.md", "onnxruntime.InferenceSession")
  snippet = snippet.replace(workdir, moved[workdir])
  done = subprocess.run(
    [sys.executable, "-c", snippet], cwd=tmp_path, capture_output=True, text=True, env=cpu_env()
  )
  assert done.returncode == 0, done.stderr[-3000:]
  assert done.stdout.strip() == "(1, 10)"

  # The interpretation page's figures, and its dense baseline beside the convnet.
  for line in _shell_lines(_block_with("docs/interpretation.md", "--compare=")):
    done = _run(line, **moved)  # runs/mnist_5k_dense goes beside runs/mnist_5k
    assert done.returncode == 0, f"{line}: {done.stderr[-3000:]}"
  figures = tmp_path / "mnist_5k" / "figures"
  assert (figures / "occlusion.json").exists() and (figures / "embedding_comparison.png").exists()
