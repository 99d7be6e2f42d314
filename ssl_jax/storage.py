"""File I/O of workdirs, local or on cloud storage (gs://...), in one place.

Paths go through etils.epath (TensorFlow's gfile underneath for gs://), so a workdir can be
a bucket that every host of a pod slice reaches. Orbax checkpoints and TFDS data_dirs accept
the same paths on their own.
"""
import os

from etils import epath


def is_remote(path) -> bool:
    """True for a URL-style path (gs://, s3://, ...): no local file semantics."""
    return "://" in str(path)


def resolve(path) -> epath.Path:
    """An epath.Path; local paths made absolute (orbax wants absolute checkpoint paths)."""
    return epath.Path(path if is_remote(path) else os.path.abspath(path))


def join(directory, *names) -> epath.Path:
    return resolve(directory).joinpath(*names)


def makedirs(path) -> None:
    resolve(path).mkdir(parents=True, exist_ok=True)


def exists(path) -> bool:
    return resolve(path).exists()


def read_text(path) -> str:
    return resolve(path).read_text()


def read_bytes(path) -> bytes:
    return resolve(path).read_bytes()


def write_file(path, data: str | bytes) -> None:
    """Write `data` to `path` so that a reader never sees a partial file: a temporary file
    renamed over it locally; on cloud storage an object write is atomic already."""
    path = resolve(path)
    write = lambda p: p.write_bytes(data) if isinstance(data, bytes) else p.write_text(data)
    if is_remote(path):
        write(path)
        return
    tmp = path.with_name(path.name + ".tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():  # a failed write leaves neither a partial file nor its temporary
            tmp.unlink()


def append_text(path, text: str, whole: str) -> None:
    """Append `text` to the file at `path`, whose complete new content is `whole`: appended
    locally; rewritten whole on cloud storage, whose objects cannot be appended to."""
    path = resolve(path)
    if is_remote(path):
        path.write_text(whole)
    else:
        with open(path, "a") as f:
            f.write(text)
