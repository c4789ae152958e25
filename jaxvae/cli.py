"""What every entry point shares: flags parsed without tracebacks, and one `error:` line per bad input.

  if __name__ == "__main__":
    jaxvae.cli.run(main)

Flag errors (absl's own, a stray argument) and every `errors.Error` become one
line `error: ...` on stderr and exit code 1 (2 for flags); SIGTERM and Ctrl-C
outside the training loop's safe points stop at once with exit code 128 +
signal and a line saying what to run (`loop.fit` checkpoints first; reports
and studies keep their finished sections); SIGHUP (a closed terminal) is
handled like SIGTERM. A further signal while the process shuts down is
ignored, so the exit code stays the one of the first.
"""

import dataclasses
import logging as std_logging
import pathlib
import signal
import sys
import types
from typing import Callable, Sequence

from absl import app
from absl import flags
from absl import logging

from jaxvae import loop
from jaxvae.errors import ConfigError, Error, Interrupted


def quiet_library_logs() -> None:
  """Drops INFO records of libraries (orbax logs every checkpoint step) from absl's handler."""
  own = (str(pathlib.Path(__file__).parent), "experiments")

  def keep(record):
    return record.levelno >= std_logging.WARNING or any(part in record.pathname for part in own)

  logging.get_absl_handler().addFilter(keep)


def define_flags(cls, helps: dict[str, str], choices: dict[str, Sequence[str]] | None = None,
                 defaults: dict | None = None) -> None:
  """Defines one absl flag per field of the settings dataclass `cls` that `helps` names, named
  like the field, with its default (or `defaults[name]`); `helps[name]` is its help,
  `choices[name]` makes it an enum. Fields without a help get no flag (see `config_from_flags`)."""
  choices, defaults = choices or {}, defaults or {}
  for field in dataclasses.fields(cls):
    name, default, kind = field.name, defaults.get(field.name, field.default), field.type
    if name not in helps:
      continue
    if isinstance(kind, types.UnionType):  # X | None
      kind = next(t for t in kind.__args__ if t is not type(None))
    help_text = helps[name]
    if name in choices:
      flags.DEFINE_enum(name, default, choices[name], help_text)
    elif kind is bool:
      flags.DEFINE_boolean(name, default, help_text)
    elif kind is int:
      flags.DEFINE_integer(name, default, help_text)
    elif kind is float:
      flags.DEFINE_float(name, default, help_text)
    elif kind is str:
      flags.DEFINE_string(name, default, help_text)
    else:  # tuple[int, ...]
      flags.DEFINE_list(name, [str(v) for v in default], help_text)


def config_from_flags(cls, **fixed):
  """The `cls` (see `define_flags`) whose every field is the flag of the same name, or the
  value in `fixed` (fields without a flag: the dataclass default)."""
  values = dict(fixed)
  for field in dataclasses.fields(cls):
    if field.name in fixed or field.name not in flags.FLAGS:
      continue
    value = flags.FLAGS[field.name].value
    if isinstance(value, list):  # tuple[int, ...]
      try:
        value = tuple(int(v) for v in value)
      except ValueError:
        raise ConfigError(f"--{field.name} must be integers separated by commas, got {','.join(value)}") from None
    values[field.name] = value
  return cls(**values)


def _parse_flags(argv: list[str]) -> list[str]:
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    print(f"error: {e} (see --help)", file=sys.stderr)
    sys.exit(2)


def run(main: Callable[[list[str]], None], positional: str | None = None) -> None:
  """`absl.app.run(main)` with jaxvae's error handling (see the module docstring).

  `positional`: the name of the one positional argument `main` takes (e.g.
  "SWEEP_DIR"); without it, positional arguments are refused.
  """

  def wrapped(argv):
    quiet_library_logs()
    if positional is None and len(argv) > 1:
      print(f"error: unexpected arguments: {' '.join(argv[1:])} (flags are --name=value; see --help)",
            file=sys.stderr)
      sys.exit(2)
    if positional is not None and len(argv) != 2:
      print(f"error: expected one argument, {positional}; got {len(argv) - 1}", file=sys.stderr)
      sys.exit(2)
    for signum in loop.SIGNALS:  # what the handlers below restore: signals while shutting down are ignored
      signal.signal(signum, signal.SIG_IGN)
    try:
      with loop.StopSignals(raise_now=True, message="stopped; every finished step is kept: run the same command "
                            "again to go on"):
        main(argv)
    except (Error, OSError) as e:
      print(f"error: {e}", file=sys.stderr)
      sys.exit(1)
    except Interrupted as e:
      print(e, file=sys.stderr)
      sys.exit(e.exit_code)
    except KeyboardInterrupt:
      print("error: interrupted; run the same command again", file=sys.stderr)
      sys.exit(130)

  app.run(wrapped, flags_parser=_parse_flags)
