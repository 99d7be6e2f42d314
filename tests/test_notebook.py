"""notebooks/quickstart.ipynb runs top to bottom, so it cannot rot: its code cells are executed
in order in one namespace (no Jupyter: the JSON is read with the json module), skipping only the
cells tagged `colab` (the install). It runs with QUICKSTART_CI=1 (2 steps at batch 16: the
README example's shapes, whose compiled step the session's compilation cache may hold) and
evaluates and exports the session's demo run (the demo_run fixture) instead of training one."""
import json
import os

import pytest

from tests.conftest import REPO_ROOT

NOTEBOOK = os.path.join(REPO_ROOT, "notebooks", "quickstart.ipynb")


def _code_cells():
    nb = json.load(open(NOTEBOOK, encoding="utf-8"))
    assert nb["nbformat"] == 4 and nb["metadata"]["kernelspec"]["language"] == "python"
    cells = [c for c in nb["cells"] if c["cell_type"] == "code"]
    colab = [c for c in cells if "colab" in c["metadata"].get("tags", [])]
    return ["".join(c["source"]) for c in cells if c not in colab], ["".join(c["source"]) for c in colab]


def test_the_colab_only_cell_is_the_install():
    _, colab = _code_cells()
    assert len(colab) == 1 and "%pip install" in colab[0] and "git clone" in colab[0]


def test_quickstart_notebook_runs(demo_run, monkeypatch, capsys):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    workdir, _ = demo_run
    monkeypatch.setenv("QUICKSTART_CI", "1")
    monkeypatch.setenv("SSL_JAX_DEMO_WORKDIR", str(workdir))
    monkeypatch.chdir(REPO_ROOT)  # Colab's %cd into the clone
    before = sorted(os.listdir(workdir))
    namespace = {"__name__": "__main__"}
    code, _ = _code_cells()
    try:
        for i, source in enumerate(code):
            # IPython-only syntax would run in Colab but not here: it belongs in a `colab` cell.
            assert not any(line.lstrip().startswith(("!", "%")) for line in source.splitlines()), source
            exec(compile(source, f"quickstart.ipynb code cell {i}", "exec"), namespace)
    finally:
        plt.close("all")
    out = capsys.readouterr().out
    assert len(namespace["losses"]) == 2 and all(loss > 0 for loss in namespace["losses"])
    assert namespace["features"].shape == (360, 64)
    # The evaluation cell computes what the end of training computed (same function, features).
    from ssl_jax import results

    end = {(r["protocol"], r["setting"]): r["value"] for r in results.read_records(str(workdir))
           if r["network"] == "online" and r["metric"] == "top1"}
    knn = next(k for k in end if k[0] == "knn")
    assert namespace["top1"][knn] == pytest.approx(end[knn], abs=1e-6)
    assert namespace["top1"]["linear_cached", ""] > 0.8
    assert "## Pretraining" in out and "## kNN" in out  # the report's tables were printed
    assert os.path.getsize(namespace["torch_file"]) > 0 and namespace["meta"]["layout"] == "NCHW"
    assert sorted(os.listdir(workdir)) == before  # the session's demo run was only read
