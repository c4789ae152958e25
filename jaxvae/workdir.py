"""The workdir protocol of every writer: a marker, a lock, refusals, `--overwrite`, results put in place whole.

A directory jaxvae writes holds `jaxvae.json`, its marker, written before
anything else: `{"kind": ..., "format": 2}` plus what loading needs (the model
spec of a trained run). One rule, no exceptions: **a directory is jaxvae's only
if it holds jaxvae's marker of the right kind.** A writer (a run, a study, a
report, a summary, a sweep) may use a directory that

* does not exist or is empty: it is created and marked;
* is marked with its own kind (or a kind it writes beside, `accept`: a sweep's
  summary goes into the sweep's directory): a run resumes there (or reports its
  finished result), a study or report replaces its own outputs;

and refuses, with one error line and nothing changed, a path that is a file, a
non-empty directory without a marker (whatever file names it holds) and a
directory of another kind. `--overwrite` deletes only the files a run of that
kind writes (`outputs`), the marker last, and only in a directory marked with
its kind. While a writer works in a directory it holds an exclusive lock on
`<dir>/.lock` (`fcntl.flock`, released by the kernel even after `kill -9`): a
second process on the same directory is refused at once. A directory that
cannot be written (a read-only mount) can still be read: a finished run there
reports itself complete.

Every JSON file jaxvae reads (markers, configs, records) is read by `read_json`:
regular files only (no FIFO or device), bounded in size and nesting, so a
hostile file gives one error line, never a hang or a memory blow-up.

Results that take long to compute are put together aside (`Staged`, in
`<dir>/.incoming/`) section by section, and moved into place only when all are
complete: an interrupted study or report leaves the previous complete result
untouched, and the same command resumes from its last finished section.
"""

import contextlib
import errno
import fcntl
import json
import os
import pathlib
import re
import shutil
import stat
from typing import Iterable

from jaxvae.errors import WorkdirError

MARKER = "jaxvae.json"
LOCK = ".lock"
INCOMING = ".incoming"  # `.incoming.<kind>/`: a result being put together (`Staged`)
FORMAT = 2
MAX_JSON_BYTES = 16 << 20  # markers, configs and results are kilobytes; a larger file is not one of them
MAX_REPLICAS = 4096


def _regular_file(path: pathlib.Path, what: str, error=WorkdirError) -> int:
  """The size of `path`, which must be a regular file (a symlink to one is fine); `error` otherwise."""
  try:
    info = path.stat()
  except OSError as e:
    raise error(f"{path}: cannot read the {what} ({e.strerror or type(e).__name__})") from None
  if not stat.S_ISREG(info.st_mode):
    raise error(f"{path}: the {what} is not a regular file")
  return info.st_size


def read_bytes(path, what: str = "file", max_bytes: int = MAX_JSON_BYTES, error=WorkdirError) -> bytes:
  """The bytes of the regular file `path`, at most `max_bytes` of them; `error` naming the file otherwise."""
  path = pathlib.Path(path)
  if _regular_file(path, what, error) > max_bytes:
    raise error(f"{path}: the {what} is larger than {max_bytes:,} bytes; not a jaxvae {what}")
  try:
    with open(path, "rb") as f:
      data = f.read(max_bytes + 1)
  except OSError as e:
    raise error(f"{path}: cannot read the {what} ({e.strerror or type(e).__name__})") from None
  if len(data) > max_bytes:
    raise error(f"{path}: the {what} is larger than {max_bytes:,} bytes; not a jaxvae {what}")
  return data


def parse_json(data: bytes, where: str, what: str = "file", error=WorkdirError):
  """`data` parsed as JSON; `error` naming `where` for bytes that are not (UTF-8 JSON, nested at most
  Python's recursion limit deep)."""
  try:
    return json.loads(data.decode("utf-8"))
  except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
    reason = "nested too deeply" if isinstance(e, RecursionError) else f"{type(e).__name__}: {str(e)[:120]}"
    raise error(f"{where}: unreadable {what} ({reason})") from None


def read_json(path, what: str = "file", max_bytes: int = MAX_JSON_BYTES, error=WorkdirError):
  """The JSON value in the regular file `path` (see the module docstring); `error` naming the file otherwise."""
  return parse_json(read_bytes(path, what, max_bytes, error), str(path), what, error)


def read_json_object(path, what: str = "file", error=WorkdirError) -> dict:
  """A JSON object from `path` (`read_json`); `error` naming the file when it is unreadable or not an object."""
  value = read_json(path, what, error=error)
  if not isinstance(value, dict):
    raise error(f"{path}: not a jaxvae {what} (not a JSON object)")
  return value


def _is_int(value) -> bool:
  return isinstance(value, int) and not isinstance(value, bool)


def validate_marker(marker, where) -> dict:
  """`marker` (a parsed jaxvae.json), checked field by field; `WorkdirError` naming the first bad one."""
  if not isinstance(marker, dict):
    raise WorkdirError(f"{where}: not a jaxvae marker (not a JSON object)")
  kind = marker.get("kind")
  if not isinstance(kind, str) or not 0 < len(kind) <= 100:
    raise WorkdirError(f"{where}: not a jaxvae marker (no kind)")
  version = marker.get("format", 1)  # the replica markers of earlier ensembles have none
  if not _is_int(version) or version < 1:
    raise WorkdirError(f"{where}: a damaged marker (format {version!r})")
  if version > FORMAT:
    raise WorkdirError(f"{where}: written by a newer jaxvae (format {version}; this one reads up to {FORMAT})")
  if "model" in marker:
    spec = marker["model"]
    if not (isinstance(spec, dict) and isinstance(spec.get("class"), str) and isinstance(spec.get("fields"), dict)):
      raise WorkdirError(f"{where}: a damaged marker (its model spec is not {{class, fields}})")
  if "num_replicas" in marker:
    value = marker["num_replicas"]
    if not _is_int(value) or not 1 <= value <= MAX_REPLICAS:
      raise WorkdirError(f"{where}: a damaged marker (num_replicas {value!r} is not an integer in 1..{MAX_REPLICAS})")
  if "index" in marker and (not _is_int(marker["index"]) or not 0 <= marker["index"] < MAX_REPLICAS):
    raise WorkdirError(f"{where}: a damaged marker (replica index {marker['index']!r})")
  if kind == "replica" and "index" not in marker:
    raise WorkdirError(f"{where}: a replica marker without its index")
  return marker


def read_marker(directory) -> dict | None:
  """The marker of `directory`, checked (`validate_marker`); None when it has none. A marker that
  exists but is unreadable or damaged is a `WorkdirError`, never taken for no marker."""
  path = pathlib.Path(directory) / MARKER
  if not os.path.lexists(path):
    return None
  return validate_marker(read_json(path, "marker", max_bytes=1 << 20), path)


def write_json(path, value, sort_keys: bool = True) -> None:
  """Writes `value` as JSON, atomically (temporary file, then rename); `sort_keys=False` keeps the
  order of its objects (of a result's rows)."""
  path = pathlib.Path(path)
  tmp = path.with_name(path.name + ".tmp")
  tmp.write_text(json.dumps(value, indent=2, sort_keys=sort_keys) + "\n")
  os.replace(tmp, path)


def write_text(path, text: str) -> None:
  """Writes `text`, atomically (temporary file, then rename)."""
  path = pathlib.Path(path)
  tmp = path.with_name(path.name + ".tmp")
  tmp.write_text(text)
  os.replace(tmp, path)


def _entries(directory: pathlib.Path) -> list[pathlib.Path]:
  return [p for p in directory.iterdir() if p.name != LOCK]


def _remove(target: pathlib.Path) -> None:
  if target.is_dir() and not target.is_symlink():
    shutil.rmtree(target)
  else:
    target.unlink(missing_ok=True)


# What the training loop writes into every run's directory (`loop.fit`), for `--overwrite`.
RUN_OUTPUTS = ("checkpoints", "metrics.jsonl", "config.json", "events.out.tfevents.*", "rejected_checkpoints")


class Workdir:
  """One directory a writer of `kind` writes into; see the module docstring.

  Use it as a context manager (the lock is released on exit):

    with Workdir(path, "cvae", outputs=(*RUN_OUTPUTS, "results.json"), config=settings) as wd:
      wd.check(overwrite)   # refusals; locks a directory that holds a run of this kind
      ...                   # load and check the data: nothing is written yet
      wd.open(overwrite)    # creates, locks, deletes the old outputs (overwrite), marks

  `outputs`: names (or glob patterns) of everything a writer of this kind writes,
  for `--overwrite`. `config` (a JSON object): the run's settings; a directory
  whose config.json differs, but for the `resumable` names, is refused (after
  `normalize` of the saved object, e.g. to fill in fields added since).
  `accept`: other kinds of marked directory this writer may write its outputs into
  (their marker is kept). `flag` names the directory in errors.
  `marker_fields`: what the marker holds beside kind and format (the model spec);
  `open` writes them whenever the marker lacks them.
  `writer=False` (the other processes of a multi-process run) only checks.
  """

  def __init__(self, path, kind: str, outputs: Iterable[str] = (), flag: str = "--workdir",
               marker_fields: dict | None = None, writer: bool = True, config: dict | None = None,
               resumable: Iterable[str] = (), normalize=lambda saved: saved, accept: Iterable[str] = ()):
    self.path = pathlib.Path(path)
    self.kind = kind
    self.outputs = tuple(outputs)
    self.name = f"{flag}={self.path}"
    self.marker_fields = dict(marker_fields or {})
    self.writer = writer
    self.config = config
    self.resumable = tuple(resumable)
    self.normalize = normalize
    self.accept = tuple(accept)
    self.read_only = False  # set by `check` when the directory cannot be written
    self._lock_file = None
    self._was_empty = False

  def __enter__(self) -> "Workdir":
    return self

  def __exit__(self, *exc) -> None:
    self.release()

  # Reading.
  def holds_run(self) -> bool:
    """Whether the directory is marked with this writer's kind."""
    marker = read_marker(self.path) if self.path.is_dir() else None
    return marker is not None and marker["kind"] == self.kind

  def check(self, overwrite: bool = False) -> None:
    """Refuses a file, an unmarked non-empty directory or one of another kind (overwrite or not),
    and (without `overwrite`) a run with other settings; locks a directory that holds a run of
    this kind. Changes nothing on disk but the lock file."""
    path = self.path
    if os.path.lexists(path) and not path.is_dir():
      raise WorkdirError(f"{self.name} exists and is not a directory")
    if not path.is_dir() or not _entries(path):
      self._was_empty = True
      return
    marker = read_marker(path)
    if marker is None:
      raise WorkdirError(f"{self.name} is not empty and holds no jaxvae {self.kind} run (no {MARKER}: not a "
                         "directory jaxvae wrote); use a new or empty directory (nothing in it was changed)")
    if marker["kind"] not in (self.kind, *self.accept):
      what = marker["kind"]
      if what == "replica":
        raise WorkdirError(f"{self.name} is one replica of the ensemble in {path.parent}; run the ensemble's "
                           "command there, or use another directory")
      raise WorkdirError(f"{self.name} holds a {what} run, not a {self.kind} one; use another directory "
                         "(--overwrite deletes only runs of its own kind; nothing in it was changed)")
    self._lock()
    if not overwrite and self.config is not None:
      self._check_config()

  def _check_config(self) -> None:
    path = self.path / "config.json"
    if not os.path.lexists(path):
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
    outputs (`overwrite`) and writes the marker (when it has none, or lacks `marker_fields`)."""
    if not self.writer:
      return
    if self.read_only:
      raise WorkdirError(f"{self.name} cannot be written (read-only); nothing was changed")
    self.path.mkdir(parents=True, exist_ok=True)
    self._lock()
    if self._was_empty and _entries(self.path):
      raise WorkdirError(f"{self.name} was empty when this run started and another process has written into it "
                         "since; run the command again")
    self.check(overwrite)  # again, now that no other process can change it
    if overwrite and self.holds_run():
      self.remove_outputs()
    marker = read_marker(self.path)
    wanted = {"kind": self.kind, "format": FORMAT, **self.marker_fields}
    if marker is None or (marker["kind"] == self.kind and any(marker.get(k) != v for k, v in wanted.items())):
      write_json(self.path / MARKER, wanted)

  def remove_outputs(self) -> None:
    """Deletes what a run of this kind wrote (the names in `outputs`), then the marker."""
    for pattern in (*self.outputs, INCOMING + ".*"):
      for target in sorted(self.path.glob(pattern)):
        _remove(target)
    (self.path / MARKER).unlink(missing_ok=True)

  def _lock(self) -> None:
    if self._lock_file is not None or not self.writer or self.read_only:
      return
    try:
      handle = open(self.path / LOCK, "a+", errors="replace")  # pylint: disable=consider-using-with
    except OSError as e:
      if e.errno in (errno.EROFS, errno.EACCES, errno.EPERM):  # a read-only directory: nothing can change it
        self.read_only = True
        return
      raise WorkdirError(f"{self.name}: cannot lock {LOCK} ({e.strerror or e})") from None
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


def _normalized(value):
  """`value` as it reads back from JSON (tuples become lists), for comparisons with saved values."""
  return json.loads(json.dumps(value))


class Staged:
  """A result put together aside, in `<dir>/.incoming.<kind>/`, and moved into place only when complete.

  Each finished section is saved (`save`) with the identity of what it is computed from
  (settings, the fingerprints of the models it reads): the same command, stopped midway,
  resumes from its last finished section; a different identity starts afresh. Pictures
  are written to `path(name)` as they are made. Until `commit`, the directory's previous
  complete result is untouched; `commit` moves the new files in (one rename each) and
  deletes files of the previous result that the new one does not have.

    staged = Staged(wd, identity)
    if "likelihood" not in staged:
      staged.save("likelihood", compute())
    plot(staged["likelihood"], staged.path("results.png"))
    staged.commit(["results.json", "results.md", "results.png"], outputs=wd.outputs)
  """

  def __init__(self, wd: Workdir, identity: dict):
    self.directory = wd.path
    self.incoming = wd.path / f"{INCOMING}.{re.sub('[^A-Za-z0-9]+', '-', wd.kind)}"
    self.identity = _normalized(identity)
    self.sections = {}
    progress = self.incoming / "sections.json"
    saved = None
    if self.incoming.is_dir() and not self.incoming.is_symlink() and os.path.lexists(progress):
      with contextlib.suppress(WorkdirError):
        saved = read_json_object(progress, "progress record")
    if saved is not None and saved.get("identity") == self.identity and isinstance(saved.get("sections"), dict):
      self.sections = saved["sections"]
    elif os.path.lexists(self.incoming):
      _remove(self.incoming)  # the unfinished result of other settings or models: ours, inside our directory
    self.incoming.mkdir(exist_ok=True)

  @property
  def resumed(self) -> list[str]:
    return list(self.sections)

  def __contains__(self, name: str) -> bool:
    return name in self.sections

  def __getitem__(self, name: str):
    return self.sections[name]

  def save(self, name: str, value) -> None:
    """Records the finished section `name` (JSON), so that an interrupted run keeps it."""
    self.sections[name] = _normalized(value)
    write_json(self.incoming / "sections.json", {"identity": self.identity, "sections": self.sections},
               sort_keys=False)

  def path(self, name: str) -> pathlib.Path:
    """Where the new result's file `name` is written until `commit`."""
    return self.incoming / name

  def commit(self, files: Iterable[str], outputs: Iterable[str] = ()) -> None:
    """Moves `files` from `.incoming.<kind>/` into the directory, deletes what else `outputs` names
    there (the previous result's files that the new one lacks), then `.incoming.<kind>/`."""
    files = list(files)
    for name in files:
      if not (self.incoming / name).is_file():
        raise FileNotFoundError(f"{self.incoming / name}: the new result is incomplete")
    for name in files:
      os.replace(self.incoming / name, self.directory / name)
    for pattern in outputs:
      for target in sorted(self.directory.glob(pattern)):
        if target.name not in files and not target.name.startswith(INCOMING):
          _remove(target)
    _remove(self.incoming)


def complete_result(directory, identity: dict) -> dict | None:
  """The results.json in `directory` when it is the complete result of `identity` (the settings and
  model fingerprints a `Staged` result records as "identity"), else None."""
  path = pathlib.Path(directory) / "results.json"
  if not os.path.lexists(path):
    return None
  try:
    results = read_json_object(path, "result")
  except WorkdirError:
    return None
  return results if results.get("identity") == _normalized(identity) else None


def begin_result(wd: Workdir, identity: dict, what: str) -> tuple[dict | None, Staged | None]:
  """(the complete result of `identity` already in `wd`, None) when there is one, with a line
  saying so; else (None, a `Staged` result) in the opened `wd`, with a line naming the sections
  it resumes from. `what`: "report", "study", ... for the lines."""
  previous = complete_result(wd.path, identity)
  if previous is not None:
    print(f"{wd.path} holds the complete {what} of these settings and models; nothing to do", flush=True)
    return previous, None
  wd.open()
  staged = Staged(wd, identity)
  if staged.resumed:
    print(f"resuming the {what} in {wd.path}: {', '.join(staged.resumed)} finished before", flush=True)
  return None, staged
