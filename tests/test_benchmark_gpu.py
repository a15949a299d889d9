"""Smoke tests of ``benchmarks.gpu``: the script runs at tiny size on the CPU, writes its JSON."""

import json
import os
import subprocess
import sys

import pytest
from conftest import REPO


def _run(tmp_path, *args):
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "benchmarks.gpu.run", "--device", "cpu", "--quick"]
    proc = subprocess.run(
        [*cmd, "--out", str(tmp_path), *args], cwd=REPO, env=env, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads((tmp_path / "results.json").read_text())


def test_compiled_variants_run_at_tiny_size(tmp_path):
    report = _run(
        tmp_path, "--models", "vae", "--variants", "pyrovae_eager", "pyrovae_compiled",
        "plain_graph", "--epochs", "1", "--steps-per-graph", "2",
    )  # fmt: skip
    rows = {r["variant"]: r for r in report["results"]}
    assert report["device"] and report["torch_device"] == "cpu"
    assert set(rows) == {"pyrovae_eager", "pyrovae_compiled", "plain_graph"}
    assert all("error" not in r for r in rows.values()), rows
    assert rows["pyrovae_compiled"]["steps_per_call"] == 2
    assert rows["pyrovae_eager"]["steps_per_epoch"] == 512 // 128
    # The same seed and weights: the eager and compiled pyrovae steps train identically on CPU.
    assert rows["pyrovae_compiled"]["loss_per_example"] == pytest.approx(
        rows["pyrovae_eager"]["loss_per_example"], rel=1e-5
    )
    assert (tmp_path / "table.md").exists()


@pytest.mark.slow
def test_every_model_and_variant_runs_at_tiny_size(tmp_path):
    report = _run(tmp_path, "--epochs", "1")
    assert [r for r in report["results"] if "error" in r] == []
    assert {(r["model"], r["variant"]) for r in report["results"]} == {
        (m, v) for m in ("vae", "m2", "ppca") for v in (
            "pyrovae_eager", "pyrovae_jit", "pyrovae_compiled", "plain_eager", "plain_graph"
        )
    }  # fmt: skip


def test_numpyro_vae_epoch_runs():
    pytest.importorskip("jax")
    pytest.importorskip("numpyro")
    import numpy as np

    from benchmarks.gpu.numpyro_vae import time_epochs

    x = (np.random.default_rng(0).random((64, 12)) < 0.3).astype(np.float32)
    result = time_epochs(x, batch_size=16, hidden=8, latent_dim=2, epochs=1)
    assert result["steps_per_epoch"] == 4 and len(result["seconds"]) == 1
    assert np.isfinite(result["loss_per_example"]) and result["loss_per_example"] > 0
