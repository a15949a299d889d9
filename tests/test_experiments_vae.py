"""Every VAE experiment runs end to end with tiny arguments (a subprocess each, < ~30 s)."""

import json
import os
import subprocess
import sys

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
        ["--dataset", "digits", "--latent", "4", "--steps", "3", "--num-samples", "10",
         "--eval-examples", "20"],
        ["metrics.json", "model.pt", "reconstructions.png", "interpolations.png",
         "attribute_directions.png"],
    ),
    "visualise-gaussian": (
        "visualise",
        ["--dataset", "digits", "--latent", "2", "--steps", "3", "--num-samples", "10",
         "--eval-examples", "20", "--likelihood", "gaussian_learned"],
        ["metrics.json", "model.pt", "attribute_directions.png"],
    ),
    "gradient_variance": (
        "gradient_variance",
        ["--dataset", "digits", "--latent", "3", "--draws", "5", "--particles", "1", "2",
         "--batch", "10"],
        ["metrics.json", "model.pt", "gradient_variance.png", "table.md"],
    ),
}
MNIST_CASES = {
    "visualise-mnist-conv": ["--dataset", "mnist", "--arch", "conv", "--hidden", "32"],
    "visualise-fashion-mlp": ["--dataset", "fashion-mnist", "--hidden", "32"],
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
    args = [*MNIST_CASES[case], "--latent", "3", "--steps", "3", "--num-samples", "5",
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
