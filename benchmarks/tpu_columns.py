"""The README's v5e and v4 columns, built from the compile reports in benchmarks/tpu_compile/.

    python benchmarks/tpu_columns.py            # prints the markdown table
    python benchmarks/tpu_columns.py --readme   # writes it into README.md between its markers

Issue 22 asks for every ImageNet preset on its paper's hardware (the README's main table, one
row per report) plus a v5e and a v4 column. The columns put every preset on the same footing:
64 images per chip (the per-chip batch of BYOL's 4096 on 64 chips), so the slice is
batch / 64 chips, rounded to a slice that exists (COLUMN_SLICES). DeeperCluster's batch 3072
has no 48-chip slice: it runs on 64 chips at 48 per chip. A report belongs to a column when its
topology is that slice for its batch and it compiled the preset as it is (no override in the
file name after the topology). Epoch variants (BYOL imagenet_300, MoCo v2 imagenet_800, MoCo v3
imagenet_1000, CARP imagenet_300) compile the same step as their base preset; their hours scale
with the epochs and they are not compiled again.

Each cell: HBM per device against the chip's capacity (or what the compiler asked for when it
did not fit), the roofline's images/s per chip and hours for the whole preset. These are XLA's
compile and a roofline estimate, not measurements (see ssl_jax.compile).
"""
import glob
import json
import os
import sys

REPORTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "tpu_compile")

# global batch -> (v5e slice, v4 slice) at 64 images per chip
COLUMN_SLICES = {
    256: ("v5e:2x2", "v4:2x2x1"),
    512: ("v5e:2x4", "v4:2x2x2"),
    1024: ("v5e:4x4", "v4:2x2x4"),
    2048: ("v5e:4x8", "v4:2x4x4"),
    3072: ("v5e:8x8", "v4:4x4x4"),
    4096: ("v5e:8x8", "v4:4x4x4"),
}
GIB = 2 ** 30


CONFIGS = os.path.join(os.path.dirname(REPORTS), os.pardir, "configs")


def run_name(path: str, report: dict) -> str | None:
    """'dino.py:vit_small' for dino_vit_small_imagenet_v4-2x2x4.json ('fussl.py:imagenet
    --phase=1' for fussl_imagenet_phase1_...); None when the file name has anything after the
    topology (an override such as _remat or _fsdp8)."""
    stem = os.path.basename(path)[:-len(".json")]
    topo = report["topology"].replace(":", "-")
    if not stem.endswith("_" + topo):
        return None
    stem = stem[:-len(topo) - 1]
    configs = sorted((os.path.basename(c)[:-3] for c in glob.glob(os.path.join(CONFIGS, "*.py"))), key=len)
    config = next((c for c in reversed(configs) if stem.startswith(c + "_")), None)
    if config is None:
        return None
    preset, _, phase = stem[len(config) + 1:].partition("_phase")
    if preset.endswith("_imagenet"):  # vit_small_imagenet: the file names add the dataset
        preset = preset[:-len("_imagenet")]
    return f"{config}.py:{preset}" + (f" --phase={phase}" if phase else "")


def cell(report: dict, remat: dict | None = None) -> str:
    """One chip's three cells; where the preset does not fit, what it asked for, and the same
    compile with model.remat=True when there is one."""
    t = report["train"]
    if not t["fits"]:  # the compiler refused it: what it asked for against what it had
        refused = (f"{report['topology']}: asks {t['hbm_used_bytes'] / GIB:.2f} of "
                   f"{t['compiler_available_bytes'] / GIB:.2f} GiB, does not fit")
        if remat is None:
            return refused + " | – | –"
        return refused + "; with `model.remat=True`: " + cell(remat).split(": ", 1)[1]
    return (f"{report['topology']}: {t['hbm_used_bytes'] / GIB:.2f} of {t['hbm_capacity_bytes'] / GIB:.0f} GiB | "
            f"{t['images_per_s_per_chip']:.0f} | {t['estimated_hours']:.1f}")


def column_reports(paths) -> dict:
    """{run: {'v5e': report, 'v4': report, 'v5e+remat': report, ...}} for the reports in a column
    (the '+remat' entries: the same compile with model.remat=True, file name ending in _remat)."""
    rows = {}
    for path in sorted(paths):
        with open(path) as f:
            report = json.load(f)
        remat = path.endswith("_remat.json") and report["remat"]
        run = run_name(path[:-len("_remat.json")] + ".json" if remat else path, report)
        slices = COLUMN_SLICES.get(report["global_batch_size"])
        if run is None or slices is None or report["topology"] not in slices:
            continue
        rows.setdefault(run, {})[report["chip"] + ("+remat" if remat else "")] = report
    return rows


def table(rows: dict) -> str:
    lines = ["| config:preset | batch | v5e: HBM/device | img/s/chip | hours | v4: HBM/device | img/s/chip | hours |",
             "|---|---|---|---|---|---|---|---|"]
    for run, by_chip in sorted(rows.items()):
        batch = next(iter(by_chip.values()))["global_batch_size"]
        cells = [cell(by_chip[c], by_chip.get(c + "+remat")) if c in by_chip
                 else f"{COLUMN_SLICES[batch][i]}: not compiled | – | –" for i, c in enumerate(("v5e", "v4"))]
        lines.append(f"| `{run}` | {batch} | {cells[0]} | {cells[1]} |")
    return "\n".join(lines)


README = os.path.join(os.path.dirname(REPORTS), os.pardir, "README.md")
MARKERS = ("<!-- tpu_columns -->\n", "<!-- /tpu_columns -->")


def main(argv):
    text = table(column_reports(glob.glob(os.path.join(REPORTS, "*.json"))))
    if "--readme" not in argv:
        print(text)
        return
    with open(README) as f:
        readme = f.read()
    start, end = readme.index(MARKERS[0]) + len(MARKERS[0]), readme.index(MARKERS[1])
    with open(README, "w") as f:
        f.write(readme[:start] + text + "\n" + readme[end:])


if __name__ == "__main__":
    main(sys.argv)
