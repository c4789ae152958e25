"""The workdir protocol of every entry point: a marker, a lock, refusals, `--overwrite`.

A directory jaxvae writes holds `jaxvae.json`, its marker, written before
anything else: `{"kind": ..., "format": 2}` plus what loading needs (the model
spec of a trained run). A run or study may use a directory that

* does not exist or is empty: it is created and marked;
* is marked with the same kind: a run resumes there (or reports its finished
  result), a study replaces its own outputs;

and refuses, with one error line and nothing changed, a path that is a file, a
non-empty directory without a marker (a directory jaxvae did not write) and a
directory of another kind. `--overwrite` deletes only the files a run of that
kind writes (`outputs`), the marker last, and never touches a foreign
directory. While a run works in a directory it holds an exclusive lock on
`<dir>/.lock` (`fcntl.flock`, released by the kernel even after `kill -9`): a
second process on the same directory is refused at once.

Directories written before the marker existed are recognised by a `legacy`
test of their files, so they still resume and load.
"""

import contextlib
import fcntl
import json
import os
import pathlib
import shutil
from typing import Callable, Iterable

from jaxvae.errors import WorkdirError

MARKER = "jaxvae.json"
LOCK = ".lock"
FORMAT = 2


def read_marker(directory) -> dict | None:
  """The marker of `directory`, or None when it has none (or an unreadable one)."""
  path = pathlib.Path(directory) / MARKER
  try:
    marker = json.loads(path.read_bytes().decode("utf-8"))
  except (OSError, UnicodeDecodeError, json.JSONDecodeError):
    return None
  return marker if isinstance(marker, dict) and isinstance(marker.get("kind"), str) else None


def write_json(path, value) -> None:
  """Writes `value` as JSON, atomically (temporary file, then rename)."""
  path = pathlib.Path(path)
  tmp = path.with_name(path.name + ".tmp")
  tmp.write_text(json.dumps(value, indent=2, sort_keys=True) + "\n")
  os.replace(tmp, path)


def read_json_object(path, what: str = "file") -> dict:
  """A JSON object from `path`; `WorkdirError` naming the file when it is unreadable or not an object."""
  try:
    value = json.loads(pathlib.Path(path).read_bytes().decode("utf-8"))
  except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
    raise WorkdirError(f"{path}: unreadable {what} ({type(e).__name__}: {str(e)[:120]})") from None
  if not isinstance(value, dict):
    raise WorkdirError(f"{path}: not a jaxvae {what} (not a JSON object)")
  return value


def _entries(directory: pathlib.Path) -> list[pathlib.Path]:
  return [p for p in directory.iterdir() if p.name != LOCK]


# What the training loop writes into every run's directory (`loop.fit`), for `--overwrite`.
RUN_OUTPUTS = ("checkpoints", "metrics.jsonl", "config.json", "events.out.tfevents.*", "rejected_checkpoints")


class Workdir:
  """One directory a run or study of `kind` writes into; see the module docstring.

  Use it as a context manager (the lock is released on exit):

    with Workdir(path, "cvae", outputs=(*RUN_OUTPUTS, "results.json"), config=settings) as wd:
      wd.check(overwrite)   # refusals; locks a directory that holds a run of this kind
      ...                   # load and check the data: nothing is written yet
      wd.open(overwrite)    # creates, locks, deletes the old outputs (overwrite), marks

  `outputs`: names (or glob patterns) of everything a run of this kind writes,
  for `--overwrite`. `config` (a JSON object): the run's settings; a directory
  whose config.json differs, but for the `resumable` names, is refused (after
  `normalize` of the saved object, e.g. to fill in fields added since).
  `legacy(path) -> bool`: whether an unmarked directory holds a run of this kind
  from before the marker; it resumes when `legacy_resumes`, else only
  `--overwrite` replaces it. `flag` names the directory in errors.
  `writer=False` (the other processes of a multi-process run) only checks.
  """

  def __init__(self, path, kind: str, outputs: Iterable[str] = (), legacy: Callable[[pathlib.Path], bool] | None = None,
               flag: str = "--workdir", marker_fields: dict | None = None, writer: bool = True,
               config: dict | None = None, resumable: Iterable[str] = (),
               normalize: Callable[[dict], dict] = lambda saved: saved, legacy_resumes: bool = True):
    self.path = pathlib.Path(path)
    self.kind = kind
    self.outputs = tuple(outputs)
    self.legacy = legacy
    self.name = f"{flag}={self.path}"
    self.marker_fields = dict(marker_fields or {})
    self.writer = writer
    self.config = config
    self.resumable = tuple(resumable)
    self.normalize = normalize
    self.legacy_resumes = legacy_resumes
    self._lock_file = None
    self._was_empty = False

  def __enter__(self) -> "Workdir":
    return self

  def __exit__(self, *exc) -> None:
    self.release()

  # Reading.
  def holds_run(self) -> bool:
    """Whether the directory holds a run of this kind (marked, or a legacy one)."""
    marker = read_marker(self.path)
    if marker is not None:
      return marker["kind"] == self.kind
    return self.path.is_dir() and self.legacy is not None and self.legacy(self.path)

  def check(self, overwrite: bool = False) -> None:
    """Refuses a file, a foreign directory or one of another kind (overwrite or not), and
    (without `overwrite`) a run with other settings; locks a directory that holds a run of
    this kind. Changes nothing on disk but the lock file."""
    path = self.path
    if path.exists() and not path.is_dir():
      raise WorkdirError(f"{self.name} exists and is not a directory")
    if not path.is_dir() or not _entries(path):
      self._was_empty = True
      return
    marker = read_marker(path)
    if marker is not None and marker["kind"] != self.kind:
      what = marker["kind"]
      if what == "replica":
        raise WorkdirError(f"{self.name} is one replica of the ensemble in {path.parent}; run the ensemble's "
                           "command there, or use another directory")
      raise WorkdirError(f"{self.name} holds a {what} run, not a {self.kind} one; use another directory "
                         "(--overwrite deletes only runs of its own kind)")
    if not self.holds_run():
      raise WorkdirError(f"{self.name} is not empty and holds no jaxvae {self.kind} run; use another directory "
                         "(nothing in it was changed)")
    if marker is None and not self.legacy_resumes and not overwrite:
      raise WorkdirError(f"{self.name} holds a {self.kind} from an earlier jaxvae (load it with jaxvae.load_model); "
                         "pass --overwrite to train a new one there")
    self._lock()
    if not overwrite and self.config is not None:
      self._check_config()

  def _check_config(self) -> None:
    path = self.path / "config.json"
    if not path.is_file():
      return
    saved = self.normalize(read_json_object(path, "config"))
    config = self.config
    changed = [f"{k}: {saved.get(k)!r} -> {config.get(k)!r}" for k in sorted(saved.keys() | config.keys())
               if k not in self.resumable and saved.get(k) != config.get(k)]
    if changed:
      raise WorkdirError(f"{self.path} holds a run with other settings ({'; '.join(changed)}); "
                         "use another directory, or --overwrite to replace that run")

  # Writing.
  def open(self, overwrite: bool = False) -> None:
    """Creates and locks the directory, checks it again under the lock, deletes the old
    outputs (`overwrite`) and writes the marker."""
    if not self.writer:
      return
    self.path.mkdir(parents=True, exist_ok=True)
    self._lock()
    if self._was_empty and _entries(self.path):
      raise WorkdirError(f"{self.name} was empty when this run started and another process has written into it "
                         "since; run the command again")
    self.check(overwrite)  # again, now that no other process can change it
    if overwrite and self.holds_run():
      self.remove_outputs()
    if read_marker(self.path) is None or overwrite:
      write_json(self.path / MARKER, {"kind": self.kind, "format": FORMAT, **self.marker_fields})

  def remove_outputs(self) -> None:
    """Deletes what a run of this kind wrote (the names in `outputs`), then the marker."""
    for pattern in self.outputs:
      for target in sorted(self.path.glob(pattern)):
        if target.is_dir() and not target.is_symlink():
          shutil.rmtree(target)
        else:
          target.unlink(missing_ok=True)
    (self.path / MARKER).unlink(missing_ok=True)

  def _lock(self) -> None:
    if self._lock_file is not None or not self.writer:
      return
    handle = open(self.path / LOCK, "a+", errors="replace")  # pylint: disable=consider-using-with
    try:
      fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
      if not isinstance(e, BlockingIOError):
        handle.close()
        raise WorkdirError(f"{self.name}: cannot lock {LOCK} ({e})") from None
      handle.seek(0)
      holder = handle.read().strip()[:20]
      handle.close()
      raise WorkdirError(f"{self.name} is in use by another process{f' (pid {holder})' if holder else ''}; "
                         "wait for it to finish, or use another directory") from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"{os.getpid()}\n")
    handle.flush()
    self._lock_file = handle

  def release(self) -> None:
    if self._lock_file is not None:
      with contextlib.suppress(OSError):
        self._lock_file.truncate(0)
      self._lock_file.close()  # closing releases the flock
      self._lock_file = None
