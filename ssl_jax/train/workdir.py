"""Who owns a training workdir, and whether it can be one: the run lock, the checks of the
path itself, and the refusal of another run's workdir. Light (no JAX, no TensorFlow), so the
command line answers before its heavy imports.

The lock (`acquire`): one training run owns a workdir. It is WORKDIR/run.lock, a JSON record
of the owner (host, pid, start time, heartbeat) that a refused second run names in its one-line
error.

* Local workdirs (and NFS mounts with working locks): the lock is a `fcntl.flock` on that file.
  The kernel grants it to one process atomically and drops it when the process dies (SIGKILL
  and power loss included), so a lock left by a killed run is stale by construction and the
  next run takes it over with no race between two restarts. The record is only what the
  message shows. A record naming another host whose heartbeat is fresh is still refused: a
  shared filesystem that does not propagate flock between hosts must not let two hosts in.
* Cloud storage (gs://...): there are no locks, and object-generation preconditions are not
  reachable through the storage layer (etils.epath / tf.io.gfile), so the lock is ADVISORY:
  the record is written through ssl_jax.storage, then read back after VERIFY_SECONDS; a run
  that reads another owner's record stops. A record is stale when its host is this host and its
  pid is gone, or when its heartbeat (rewritten every HEARTBEAT_SECONDS by the owner) is older
  than STALE_SECONDS. Two runs started within the same fraction of a second on different hosts
  can both pass; that is the limit of an advisory lock, and a warning line says so.

Multi-process runs: only process 0 takes the lock (ssl_jax.train.loop.workdir_lock); the
others learn the outcome from it.
"""
from __future__ import annotations

import errno
import json
import os
import socket
import sys
import threading
import time
import uuid

from ssl_jax import storage

LOCK_NAME = "run.lock"
HEARTBEAT_SECONDS = 60.0
STALE_SECONDS = 600.0  # ten missed heartbeats: the owner is gone
VERIFY_SECONDS = 2.0   # advisory lock: how long a competing write has to show up

# What makes a run: a workdir whose config.json differs in any of these is another run's.
# Other fields (steps, learning rate, batch size, dtype, remat, evaluation) may change on resume.
IDENTITY_FIELDS = ("method", "data.dataset", "data.classes", "model.name", "model.width", "model.cifar_stem",
                   "model.patch_size", "model.pos_embedding", "model.sobel", "ensemble.size")


class WorkdirInUse(FileExistsError):
    """Another live run holds the workdir's lock."""


def _this_host() -> str:
    return socket.gethostname()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def _record(token: str, started: float) -> dict:
    now = time.time()
    return {"host": _this_host(), "pid": os.getpid(), "token": token,
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)), "heartbeat": now}


def _parse(text: str) -> dict | None:
    try:
        record = json.loads(text)
    except ValueError:
        return None
    return record if isinstance(record, dict) else None


def describe(record: dict | None) -> str:
    """'pid P on host H (started T)' of a lock record."""
    if not record:
        return "a run whose record is not written yet"
    return f"pid {record.get('pid')} on host {record.get('host')} (started {record.get('started')})"


def _in_use(workdir, record: dict | None, advisory: bool) -> WorkdirInUse:
    path = storage.join(workdir, LOCK_NAME)
    fix = ("wait for it to finish or stop it, or pass another --workdir" if not advisory else
           f"wait for it to finish or stop it, or pass another --workdir; if that run is gone, "
           f"delete {path} (it counts as stale {STALE_SECONDS:.0f} s after its last heartbeat)")
    return WorkdirInUse(f"{workdir} is in use by another training run: {describe(record)}. Two runs in "
                        f"one workdir would overwrite each other's checkpoints; {fix}.")


def _stale(record: dict | None, now: float) -> bool:
    """Whether a lock record's owner is gone: a dead pid on this host, or no heartbeat for
    STALE_SECONDS."""
    if not record:
        return True
    if record.get("host") == _this_host() and not _pid_alive(int(record.get("pid", -1))):
        return True
    return now - float(record.get("heartbeat", 0.0)) > STALE_SECONDS


class Lock:
    """A held workdir lock; `release()` (or leaving the `with` block) gives it back."""

    def __init__(self, workdir, fd: int | None, token: str, started: float, previous: dict | None):
        self.workdir = workdir
        self.path = storage.join(workdir, LOCK_NAME)
        self.previous = previous  # the stale record taken over, if any
        self._fd, self._token, self._started = fd, token, started
        self._mutex = threading.Lock()  # a heartbeat never writes to an fd release() closed
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="ssl_jax-lock-heartbeat", daemon=True)
        self._thread.start()

    def _write(self) -> None:
        data = json.dumps(_record(self._token, self._started)).encode()
        with self._mutex:
            if self._stop.is_set():  # released
                return
            if self._fd is None:
                storage.write_file(self.path, data.decode())
            else:  # in place: the flock belongs to this inode, a rename would drop it
                os.ftruncate(self._fd, 0)
                os.pwrite(self._fd, data, 0)

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_SECONDS):
            try:
                self._write()
            except OSError:  # a transient storage error: the next beat retries
                pass

    def release(self) -> None:
        self._stop.set()
        with self._mutex:
            self._release()

    def _release(self) -> None:
        if self._fd is not None:
            # Unlinked while still locked: a run that opened the old file sees the inode change
            # after its flock and retries on the new one (see `_acquire_local`).
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass
            os.close(self._fd)
            self._fd = None
        else:
            try:
                if (_parse(storage.read_text(self.path)) or {}).get("token") == self._token:
                    storage.resolve(self.path).unlink()
            except OSError:
                pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.release()


def _acquire_local(workdir, token: str, started: float) -> Lock | None:
    """The flock-based lock; None where the filesystem has no working flock."""
    import fcntl

    path = str(storage.join(workdir, LOCK_NAME))
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise _in_use(workdir, _read_record(path, wait=True), advisory=False) from None
        except OSError as e:
            os.close(fd)
            if e.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                return None
            raise
        try:
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if not same:  # its owner released (unlinked) it between our open and our flock
            os.close(fd)
            continue
        previous = _read_record(path)
        if previous and previous.get("host") != _this_host() and not _stale(previous, time.time()):
            os.close(fd)  # a live owner on another host of a filesystem whose flock is host-local
            raise _in_use(workdir, previous, advisory=False)
        lock = Lock(workdir, fd, token, started, previous)
        lock._write()
        return lock


def _read_record(path, wait: bool = False) -> dict | None:
    """The lock record at `path`; with `wait`, a moment's patience for an owner that holds the
    lock but has not written its record yet."""
    for _ in range(20 if wait else 1):
        try:
            record = _parse(storage.read_text(path))
        except FileNotFoundError:
            record = None
        if record or not wait:
            return record
        time.sleep(0.05)
    return None


def _acquire_advisory(workdir, token: str, started: float, verify_seconds: float) -> Lock:
    path = storage.join(workdir, LOCK_NAME)
    previous = _read_record(path) if storage.exists(path) else None
    if previous and not _stale(previous, time.time()):
        raise _in_use(workdir, previous, advisory=True)
    lock = Lock(workdir, None, token, started, previous)
    lock._write()
    time.sleep(verify_seconds)  # a competing writer's record shows up here, and one of us stops
    current = _read_record(path)
    if (current or {}).get("token") != token:
        lock._stop.set()
        raise _in_use(workdir, current, advisory=True)
    return lock


def acquire(workdir, *, advisory: bool | None = None, verify_seconds: float = VERIFY_SECONDS,
            log=lambda message: print(message, file=sys.stderr, flush=True)) -> Lock:
    """Take WORKDIR's run lock (creating WORKDIR if needed) or raise WorkdirInUse naming the
    owner. `advisory`: the cloud-storage protocol (default: for remote paths, and where the
    local filesystem has no flock). A stale lock taken over and an advisory lock are one line
    each on `log`."""
    check_writable(workdir)
    storage.makedirs(workdir)
    token, started = uuid.uuid4().hex, time.time()
    lock = None
    if not advisory and not storage.is_remote(workdir):
        lock = _acquire_local(workdir, token, started)
    if lock is None:
        lock = _acquire_advisory(workdir, token, started, verify_seconds)
        log(f"ssl_jax: warning: {workdir} has no file locks (cloud storage or a filesystem without "
            "flock): its run lock is advisory; never start two runs on it at the same moment.")
    if lock.previous:
        log(f"ssl_jax: taking over the lock of {describe(lock.previous)}, which is no longer running.")
    return lock


# ------------------------------------------------------------------------------- path checks

def check_writable(workdir) -> None:
    """One clear error if WORKDIR cannot be a training workdir: a file, or in a directory this
    user cannot write. Local paths only (cloud storage answers on the first write)."""
    if storage.is_remote(workdir):
        return
    path = os.path.abspath(str(workdir))
    probe = path
    while not os.path.exists(probe):  # the nearest existing ancestor is where mkdir would write
        probe = os.path.dirname(probe)
    if not os.path.isdir(probe):
        what = "is a file" if probe == path else f"cannot be created: {probe} is a file"
        raise NotADirectoryError(f"--workdir={workdir} {what}, not a directory; pass a directory "
                                 "(a new one is created).")
    if not os.access(probe, os.W_OK | os.X_OK):
        where = "" if probe == path else f" (its parent {probe} is where it would be created)"
        raise PermissionError(f"--workdir={workdir} is not writable by this user{where}; make it "
                              "writable (chmod u+w; or a read-only mount, or chattr +i) or pass another "
                              "--workdir.")


def _flock_holders(path: str) -> set[int] | None:
    """PIDs holding an exclusive flock on `path`, from /proc/locks (Linux), or None where that
    cannot be read. Reading it takes no lock: the probe cannot make a starting run fail."""
    try:
        st = os.stat(path)
        with open("/proc/locks") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    holders = set()
    for line in lines:
        fields = line.split()
        if "->" in fields:  # a waiter, not a holder
            continue
        if len(fields) >= 6 and fields[1] == "FLOCK" and fields[3] == "WRITE":
            try:  # MAJOR:MINOR:INODE, the device numbers in hex
                major, minor, inode = fields[5].split(":")
                if (int(major, 16), int(minor, 16), int(inode)) == (os.major(st.st_dev), os.minor(st.st_dev), st.st_ino):
                    holders.add(int(fields[4]))
            except ValueError:
                continue
    return holders


def check_before_start(workdir) -> None:
    """The command line's checks before its heavy imports: `check_writable`, and a workdir whose
    run lock a live process on this host holds is refused at once (not after 10-30 s of imports
    and set-up). Local workdirs on Linux only; everywhere `acquire` still decides."""
    check_writable(workdir)
    if storage.is_remote(workdir):
        return
    path = os.path.join(os.path.abspath(str(workdir)), LOCK_NAME)
    holders = _flock_holders(path) if os.path.exists(path) else None
    if holders and os.getpid() not in holders:
        raise _in_use(workdir, _read_record(path, wait=True), advisory=False)


def _field(record: dict, dotted: str):
    node = record
    for key in dotted.split("."):
        if not isinstance(node, dict) or key not in node:
            return None
        node = node[key]
    return node


def identity_differences(existing: dict, new: dict) -> list[str]:
    """'field: old -> new' for each IDENTITY_FIELDS entry set in both records that differs."""
    out = []
    for dotted in IDENTITY_FIELDS:
        old, value = _field(existing, dotted), _field(new, dotted)
        if old is not None and value is not None and old != value:
            out.append(f"{dotted} {old!r} -> {value!r}")
    return out


def check_same_run(workdir, record: dict) -> None:
    """Refuse (ValueError, one line) a workdir whose config.json is another run's: its method,
    dataset or model differ from `record` (the new config as JSON). Nothing is written."""
    path = storage.join(workdir, "config.json")
    if not storage.exists(path):
        return
    existing = _parse(storage.read_text(path))
    if existing is None:
        raise ValueError(f"{path} is not valid JSON, so it is unknown which run {workdir} belongs to; "
                         "pass another --workdir, or move that file away if the workdir is yours.")
    differences = identity_differences(existing, record)
    if differences:
        raise ValueError(f"{workdir} holds another run ({'; '.join(differences)} in its config.json); "
                         "its checkpoints cannot continue with this config, and nothing was changed. "
                         "Pass another --workdir.")
