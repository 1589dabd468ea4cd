"""What the command-line entry points share: flag parsing with one-line errors, and quiet logs.

Every entry point runs `app.run(main, flags_parser=cli.parse_flags)`: a
mistake on the command line (an unknown flag, a missing or malformed value, a
config file that is missing or raises, an override of a field the config
lacks) ends in one line, `error: ...`, naming the flag, field or file, and
exit status 2, as for any usage error; never in a traceback.

A config flag (`--config`, `--sweep`) takes a file's path or the name of an
installed config (`--config=mnist`, `--sweep=kernel_size`; see
`resolve_config_names`). JAX's probe of platforms that this machine lacks
stays out of the log (`logs.hide_platform_probes`).
"""

from __future__ import annotations

import contextlib
import difflib
import logging as python_logging
import os
import re
import sys
import traceback
from collections.abc import Iterator
from typing import NoReturn

from absl import flags
from ml_collections.config_flags import config_flags

from convnet import configs, logs

USAGE_ERROR = 2  # the exit status of a command-line mistake, as argparse's
_PACKAGE = os.path.dirname(os.path.abspath(__file__)) + os.sep
# The installed configs that each config flag takes by name; any other takes convnet.configs'.
CONFIG_PACKAGES = {"config": configs.CONFIGS, "sweep": configs.SWEEPS}


def usage_error(message: str) -> NoReturn:
  """Prints `error: message` on stderr and exits with status 2."""
  print(f"error: {message}", file=sys.stderr)
  sys.exit(USAGE_ERROR)


def exit_now(status: int = 0) -> NoReturn:
  """Ends this process with `status` at once, once what it wrote has left its buffers.

  For an entry point whose work is finished and saved (files closed, checkpoints waited
  for): flushes the log's handlers, stdout and stderr, waits for JAX's pending effects,
  then leaves without Python's teardown, which frees every module and JAX's backend
  (about half a second) and changes nothing on disk. Not for a process of a multi-host
  run, whose teardown tells the other processes that it is leaving: `sys.exit` there.
  """
  import jax

  jax.effects_barrier()
  python_logging.shutdown()  # flushes and closes every handler, absl's included
  for stream in (sys.stdout, sys.stderr):
    try:
      stream.flush()
    except (OSError, ValueError):  # a closed stream or a broken pipe: nothing more can go there
      pass
  os._exit(status)


def program() -> str:
  """How the user started this program: `python -m convnet.main`, or its script's name."""
  spec = getattr(sys.modules.get("__main__"), "__spec__", None)
  if spec is not None and spec.name:
    return f"python -m {spec.name.removesuffix('.__main__')}"
  return os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else "the program"


def accept_jax_flags() -> None:
  """Defines JAX's options as absl flags (`--jax_platforms=cpu`), once; `app.run` applies them."""
  import jax  # Here, not at the top: `convnet.report` needs JAX for nothing else.

  if not jax.config.use_absl:
    jax.config.config_with_absl()


def parse_flags(argv: list[str], flag_values: flags.FlagValues = flags.FLAGS) -> list[str]:
  """Parses flags as `app.run` does, JAX's included; any mistake is one line and exit status 2.

  Args:
    argv: the command line, the program's name first.
    flag_values: the flags to parse into; JAX's flags are only added to absl's
      global `flags.FLAGS`.

  Returns:
    The arguments that are not flags, the program's name first.
  """
  logs.hide_platform_probes()
  if flag_values is flags.FLAGS:
    accept_jax_flags()
  typed, argv = argv, resolve_config_names(argv, flag_values)
  files = config_files(argv, flag_values)
  try:
    with logs.muted("config_flags"):  # the error line says what its warnings would
      rest = flag_values(argv)
    _check_loaded(flag_values, files)
  except Exception as e:  # Anything the parsers or a config file raise is the user's to fix.
    usage_error(describe(e, typed, flag_values, files))
  return rest


def resolve_config_names(argv: list[str], flag_values: flags.FlagValues) -> list[str]:
  """`argv` with each config flag's installed config name replaced by the config's file.

  A config flag takes a file's path, or the name of an installed config:
  `--config=mnist` or `--config=convnet.configs.mnist`, `--sweep=kernel_size`
  (see `convnet.configs`), with an optional `:ARG` for `get_config(ARG)`. A
  path that exists wins over a name. A value that is neither is a usage error
  (one line, exit status 2) that lists the names.
  """
  argv = list(argv)
  for name, argument in config_files(argv, flag_values).items():
    path, colon, arg = argument.partition(":")
    if os.path.isfile(path):
      continue
    package = CONFIG_PACKAGES.get(name, configs.CONFIGS)
    found = configs.find(path, package)
    if found is None:
      usage_error(f"--{name}={argument}: {_not_a_config(path, package)}")
    _set_argument(argv, name, found + colon + arg)
  return argv


def define(
  flag_values: flags.FlagValues, specs: tuple[tuple, ...], required: tuple[str, ...] = ()
) -> None:
  """Defines an entry point's flags from (kind, name, default, help[, options]) rows.

  `kind` names absl's definer ("string", "integer", "bool", ...), or
  "config_file" for ml_collections' `DEFINE_config_file`; `options` is a dict
  of that definer's keyword arguments (`lower_bound=0`, say). The `required`
  flags must be given.
  """
  for kind, name, default, help_text, *options in specs:
    module = config_flags if kind == "config_file" else flags
    definer = getattr(module, f"DEFINE_{kind}")
    options = options[0] if options else {}
    help_name = "help_string" if kind == "config_file" else "help"  # enum's third is its values
    definer(name, default, flag_values=flag_values, **{help_name: help_text}, **options)
    _list_in_short_help(flag_values, name)
  if required:
    flags.mark_flags_as_required(list(required), flag_values=flag_values)


def define_config_flag(flag_values: flags.FlagValues) -> None:
  """`--config=FILE` (a config file with `get_config()`), with `--config.x=y` overrides."""
  config_flags.DEFINE_config_file(
    "config",
    None,
    "A config file, or an installed config's name (python -m convnet.configs lists them); "
    "override fields with --config.x=y.",
    flag_values=flag_values,
    lock_config=True,
  )
  _list_in_short_help(flag_values, "config")


def _list_in_short_help(flag_values: flags.FlagValues, name: str) -> None:
  """Lists flag `name` in `--helpshort`, which shows the flags of the program's own module.

  absl files a flag under the module that called its definer, which is this
  one; `--helpshort` lists those of the program (`sys.argv[0]`) only.
  """
  flag_values.register_key_flag_for_module(sys.argv[0], flag_values[name])


def start(argv: list[str], quiet: bool = True, compilation_cache: bool = True) -> None:
  """What every entry point's `main` does first.

  Refuses stray arguments, quiets Orbax's INFO lines (`quiet`), and keeps
  XLA's compiled programs on disk (`compilation_cache`, see
  `cache.enable_compilation_cache`). A stray argument is a usage error (one
  line, exit status 2); the likeliest is the second half of an unquoted value
  with a space, `--x=(5, 5)`.
  """
  if len(argv) > 1:
    hint = "flags take the form --name=value"
    if argv[1].endswith(")") or any(a.endswith(",") for a in argv):
      hint = "quote a value that holds spaces, e.g. --config.model.conv.kernel_size='(5, 5)'"
    usage_error(f"unexpected argument {argv[1]!r}: {hint}")
  if quiet:
    quiet_library_logs()
  if compilation_cache:
    from convnet import cache  # imports JAX, which the flag parsing above doesn't need

    cache.enable_compilation_cache()


class _LibraryInfoFilter(python_logging.Filter):
  """Keeps the libraries' INFO chatter (Orbax logs every file of a save) out of the log."""

  def filter(self, record: python_logging.LogRecord) -> bool:
    return record.levelno >= python_logging.WARNING or "/orbax/" not in record.pathname


def quiet_library_logs() -> None:
  """Drops Orbax's INFO lines from absl's log, whichever handler prints it (absl's, or Python's
  in a process that `app.run` did not start, such as a cluster's job)."""
  python_logging.getLogger("absl").addFilter(_LibraryInfoFilter())


def config_files(argv: list[str], flag_values: flags.FlagValues) -> dict[str, str]:
  """The config files named on the command line: {config flag's name: its argument}."""
  names = [name for name in flag_values if config_flags.is_config_flag(flag_values[name])]
  given = {name: _argument(argv, name) for name in names}
  return {name: value for name, value in given.items() if value is not None}


def describe(
  error: Exception,
  argv: list[str],
  flag_values: flags.FlagValues,
  loaded: dict[str, str] | None = None,
) -> str:
  """One line, without `error: `, that names what on the command line `error` is about.

  `loaded` maps each config flag to the file it loaded, where that is not what
  `argv` gives (an installed config's name); by default what `argv` gives.
  """
  files = config_files(argv, flag_values)
  loaded = files if loaded is None else loaded
  for name, argument in files.items():
    if _returned_none(flag_values, name):
      return f"--{name}={argument}: get_config() returned None; end it with `return config`"
  if files:
    name, argument = next(iter(files.items()))  # An entry point loads one config file.
    raised = _raised_in(error, loaded.get(name, argument).split(":", 1)[0])
    if raised:  # by the config file, or by code it runs
      return f"--{name}={argument}: {raised}; fix the file, or pick another"
  if isinstance(error, AttributeError) and getattr(error, "name", None) == "get_config":
    name, argument = next(iter(files.items()), ("config", "?"))
    return f"--{name}={argument}: the file has no get_config() function"
  if isinstance(error, flags.UnrecognizedFlagError):
    return _unknown_flag(error, flag_values)
  if isinstance(error, flags.IllegalFlagValueError):
    return _illegal_value(str(error), argv, flag_values)
  if isinstance(error, (AttributeError, KeyError)):
    return _no_such_field(error, argv)
  if isinstance(error, OSError) and files:
    name, argument = next(iter(files.items()))
    return f"--{name}={argument}: the file cannot be read ({_first_line(_root_cause(error))})"
  order = re.match(r"Found (\S+) in argv before a value for --(\S+) was", str(error))
  if isinstance(error, config_flags.FlagOrderError) and order:
    return f"{order[1]} comes before --{order[2]}=FILE: put the file first, then its overrides"
  missing_value = re.match(r"Missing value for flag (\S+)", str(error))
  if isinstance(error, flags.Error) and missing_value:
    return f"{missing_value[1]}: no value; write {missing_value[1]}=VALUE"
  if isinstance(error, flags.Error):
    return f"{_first_line(error)} ({program()} --helpshort lists the flags)"
  return f"{type(error).__name__}: {_first_line(error)}"


@contextlib.contextmanager
def errors_in_file(path: str, flag: str) -> Iterator[None]:
  """Turns an exception raised by code in the user's file `path` into one line naming `flag`."""
  try:
    yield
  except Exception as e:
    raised = _raised_in(e, path)
    if raised is None:
      raise
    usage_error(f"{flag}: {raised}; fix the file")


# ----------------------------------------------------------------------------
# The kinds of mistake


def _not_a_config(path: str, package: str) -> str:
  """What is wrong with `path`, neither a file nor an installed config's name in `package`."""
  names = configs.names(package)
  kind = "sweeps" if package == configs.SWEEPS else "configs"
  listing = f"the installed {kind}: {', '.join(names)} (python -m convnet.configs describes them)"
  if os.path.isdir(path):
    return f"is a directory; give a file, or name one of {listing}"
  if os.sep not in path and "/" not in path and not path.endswith(".py"):  # meant as a name
    close = difflib.get_close_matches(path.rsplit(".", 1)[-1], names, n=1)
    hint = f" (did you mean {close[0]}?)" if close else ""
    return f"no such file, nor an installed {kind[:-1]} of that name{hint}; {listing}"
  directory = os.path.dirname(path) or "."
  if os.path.isdir(directory):
    files = [n for n in os.listdir(directory) if n.endswith(".py") and not n.startswith("_")]
    close = difflib.get_close_matches(os.path.basename(path), files, n=1)
    if close:
      return f"no such file; did you mean {os.path.join(os.path.dirname(path), close[0])}?"
  return f"no such file; give a file, or name one of {listing}"


def _check_loaded(flag_values: flags.FlagValues, files: dict[str, str]) -> None:
  """Raises what ml_collections defers: a config file that could not be read, or no config."""
  for name in files:
    if _returned_none(flag_values, name):
      raise ValueError(f"--{name}: get_config() returned None")  # described by `describe`
    getattr(flag_values[name].value, "lock", None)  # An unreadable file raises its OSError here.


def _returned_none(flag_values: flags.FlagValues, name: str) -> bool:
  flag = flag_values[name] if name in flag_values else None
  return flag is not None and bool(flag.present) and flag.value is None


def _unknown_flag(error: flags.UnrecognizedFlagError, flag_values: flags.FlagValues) -> str:
  name = error.flagname
  shown = error.flagvalue if str(error.flagvalue).startswith("-") else f"--{name}"
  root = name.split(".", 1)[0]
  if "." in name and root in flag_values and config_flags.is_config_flag(flag_values[root]):
    return f"{shown}: an override of --{root}, which is not set; give --{root}=FILE first"
  field = _config_field(name, flag_values)
  close = re.search(r"Did you mean: ([^?]*)", str(error))
  close = " or ".join(f"--{n.strip()}" for n in close[1].split(",")) if close else ""
  close = f"--{field}" if field else close  # `--num_epochs` for `--config.num_epochs`
  hint = f" (did you mean {close}?)" if close else ""
  return f"{shown}: no such flag{hint}; {program()} --helpshort lists the flags"


def _config_field(name: str, flag_values: flags.FlagValues) -> str | None:
  """`config.num_epochs` where `name` is a field of a config flag's loaded config; else None."""
  for flag_name in flag_values:
    flag = flag_values[flag_name]
    if not config_flags.is_config_flag(flag) or flag.value is None:
      continue
    node = flag.value
    for part in name.split("."):
      node = node.get(part, None) if hasattr(node, "get") else None
      if node is None:
        break
    else:
      return f"{flag_name}.{name}"
  return None


_EXPECTED = {"int": "an int", "float": "a number", "bool": "true or false"}


def _illegal_value(text: str, argv: list[str], flag_values: flags.FlagValues) -> str:
  """An absl `IllegalFlagValueError`: a required flag missing, or a value its parser refused."""
  missing = re.findall(r"Flag --(\S+) must have a value other than None", text)
  if missing:
    flags_text = " and ".join(f"--{m}" for m in missing)
    return (
      f"{flags_text} {'is' if len(missing) == 1 else 'are'} required: give "
      f"{'it a value' if len(missing) == 1 else 'each a value'} "
      f"({program()} --helpshort lists the flags)"
    )
  match = re.match(r"flag --([^=\s]+)=", text)
  if not match:
    return _first_line(text)
  name, rest = match[1], text[match.end() :]
  value = _argument(argv, name)
  if value is not None and rest.startswith(f"{value}: "):
    reason = rest[len(value) + 2 :]
  else:  # A validator's message shows the parsed value, such as a list; show the argument.
    parsed, _, reason = rest.partition(": ")
    value = parsed if value is None else value
  if reason.startswith("Error whilst parsing config file"):  # ml_collections' wrapped traceback
    reason = reason.strip().splitlines()[-1]
  flag = flag_values[name] if name in flag_values else None
  kind = flag.parser.flag_type() if flag is not None else None
  if "as a ConfigDict" in reason:
    reason = f"{name.split('.', 1)[1]} is a group of fields; set one of them, e.g. --{name}.FIELD=V"
  elif kind in _EXPECTED and re.search(r"invalid literal|could not convert|Non-boolean", reason):
    default = f", like its default {flag.default!r}" if flag.default is not None else ""
    reason = f"expected {_EXPECTED[kind]}{default}"
  return f"--{name}={value}: {_first_line(reason)}"


def _no_such_field(error: Exception, argv: list[str]) -> str:
  """ml_collections' AttributeError or KeyError for `--config.data.sorce=x`."""
  text = str(error.args[0] if error.args else error).encode().decode("unicode_escape")
  key = re.match(r"\W*(\w+)", text)
  key = key[1] if key else text
  overrides = [a for a in argv[1:] if a.startswith("-") and "." in a.split("=")[0]]
  culprit = next((a for a in overrides if f".{key}" in a.split("=")[0]), " ".join(overrides))
  hint = re.search(r"Did you mean [^?]*\?", text)
  return f"{culprit}: the config has no field {key!r}{f'. {hint[0]}' if hint else ''}"


# ----------------------------------------------------------------------------
# Helpers


def _argument(argv: list[str], name: str) -> str | None:
  """The last value given to `--name` on the command line."""
  value = None
  for i, arg in enumerate(argv[1:], 1):
    match = re.fullmatch(rf"--?{re.escape(name)}(=(.*))?", arg, re.DOTALL)
    if match:
      value = match[2] if match[1] else (argv[i + 1] if i + 1 < len(argv) else None)
  return value


def _set_argument(argv: list[str], name: str, value: str) -> None:
  """Makes `value` the value of every `--name` in `argv`, in place."""
  for i, arg in enumerate(argv[1:], 1):
    match = re.fullmatch(rf"(--?{re.escape(name)})(=.*)?", arg, re.DOTALL)
    if match and match[2]:
      argv[i] = f"{match[1]}={value}"
    elif match and i + 1 < len(argv):
      argv[i + 1] = value


def _chain(error: BaseException) -> Iterator[BaseException]:
  """`error` and the exceptions it was raised from or during, deepest last."""
  seen = set()
  while error is not None and id(error) not in seen:
    seen.add(id(error))
    yield error
    error = error.__cause__ or error.__context__


def _root_cause(error: BaseException) -> BaseException:
  return list(_chain(error))[-1]


def _is_library(filename: str) -> bool:
  """Whether `filename` is Python's, an installed package's, or this package's own code."""
  return filename.startswith(("<", sys.base_prefix, sys.prefix, _PACKAGE)) or (
    "site-packages" in filename
  )


def _raised_in(error: BaseException, path: str | None = None) -> str | None:
  """What `error` says, and where, if user code raised it: the file `path`, or any file.

  User code is any file outside the libraries and this package: config and
  sweep files, and what they import. The place is a line of `path`, or another
  file's name and line.
  """
  for e in _chain(error):
    if isinstance(e, SyntaxError) and e.filename and not _is_library(e.filename):
      file, line, what = e.filename, e.lineno, e.msg
    else:
      frames = [f for f in traceback.extract_tb(e.__traceback__) if not _is_library(f.filename)]
      if not frames:
        continue
      file, line, what = frames[-1].filename, frames[-1].lineno, _first_line(e)
    if path is None or os.path.realpath(file) == os.path.realpath(path):
      return f"{type(e).__name__} at line {line}: {what}"
    return f"{type(e).__name__} at {_short_path(file)}, line {line}: {what}"
  return None


def _short_path(path: str) -> str:
  relative = os.path.relpath(path)
  return path if relative.startswith("..") else relative


def _first_line(error: BaseException | str) -> str:
  lines = str(error).strip().splitlines()
  return lines[0] if lines else type(error).__name__
