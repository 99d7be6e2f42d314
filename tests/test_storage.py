"""Workdir I/O (ssl_jax.storage) on local paths, and the cloud-storage code paths exercised
on a local directory (objects are rewritten whole instead of appended or renamed)."""
import json

import pytest

from ssl_jax import storage
from ssl_jax.train.logging import MetricWriter


def test_remote_paths_stay_urls_and_local_ones_become_absolute(tmp_path, monkeypatch):
    assert str(storage.resolve("gs://bucket/runs/byol")) == "gs://bucket/runs/byol"
    assert str(storage.join("gs://bucket/runs", "byol", "config.json")) == "gs://bucket/runs/byol/config.json"
    assert storage.is_remote("gs://b/x") and not storage.is_remote("/tmp/x")
    monkeypatch.chdir(tmp_path)
    assert str(storage.resolve("run")) == str(tmp_path / "run")


def test_write_file_replaces_whole_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "results.json"
    storage.write_file(path, "old")
    storage.write_file(path, b"new bytes")
    assert path.read_bytes() == b"new bytes"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.json"]


def test_failed_write_keeps_the_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "results.json"
    storage.write_file(path, "previous")

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(storage.os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        storage.write_file(path, "half")
    assert path.read_text() == "previous"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.json"]


@pytest.mark.parametrize("remote", [False, True])
def test_metric_writer_appends_and_drops_lines_after_the_resume_step(tmp_path, monkeypatch, remote):
    if remote:  # the gs:// code path: the file is rewritten whole on every write
        monkeypatch.setattr(storage, "is_remote", lambda path: True)
    writer = MetricWriter(str(tmp_path), resume_step=0)
    for step in (10, 20, 30):
        writer.write(step, {"loss": float(step)})
    writer.close()
    # Resumed from the checkpoint at step 20: the line of step 30 is dropped, then appended anew.
    writer = MetricWriter(str(tmp_path), resume_step=20)
    writer.write(30, {"loss": 3.0})
    writer.write(40, {"loss": 4.0})
    writer.close()
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert lines == [{"step": 10, "loss": 10.0}, {"step": 20, "loss": 20.0},
                     {"step": 30, "loss": 3.0}, {"step": 40, "loss": 4.0}]
