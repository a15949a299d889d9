"""Smoke tests: every M2 experiment script runs end to end with tiny arguments.

They use scikit-learn's 8x8 digits (bundled, no download), MLP networks and one or two epochs,
so they check the plumbing (splits, training, selection, figures, JSON), not the numbers.
"""

import json
import subprocess
import sys

import pytest
from conftest import REPO

TINY = ["--dataset", "digits", "--n-validation", "100", "--n-labelled", "20"]


def run_script(name: str, *args: str) -> str:
    """Run ``experiments.m2.NAME`` with ``args``; return its log (stderr)."""
    result = subprocess.run(
        [sys.executable, "-m", f"experiments.m2.{name}", *args],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stderr


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("m2_mnist")
    log = run_script(
        "mnist", *TINY, "--seeds", "0", "1", "--epochs", "2", "--hidden-sizes", "32",
        "--latent-dim", "4", "--classifier-arch", "mlp", "--batch-size", "200", "--out", str(out),
    )
    (out.parent / "m2_mnist.log").write_text(log)
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
    table = (trained / "table.md").read_text()
    assert "20 labels" in table
    # The time table: one row per number of labels, epochs to the selected model per seed.
    epochs = [json.loads((trained / f"labels20_seed{s}" / "metrics.json").read_text())["best_epoch"]
              + 1 for s in (0, 1)]
    assert f"| 20 | 2 | {epochs[0]}, {epochs[1]} | 2, 2 |" in table


def test_m2_mnist_logs_each_epoch_once(trained):
    log = (trained.parent / "m2_mnist.log").read_text().splitlines()
    # two seeds, two epochs each: one line per epoch and seed (the script once echoed fit's line)
    for epoch in (0, 1):
        lines = [line for line in log if f"epoch {epoch}: loss/example" in line]
        assert len(lines) == 2, lines
        assert all("val_accuracy" in line for line in lines)


def test_m2_figures_from_checkpoint(trained, tmp_path):
    run_script(
        "figures", "--checkpoint", str(trained / "labels20_seed0" / "best.pt"),
        "--dataset", "digits", "--rows", "4", "--columns", "5", "--out", str(tmp_path),
    )
    for name in ("samples.png", "analogies.png", "metrics.json", "model.pt"):
        assert (tmp_path / name).stat().st_size > 0
    assert len(json.loads((tmp_path / "metrics.json").read_text())["analogy_test_indices"]) == 4


def test_m2_latent2d(tmp_path):
    run_script("latent2d", *TINY, "--epochs", "1", "--hidden-sizes", "32", "--points", "200",
               "--out", str(tmp_path))
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert {"m2", "vae"} <= set(metrics)
    assert (tmp_path / "latent2d.png").stat().st_size > 0
    reuse = tmp_path / "reuse"
    run_script("latent2d", *TINY, "--skip-vae", "--points", "200", "--out", str(reuse),
               "--m2-checkpoint", str(tmp_path / "m2" / "best.pt"))
    reused = json.loads((reuse / "metrics.json").read_text())["m2"]
    assert reused["test_error"] == pytest.approx(metrics["m2"]["test_error"])


def test_m1_then_m2_on_its_codes(tmp_path):
    """M1+M2: train the M1 VAE, then M2 on its codes with a Gaussian likelihood."""
    run_script("m1", "--dataset", "digits", "--epochs", "2", "--hidden-sizes", "32",
               "--latent-dim", "6", "--nll-samples", "20", "--nll-images", "50",
               "--out", str(tmp_path / "m1"))
    m1 = json.loads((tmp_path / "m1" / "metrics.json").read_text())
    assert m1["epochs_done"] == 2 and m1["final_test_elbo"] < 0
    assert m1["num_active_dims"] == len(m1["active_dims"]) and len(m1["posterior_mean_std"]) == 6
    assert [k for k, s in enumerate(m1["posterior_mean_std"]) if s > 0.1] == m1["active_dims"]
    # The importance-sampled NLL is at most the negative ELBO in expectation (here on 50 images
    # against the ELBO on the first 2000, so only its sign and finiteness are checked).
    assert 0 < m1["test_nll"] < float("inf") and m1["test_nll_images"] == 50
    out = tmp_path / "m2"
    # Two epochs leave M1's posterior means nearly constant: a threshold at half the largest
    # std keeps at least the most active dimension.
    threshold = max(m1["posterior_mean_std"]) / 2
    run_script("mnist", *TINY, "--m1", str(tmp_path / "m1" / "m1.pt"), "--epochs", "2",
               "--m1-min-std", str(threshold),
               "--hidden-sizes", "32", "--latent-dim", "3", "--classifier-arch", "mlp",
               "--batch-size", "200", "--out", str(out))
    run = json.loads((out / "labels20_seed0" / "metrics.json").read_text())
    assert run["model_config"]["likelihood"] == "gaussian_learned"
    # M2 reads M1's active dimensions only (posterior-mean std above the threshold over the
    # unlabelled set).
    assert run["m1_min_std"] == threshold and 1 <= run["m1_num_dims_kept"] <= 6
    assert run["model_config"]["data_dim"] == run["m1_num_dims_kept"] == len(run["m1_dims_kept"])
    assert 0.0 <= run["test_error"] <= 1.0
    figures = tmp_path / "figures"
    run_script("figures", "--checkpoint", str(out / "labels20_seed0" / "best.pt"),
               "--m1", str(tmp_path / "m1" / "m1.pt"), "--dataset", "digits", "--rows", "3",
               "--columns", "4", "--out", str(figures))
    for name in ("samples.png", "analogies.png", "model.pt"):
        assert (figures / name).stat().st_size > 0
    # The same model, test images and codes: the figure script's error is the training run's.
    figure_error = json.loads((figures / "metrics.json").read_text())["test_error"]
    assert figure_error == pytest.approx(run["test_error"])
    generative = json.loads((figures / "metrics.json").read_text())["generative_test_error"]
    assert 0.0 <= generative <= 1.0


def test_grey_m1_then_m2_on_its_grey_codes(tmp_path):
    """Kingma's M1+M2 input: an M1 of grey levels, M2 on codes of the grey images (no pruning)."""
    run_script("m1", "--dataset", "digits", "--epochs", "1", "--hidden-sizes", "16", "--latent-dim",
               "4", "--binarization", "grey", "--nll-samples", "0", "--out", str(tmp_path / "m1"))
    m1 = json.loads((tmp_path / "m1" / "metrics.json").read_text())
    assert m1["model_config"]["allow_continuous"] is True and "test_nll" not in m1
    run_script("mnist", *TINY, "--m1", str(tmp_path / "m1" / "m1.pt"), "--binarization", "grey",
               "--m1-min-std", "0", "--epochs", "1", "--hidden-sizes", "16", "--latent-dim", "2",
               "--classifier-arch", "mlp", "--batch-size", "200", "--out", str(tmp_path / "m2"))
    run = json.loads((tmp_path / "m2" / "labels20_seed0" / "metrics.json").read_text())
    assert run["m1_dims_kept"] == [0, 1, 2, 3] and run["binarization"] == "grey"
    assert 0.0 <= run["test_error"] <= 1.0


def test_m1_kingma_preset_sets_the_recipe():
    from experiments.m2.m1 import parse_args

    args = parse_args(["--preset", "kingma2014"])
    assert (args.hidden, args.latent_dim, args.activation) == ([500, 500], 50, "softplus")
    assert (args.lr, args.batch_size, args.epochs) == (3e-4, 1000, 3000)
    assert args.binarization == "grey"
    assert parse_args(["--preset", "kingma2014", "--lr", "1e-3"]).lr == 1e-3


PAPER = ["--preset", "kingma2014", *TINY, "--seeds", "0", "--hidden-sizes", "16",
         "--latent-dim", "3", "--batches-per-epoch", "3", "--epochs", "3"]


def test_m2_paper_preset_resumes_identically(tmp_path):
    """A run stopped by its time budget and resumed by a second invocation ends exactly where an
    uninterrupted one does (losses, validation accuracies, selected epoch, test error); the test
    set is read once, at the end."""
    run_script("mnist", *PAPER, "--out", str(tmp_path / "whole"))
    # A tiny budget stops the first invocation after its first epoch.
    # --defer-test: the stopped invocation does not read the test set.
    run_script("mnist", *PAPER, "--max-minutes", "0.0001", "--defer-test",
               "--out", str(tmp_path / "parts"))
    first = json.loads((tmp_path / "parts" / "labels20_seed0" / "metrics.json").read_text())
    assert first["epochs_done"] == 1 and first["status"].startswith("stopped by the time budget")
    assert "test_error" not in first
    run_script("mnist", *PAPER, "--defer-test", "--out", str(tmp_path / "parts"))
    whole, parts = (json.loads((tmp_path / name / "labels20_seed0" / "metrics.json").read_text())
                    for name in ("whole", "parts"))
    assert whole["epochs_done"] == parts["epochs_done"] == 3
    for key in ("loss", "val_accuracy", "steps"):
        assert [row[key] for row in whole["curve"]] == [row[key] for row in parts["curve"]]
    assert whole["best_epoch"] == parts["best_epoch"]
    assert whole["test_error"] == parts["test_error"]
    # The recipe as stated: grey levels, alpha = 0.1 N, Kingma's batches, init and KL.
    config = whole["model_config"]
    assert whole["binarization"] == "grey" and config["allow_continuous"] is True
    assert config["init_scale"] == 1e-3 and config["analytic_kl"] is True
    assert whole["alpha"] == 0.1 * whole["num_train"] and config["labelled_weight"] == 1.0
    assert (whole["batch_size"], whole["labelled_batch_size"], whole["lr"]) == (
        -(-(whole["num_train"] - 20) // 3), 7, 3e-4)
    assert all("test_error_current" not in row for row in whole["curve"])


def test_m1_codes_are_fresh_every_epoch_and_reproducible():
    import torch

    from pyrovae.data import M1Codes
    from pyrovae.models import VAE

    m1 = VAE(data_dim=10, latent_dim=3, hidden_sizes=[8]).eval()
    x, y = torch.rand(30, 10), torch.arange(30) % 3
    stream = M1Codes(m1, x, seed=4, y=y)
    (z_a, y_a), (z_b, _) = stream.for_epoch(2), M1Codes(m1, x, seed=4, y=y).for_epoch(2)
    assert z_a.shape == (30, 3) and torch.equal(y_a, y) and len(stream) == 30
    assert torch.equal(z_a, z_b)  # a resumed run sees the same codes
    assert not torch.allclose(stream.for_epoch(3)[0], z_a)  # a fresh draw every epoch
    (z_u,) = M1Codes(m1, x, seed=4).for_epoch(2)  # unlabelled: codes only
    assert torch.equal(z_u, z_a)


def test_m1_baseline_smoke(tmp_path):
    run_script("m1", "--dataset", "digits", "--epochs", "1", "--hidden-sizes", "16",
               "--latent-dim", "4", "--out", str(tmp_path / "m1"))
    run_script("m1_baseline", "--m1", str(tmp_path / "m1" / "m1.pt"), "--dataset", "digits",
               "--n-labelled", "20", "--n-validation", "100", "--seeds", "0", "1", "--epochs", "3",
               "--hidden-sizes", "16", "--m1-min-std", "0.001", "--out", str(tmp_path / "base"))
    summary = json.loads((tmp_path / "base" / "metrics.json").read_text())
    assert summary["by_labels"]["20"]["seeds"] == [0, 1]
    run = json.loads((tmp_path / "base" / "labels20_seed1.json").read_text())
    assert len(run["curve"]) == 3 and 0.0 <= run["test_error"] <= 1.0
    assert run["m1_min_std"] == 0.001 and 0 < len(run["m1_dims_kept"]) <= 4
    run_script("m1_baseline", "--m1", str(tmp_path / "m1" / "m1.pt"), "--dataset", "digits",
               "--n-labelled", "20", "--n-validation", "100", "--epochs", "1",
               "--hidden-sizes", "16", "--m1-min-std", "0", "--out", str(tmp_path / "all"))
    kept = json.loads((tmp_path / "all" / "labels20_seed0.json").read_text())["m1_dims_kept"]
    assert kept == [0, 1, 2, 3]  # 0 keeps every dimension
    best = max(run["curve"], key=lambda row: row["val_accuracy"])
    assert run["best_val_accuracy"] == best["val_accuracy"]


def test_m2_cpu_preset_trains_with_its_objective_and_precision(tmp_path):
    from experiments.m2.mnist import parse_args

    args = parse_args(["--preset", "cpu_fast"])
    assert (args.objective, args.precision, args.threads) == ("sum_and_sample", "bf16", 2)
    assert parse_args(["--preset", "cpu_fast", "--objective", "enum"]).objective == "enum"
    run_script("mnist", "--preset", "cpu_fast", *TINY, "--hidden-sizes", "16", "--latent-dim", "3",
               "--epochs", "1", "--threads", "1", "--out", str(tmp_path))
    run = json.loads((tmp_path / "labels20_seed0" / "metrics.json").read_text())
    assert (run["objective"], run["precision"]) == ("sum_and_sample", "bf16")
    assert 0.0 <= run["test_error"] <= 1.0


def test_error_curves_figure(trained, tmp_path):
    from experiments.m2.error_curves import cpu_minutes

    # 120 CPU-seconds over epochs of 10, 30 and 20 wall seconds: shared 1:3:2
    assert cpu_minutes([{"seconds": s} for s in (10.0, 30.0, 20.0)], 120.0) == pytest.approx(
        [20 / 60, 80 / 60, 120 / 60])
    with pytest.raises(ValueError, match="timed"):
        cpu_minutes([], 1.0)
    out = tmp_path / "curves.png"
    result = subprocess.run(
        [sys.executable, "-m", "experiments.m2.error_curves", "--out", str(out),
         "--run", "seed 0", str(trained / "labels20_seed0" / "metrics.json"),
         "--run", "seed 1", str(trained / "labels20_seed1" / "metrics.json"),
         "--cpu-seconds", "2", "90", "--target", "paper", "3.33"],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert out.stat().st_size > 10_000
    lines = result.stdout.splitlines()
    assert len(lines) == 2 and lines[0].startswith("seed 0 (test ")
    assert lines[1].endswith("1.5 CPU-minutes")  # the second run's total, as given
