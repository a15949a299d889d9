"""Every VAE experiment runs end to end with tiny arguments (a subprocess each, < ~30 s)."""

import fcntl
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import REPO

TINY = ["--train-size", "300", "--test-size", "120", "--epochs", "1", "--batch-size", "50"]
CASES = {
    "headline": (
        "headline",
        ["--dataset", "digits", "--eval-examples", "10", "--num-samples", "20",
         "--monitor-examples", "50", "--eval-every", "1"],
        ["metrics.json", "elbo/last.pt", "iwae/last.pt", "curves.png", "table.md"],
    ),
    "latent2d": (
        "latent2d",
        ["--dataset", "digits", "--num-samples", "10", "--eval-examples", "20", "--grid", "4"],
        ["metrics.json", "model.pt", "manifold.png", "latent_scatter.png"],
    ),
    "latent_sizes": (
        "latent_sizes",
        ["--dataset", "digits", "--sizes", "2", "5", "--samples", "9", "--num-samples", "10",
         "--eval-examples", "20"],
        ["metrics.json", "model_z2.pt", "model_z5.pt", "samples_by_latent_size.png", "table.md"],
    ),
    "visualise-digits": (
        "visualise",
        ["--dataset", "digits", "--latent-dim", "4", "--steps", "3", "--num-samples", "10",
         "--eval-examples", "20"],
        ["metrics.json", "model.pt", "reconstructions.png", "interpolations.png",
         "attribute_directions.png"],
    ),
    "visualise-gaussian": (
        "visualise",
        ["--dataset", "digits", "--latent-dim", "2", "--steps", "3", "--num-samples", "10",
         "--eval-examples", "20", "--likelihood", "gaussian_learned"],
        ["metrics.json", "model.pt", "attribute_directions.png"],
    ),
    "gradient_variance": (
        "gradient_variance",
        ["--dataset", "digits", "--latent-dim", "3", "--draws", "5", "--particles", "1", "2",
         "--batch", "10"],
        ["metrics.json", "model.pt", "gradient_variance.png", "table.md"],
    ),
}
MNIST_CASES = {
    "visualise-mnist-conv": ["--dataset", "mnist", "--arch", "conv", "--hidden-sizes", "32"],
    "visualise-fashion-mlp": ["--dataset", "fashion-mnist", "--hidden-sizes", "32"],
}


def run(script, args, out):
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    cmd = [sys.executable, "-m", f"experiments.vae.{script}", *TINY, *args, "--out", str(out)]
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return json.loads((out / "metrics.json").read_text())


@pytest.mark.parametrize("case", sorted(CASES))
def test_experiment_smoke(case, tmp_path):
    script, args, outputs = CASES[case]
    metrics = run(script, args, tmp_path)
    missing = [name for name in outputs if not (tmp_path / name).is_file()]
    assert not missing, f"{script} did not write {missing}"
    assert metrics["command"].startswith(f"python -m experiments.vae.{script}")
    if case == "headline":
        for objective in ("elbo", "iwae"):
            result = metrics["runs"][objective]["test_subset"]
            assert result["num_importance_samples"] == 20 and result["num_examples"] == 10
            assert result["nll"] > 0 and result["elbo"] < 0
            assert "test_elbo" in metrics["runs"][objective]["curve"][-1]


@pytest.mark.parametrize("case", sorted(MNIST_CASES))
def test_visualise_on_mnist_sets(case, tmp_path, mnist_root):
    if "fashion" in case and not (mnist_root / "FashionMNIST" / "raw").is_dir():
        pytest.skip("Fashion-MNIST not under PYROVAE_DATA")
    args = [*MNIST_CASES[case], "--latent-dim", "3", "--steps", "3", "--num-samples", "5",
            "--eval-examples", "10", "--data-root", str(mnist_root)]
    metrics = run("visualise", args, tmp_path)
    assert metrics["dataset"] in ("mnist", "fashion-mnist")
    assert (tmp_path / "attribute_directions.png").is_file()


def test_evaluate_script_reloads_a_checkpoint(tmp_path):
    trained = tmp_path / "trained"
    run("latent2d", ["--dataset", "digits", "--num-samples", "0", "--grid", "3"], trained)
    out = tmp_path / "evaluated"
    cmd = [sys.executable, "-m", "experiments.vae.evaluate", "--dataset", "digits",
           "--checkpoints", str(trained / "model.pt"), "--test-size", "30", "--num-samples", "10",
           "--out", str(out)]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    (result,) = json.loads((out / "metrics.json").read_text())["models"].values()
    assert result["num_examples"] == 30 and result["num_importance_samples"] == 10
    assert result["model_config"]["latent_dim"] == 2


def test_headline_protocol_goes_on_across_invocations(tmp_path):
    # A budget used up after the first epoch: the run stops there, unevaluated; the same
    # command again resumes to the last epoch, then evaluates and fills the table.
    args = ["--dataset", "digits", "--objectives", "elbo", "--epochs", "2", "--minutes", "1e-9",
            "--eval-examples", "10", "--num-samples", "20", "--monitor-examples", "50",
            "--compiled"]
    first = run("headline", args, tmp_path)["runs"]["elbo"]
    assert first["epochs"] == 1 and not first["complete"] and "test_subset" not in first
    assert "not evaluated" in (tmp_path / "table.md").read_text()
    second = run("headline", args, tmp_path)["runs"]["elbo"]
    assert second["epochs"] == 2 and second["complete"]
    assert second["evaluated_at_epoch"] == 2 and second["test_subset"]["num_examples"] == 10
    assert [row["epoch"] for row in second["curve"]] == [0, 1]
    assert "(K = 20, 10)" in (tmp_path / "table.md").read_text()


def test_latent_sizes_on_synthetic_svhn_keeps_colour_levels(tmp_path):
    """A conv VAE on colour images: the model gets the data's (3, 32, 32), its Bernoulli
    likelihood scores the unbinarised levels, and the sample grid is drawn."""
    from test_data_colour import write_svhn

    from pyrovae import load_checkpoint

    for split, n in [("train", 60), ("test", 20)]:
        write_svhn(tmp_path / "data" / "SVHN" / f"{split}_32x32.mat", n=n, seed=len(split))
    out = tmp_path / "out"
    metrics = run("latent_sizes", ["--dataset", "svhn", "--data-root", str(tmp_path / "data"),
                                   "--arch", "conv", "--hidden-sizes", "16", "--sizes", "2",
                                   "--samples", "4", "--num-samples", "5",
                                   "--eval-examples", "5"], out)
    assert metrics["dataset"] == "svhn" and metrics["arch"] == "conv"
    assert (out / "samples_by_latent_size.png").stat().st_size > 0
    config = load_checkpoint(out / "model_z2.pt").config
    assert config["image_shape"] == [3, 32, 32] and config["allow_continuous"]


def test_headline_refuses_colour_data_in_one_line(tmp_path):
    cmd = [sys.executable, "-m", "experiments.vae.headline", "--dataset", "svhn",
           "--out", str(tmp_path)]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        "error: --dataset svhn: colour images; the headline is Burda et al.'s protocol on "
        "binarised grey images"]


def test_image_grid_draws_grey_and_colour_images():
    from experiments.figures import image_grid

    red_blue = np.zeros((2, 3, 2, 2), dtype=np.float32)
    red_blue[0, 0], red_blue[1, 2] = 1.0, 1.0  # image 0 all red, image 1 all blue
    grid = image_grid(red_blue.reshape(2, -1), (3, 2, 2), nrow=2, padding=1, pad_value=0.5)
    assert grid.shape == (4, 7, 3)
    assert grid[1:3, 1:3].tolist() == [[[1.0, 0.0, 0.0]] * 2] * 2
    assert grid[1:3, 4:6].tolist() == [[[0.0, 0.0, 1.0]] * 2] * 2
    assert grid[0, 0].tolist() == [0.5] * 3
    grey = np.arange(8, dtype=np.float32).reshape(2, 4) / 8
    assert np.array_equal(image_grid(grey, (1, 2, 2)), image_grid(grey, (2, 2)))
    assert image_grid(grey, (2, 2), nrow=2, padding=0).tolist() == [
        [0.0, 0.125, 0.5, 0.625], [0.25, 0.375, 0.75, 0.875]]


def test_a_finished_recipe_run_is_extended_in_its_last_stage(tmp_path):
    """``--epochs 10 --schedule-epochs 8`` resumes a finished 8-epoch recipe run: its two new
    epochs run at the last stage's rate (1e-3 * 10^(-7/7)) and the run is evaluated again;
    a larger ``--epochs`` alone would change the schedule and is refused."""
    args = ["--dataset", "digits", "--recipe", "burda-compressed", "--train-size", "1100",
            "--epochs", "8", "--eval-examples", "10", "--num-samples", "20",
            "--monitor-examples", "50", "--threads", "1"]
    first = run("headline", args, tmp_path)["runs"]["iwae"]
    assert first["complete"] and first["evaluated_at_epoch"] == 8
    env = dict(os.environ, OMP_NUM_THREADS="1")
    refused = subprocess.run(
        [sys.executable, "-m", "experiments.vae.headline", *TINY, *args, "--epochs", "10",
         "--out", str(tmp_path)], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert refused.returncode != 0 and "epochs: 8 -> 10" in refused.stderr
    second = run("headline", [*args, "--epochs", "10", "--schedule-epochs", "8"], tmp_path)
    rows = second["runs"]["iwae"]["curve"]
    assert [row["epoch"] for row in rows] == list(range(10))
    assert rows[8]["lr"] == rows[9]["lr"] == pytest.approx(1e-4)
    assert rows[7]["lr"] == pytest.approx(1e-4) and rows[0]["lr"] == pytest.approx(1e-3)
    assert second["runs"]["iwae"]["evaluated_at_epoch"] == 10


def test_extending_a_run_another_process_holds_leaves_its_options_alone(tmp_path):
    """``extend_run`` locks the folder before it rewrites the stored ``--epochs``: while
    another holder has the lock it is refused and ``run_options.json`` stays as it was."""
    from experiments.vae.headline import extend_run, parse_args
    from pyrovae.runs.launch import RunError

    stored = {"options": {"epochs": 8, "schedule_epochs": None}}
    (tmp_path / "run_options.json").write_text(json.dumps(stored))
    holder = os.open(tmp_path / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
    fcntl.flock(holder, fcntl.LOCK_EX | fcntl.LOCK_NB)  # another open file: another holder
    try:
        args = parse_args(["--recipe", "burda-compressed", "--epochs", "10",
                           "--schedule-epochs", "8", "--out", str(tmp_path)])
        with pytest.raises(RunError, match="in use"):
            extend_run(args)
    finally:
        os.close(holder)
    assert json.loads((tmp_path / "run_options.json").read_text()) == stored
