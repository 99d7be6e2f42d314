"""TensorBoard event files: grouped tags (train/ eval/ monitor/ refresh/), the config as text,
evaluation records, read back from the files as TensorBoard reads them."""
import json
import struct

from tensorboardX.crc32c import crc32c
from tensorboardX.proto import event_pb2

from ssl_jax import results
from ssl_jax.train import tensorboard
from ssl_jax.train.logging import MetricWriter


def _masked_crc(data: bytes) -> int:
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def read_events(logdir) -> list:
    """Every Event of every events file under `logdir`: the TFRecord framing (length, masked
    CRC-32C of the length, data, masked CRC of the data) checked, as TensorBoard's reader does
    (TensorFlow's summary_iterator reads the same, at ~7 s of import)."""
    events = []
    for path in sorted(logdir.glob("events.out.tfevents.*")):
        data, pos = path.read_bytes(), 0
        while pos < len(data):
            header = data[pos:pos + 8]
            (length,) = struct.unpack("<Q", header)
            assert struct.unpack("<I", data[pos + 8:pos + 12])[0] == _masked_crc(header)
            body = data[pos + 12:pos + 12 + length]
            assert struct.unpack("<I", data[pos + 12 + length:pos + 16 + length])[0] == _masked_crc(body)
            events.append(event_pb2.Event.FromString(body))
            pos += 16 + length
    return events


def scalars(logdir) -> dict:
    """{tag: [(step, value)]} of the scalar summaries under `logdir`."""
    out = {}
    for event in read_events(logdir):
        for value in event.summary.value:
            if value.WhichOneof("value") == "simple_value":
                out.setdefault(value.tag, []).append((event.step, value.simple_value))
    return out


def test_tag_of_groups_every_metric_the_loop_logs():
    # The keys of a real metrics.jsonl line (a DeepCluster-v2 demo, plus BYOL's ema_tau).
    logged = ["loss", "lr", "ema_tau", "grad_norm", "probe_loss", "probe_top1", "cluster_top1",
              "collapse_std", "collapse_std_reference", "z_std", "z_std_reference", "z_effective_rank",
              "knn_top1", "refresh_nmi_previous", "refresh_nonempty_fraction_0"]
    assert {k: tensorboard.tag_of(k) for k in logged} == {
        "loss": "train/loss", "lr": "train/lr", "ema_tau": "train/ema_tau", "grad_norm": "train/grad_norm",
        "probe_loss": "train/probe_loss", "probe_top1": "train/probe_top1",
        "cluster_top1": "train/cluster_top1",
        "collapse_std": "monitor/collapse_std", "collapse_std_reference": "monitor/collapse_std_reference",
        "z_std": "monitor/z_std", "z_std_reference": "monitor/z_std_reference",
        "z_effective_rank": "monitor/z_effective_rank", "knn_top1": "eval/knn_top1",
        "refresh_nmi_previous": "refresh/nmi_previous",
        "refresh_nonempty_fraction_0": "refresh/nonempty_fraction_0"}
    assert tensorboard.tag_of("custom/thing") == "custom/thing"


def _run(**kw):
    return dict({"method": "byol", "dataset": "cifar10", "backbone": "resnet18", "epochs": 10.0,
                 "step": 352}, **kw)


def test_record_tags():
    tag = lambda **kw: tensorboard.record_tag({**_run(), "setting": "", "network": "online",
                                               "eval_dataset": "cifar10", **kw})
    assert tag(protocol="knn", metric="top1", setting="k=20,T=0.07") == "eval/knn/top1/k20_T0.07"
    assert (tag(protocol="knn", metric="top1", setting="k=20,T=0.07", network="random_init")
            == "eval/knn/top1/k20_T0.07/random_init")
    assert (tag(protocol="knn", metric="top5", setting="k=200,T=0.1", eval_dataset="cifar100")
            == "eval/knn/top5/k200_T0.1/on_cifar100")
    assert tag(protocol="finetune", metric="top1", setting="labels=1%") == "eval/finetune/top1/labels1pct"
    assert (tag(protocol="layer_probe", metric="knn_top1", setting="layer=stage3,k=20,T=0.07")
            == "eval/layer_probe/knn_top1/layer_stage3_k20_T0.07")
    assert tag(protocol="linear_cached", metric="l2") == "eval/linear_cached/l2"
    assert tag(protocol="pretrain", metric="train_seconds") == "train/train_seconds"
    assert tag(protocol="pretrain", metric="collapsed") == "monitor/collapsed"
    assert tag(protocol="pretrain", metric="z_effective_rank") is None  # logged every step already


def test_metric_writer_writes_grouped_tags_and_the_config(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(
        {"method": "byol", "optimizer": {"base_lr": 0.3, "weight_decay": 1e-5}, "views": [0.08, 1.0]}))
    writer = MetricWriter(str(tmp_path), resume_step=0)
    writer.write(10, {"loss": 1.5, "probe_top1": 0.25, "z_effective_rank": 7.0, "refresh_seconds": 0.5})
    writer.write(20, {"loss": 1.0, "knn_top1": 0.5})
    writer.close()
    logdir = tmp_path / "tensorboard"
    assert scalars(logdir) == {"train/loss": [(10, 1.5), (20, 1.0)], "train/probe_top1": [(10, 0.25)],
                               "monitor/z_effective_rank": [(10, 7.0)], "refresh/seconds": [(10, 0.5)],
                               "eval/knn_top1": [(20, 0.5)]}
    (text,) = [v for e in read_events(logdir) for v in e.summary.value if v.tag.startswith("hparams")]
    table = b"".join(text.tensor.string_val).decode()
    assert "| optimizer.weight_decay | 1e-5 |" in table and "| optimizer.base_lr | 0.3 |" in table
    assert "| views | [0.08, 1] |" in table and "| method | byol |" in table


def test_evaluation_records_are_written_at_their_step_without_overwriting(tmp_path):
    """Two writers opened in the same second (training, then its evaluation) keep both files."""
    writer = MetricWriter(str(tmp_path), resume_step=0)
    writer.write(352, {"loss": 1.0})
    writer.close()
    recs = (results.make_records(_run(), protocol="knn", eval_dataset="cifar10", network="online",
                                 setting="k=20,T=0.1", metrics={"top1": 0.75})
            + results.make_records(_run(), protocol="knn", eval_dataset="cifar10", network="random_init",
                                   setting="k=20,T=0.1", metrics={"top1": 0.5})
            + results.make_records(_run(), protocol="pretrain", eval_dataset="cifar10", network="online",
                                   metrics={"train_seconds": 60.0, "z_std": 0.1}))
    assert tensorboard.write_records(str(tmp_path), recs) == [
        "eval/knn/top1/k20_T0.1", "eval/knn/top1/k20_T0.1/random_init", "train/train_seconds"]
    assert scalars(tmp_path / "tensorboard") == {
        "train/loss": [(352, 1.0)], "eval/knn/top1/k20_T0.1": [(352, 0.75)],
        "eval/knn/top1/k20_T0.1/random_init": [(352, 0.5)], "train/train_seconds": [(352, 60.0)]}
