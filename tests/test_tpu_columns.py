"""benchmarks/tpu_columns.py: which compile reports make the README's v5e and v4 columns."""
import glob
import importlib.util
import json
import os

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_columns():
    spec = importlib.util.spec_from_file_location("tpu_columns", os.path.join(REPO, "benchmarks", "tpu_columns.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_run_name_reads_config_preset_and_phase_from_the_file_name():
    columns = load_columns()
    name = lambda f, topo: columns.run_name(f"/x/{f}.json", {"topology": topo})
    assert name("dino_vit_small_imagenet_v4-2x2x4", "v4:2x2x4") == "dino.py:vit_small"
    assert name("deepcluster_v2_imagenet_v3-8x8", "v3:8x8") == "deepcluster_v2.py:imagenet"
    assert name("deepcluster_imagenet_v3-2x2", "v3:2x2") == "deepcluster.py:imagenet"
    assert name("fussl_imagenet_phase2a_v4-2x2x4", "v4:2x2x4") == "fussl.py:imagenet --phase=2a"
    assert name("moco_v3_imagenet_1000_v3-8x16", "v3:8x16") == "moco_v3.py:imagenet_1000"
    # an override after the topology is not the preset as it is
    assert name("moco_v2_imagenet_v4-2x2x2_fsdp8", "v4:2x2x2") is None
    assert name("byol_imagenet_v5e-4x4_remat", "v5e:4x4") is None


def test_columns_take_the_64_per_chip_slice_of_each_committed_report():
    columns = load_columns()
    paths = glob.glob(os.path.join(columns.REPORTS, "*.json"))
    rows = columns.column_reports(paths)
    assert rows["byol.py:imagenet"].keys() == {"v5e", "v4"}
    picked = {id(r) for by_chip in rows.values() for r in by_chip.values()}
    assert picked
    for by_chip in rows.values():
        for chip, report in by_chip.items():
            batch = report["global_batch_size"]
            # 64 images per chip wherever a slice of batch / 64 chips exists
            assert batch // report["chips"] == (48 if batch == 3072 else 64)
            assert report["chip"] == chip.split("+")[0] and report["remat"] == chip.endswith("+remat")
    # no report of a column's slice is left out, and no other slice is taken
    for path in paths:
        with open(path) as f:
            report = json.load(f)
        run = columns.run_name(path, report)
        in_column = report["topology"] in columns.COLUMN_SLICES.get(report["global_batch_size"], ())
        assert (run in rows and rows[run].get(report["chip"], {}).get("topology") == report["topology"]) == (
            in_column and run is not None), path
    table = columns.table(rows)
    assert table.count("\n") == len(rows) + 1
    assert "| `byol.py:imagenet` | 4096 | v5e:8x8: 8.61 of 16 GiB | 257 | 21.6 |" in table


def test_readme_columns_are_the_committed_reports():
    columns = load_columns()
    with open(columns.README) as f:
        readme = f.read()
    start = readme.index(columns.MARKERS[0]) + len(columns.MARKERS[0])
    section = readme[start:readme.index(columns.MARKERS[1])]
    rows = columns.column_reports(glob.glob(os.path.join(columns.REPORTS, "*.json")))
    assert section == columns.table(rows) + "\n", "run python benchmarks/tpu_columns.py --readme"


def test_a_column_that_does_not_fit_shows_the_remat_compile(tmp_path):
    columns = load_columns()
    base = {"topology": "v5e:4x4", "chip": "v5e", "chips": 16, "global_batch_size": 1024, "remat": False,
            "train": {"fits": False, "hbm_used_bytes": 15.76 * 2 ** 30, "compiler_available_bytes": 15.75 * 2 ** 30,
                      "hbm_capacity_bytes": 16 * 2 ** 30}}
    remat = dict(base, remat=True, train={"fits": True, "hbm_used_bytes": 9.5 * 2 ** 30, "hbm_capacity_bytes": 16 * 2 ** 30,
                                          "images_per_s_per_chip": 201.4, "estimated_hours": 11.04})
    for name, report in (("dino_resnet50_imagenet_v5e-4x4", base), ("dino_resnet50_imagenet_v5e-4x4_remat", remat)):
        (tmp_path / f"{name}.json").write_text(json.dumps(report))
    rows = columns.column_reports(glob.glob(str(tmp_path / "*.json")))
    assert rows.keys() == {"dino.py:resnet50"} and rows["dino.py:resnet50"].keys() == {"v5e", "v5e+remat"}
    assert columns.table(rows).splitlines()[2] == (
        "| `dino.py:resnet50` | 1024 | v5e:4x4: asks 15.76 of 15.75 GiB, does not fit; with `model.remat=True`: "
        "9.50 of 16 GiB | 201 | 11.0 | v4:2x2x4: not compiled | – | – |")
