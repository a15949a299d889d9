"""Smoke tests: every M2 experiment script runs end to end with tiny arguments.

They use scikit-learn's 8x8 digits (bundled, no download), MLP networks and one or two epochs,
so they check the plumbing (splits, training, selection, figures, JSON), not the numbers.
"""

import json
import subprocess
import sys

import pytest
from conftest import REPO

TINY = ["--dataset", "digits", "--validation", "100", "--labels", "20"]


def run_script(name: str, *args: str) -> None:
    result = subprocess.run(
        [sys.executable, str(REPO / "experiments" / name), *args],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("m2_mnist")
    run_script(
        "m2_mnist.py", *TINY, "--seeds", "0", "1", "--epochs", "2", "--hidden", "32",
        "--latent-dim", "4", "--classifier-arch", "mlp", "--batch-size", "200", "--out", str(out),
    )
    return out


def test_m2_mnist_writes_metrics_checkpoints_and_table(trained):
    summary = json.loads((trained / "metrics.json").read_text())
    assert summary["by_labels"]["20"]["seeds"] == [0, 1]
    for seed in (0, 1):
        run = json.loads((trained / f"labels20_seed{seed}" / "metrics.json").read_text())
        assert run["epochs_done"] == 2 and len(run["curve"]) == 2
        assert 0.0 <= run["test_error"] <= 1.0
        for name in ("best.pt", "curve.png"):
            assert (trained / f"labels20_seed{seed}" / name).stat().st_size > 0
    assert "20 labels" in (trained / "table.md").read_text()


def test_m2_figures_from_checkpoint(trained, tmp_path):
    run_script(
        "m2_figures.py", "--checkpoint", str(trained / "labels20_seed0" / "best.pt"),
        "--dataset", "digits", "--rows", "4", "--columns", "5", "--out", str(tmp_path),
    )
    for name in ("samples.png", "analogies.png", "metrics.json", "model.pt"):
        assert (tmp_path / name).stat().st_size > 0
    assert len(json.loads((tmp_path / "metrics.json").read_text())["analogy_test_indices"]) == 4


def test_m2_latent2d(tmp_path):
    run_script("m2_latent2d.py", *TINY, "--epochs", "1", "--hidden", "32", "--points", "200",
               "--out", str(tmp_path))
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert {"m2", "vae"} <= set(metrics)
    assert (tmp_path / "latent2d.png").stat().st_size > 0
    reuse = tmp_path / "reuse"
    run_script("m2_latent2d.py", *TINY, "--skip-vae", "--points", "200", "--out", str(reuse),
               "--m2-checkpoint", str(tmp_path / "m2" / "best.pt"))
    reused = json.loads((reuse / "metrics.json").read_text())["m2"]
    assert reused["test_error"] == pytest.approx(metrics["m2"]["test_error"])
