"""The lecture's two uses of the sequence VAEs: finishing a sketch, optimising in latent space."""

import numpy as np
import pytest
import torch

from pyrovae.infer.latent_optimization import (
    ascend,
    fit_property_predictor,
    optimize_latent,
    random_search,
)
from pyrovae.infer.sketch_completion import _draw_row, complete_sketch, first_strokes
from pyrovae.models import SketchRNN


# ------------------------------------------------------------------------ sketch completion
def _sketch(length=12, lifts=(2, 5, 9)):
    generator = torch.Generator().manual_seed(1)
    x = torch.zeros(20, 5)
    x[:, 4] = 1.0
    x[:length, :2] = torch.randn(length, 2, generator=generator)
    x[:length, 2:] = torch.tensor([1.0, 0.0, 0.0])
    for t in lifts:
        x[t, 2:] = torch.tensor([0.0, 1.0, 0.0])
    return x, length


def _tiny_sketch_rnn():
    torch.manual_seed(0)
    return SketchRNN(latent_dim=3, encoder_size=6, decoder_size=7, num_mixtures=2,
                     max_length=19)


def test_first_strokes_end_at_the_kth_pen_lift():
    x, length = _sketch()
    assert first_strokes(x, length, 1).shape[0] == 3
    assert first_strokes(x, length, 2).shape[0] == 6
    assert torch.equal(first_strokes(x, length, 3), x[:10])
    assert first_strokes(x, length, 4).shape[0] == length  # fewer strokes: the whole sketch


def test_completion_keeps_the_prefix_and_ends_with_end_rows():
    model = _tiny_sketch_rnn()
    x, length = _sketch()
    prefix = first_strokes(x, length, 2)
    for latent in ("encode", "prior", torch.zeros(3)):
        drawn, lengths = complete_sketch(model, prefix, latent, num_samples=5, temperature=0.5,
                                         generator=torch.Generator().manual_seed(0))
        assert drawn.shape[0] == 5 and drawn.shape[1] <= 19
        assert torch.equal(drawn[:, :6], prefix.expand(5, -1, -1))
        assert bool((lengths >= 6).all()) and bool((lengths <= 19).all())
        for row, n in zip(drawn, lengths.tolist(), strict=True):
            assert torch.equal(row[n:], torch.tensor([0.0, 0, 0, 0, 1]).expand(len(row) - n, 5))
    with pytest.raises(ValueError, match="latent"):
        complete_sketch(model, prefix, "posterior")


def test_completion_conditions_on_the_prefix_as_teacher_forcing_does():
    # The first new row must be drawn from the decoder's step-L distribution given the prefix:
    # the teacher-forced decoder over (prefix, anything) gives the same head output at step L,
    # so the same generator state draws the same row.
    model = _tiny_sketch_rnn().eval()
    x, length = _sketch()
    prefix = first_strokes(x, length, 2)
    z = torch.randn(2, 3, generator=torch.Generator().manual_seed(3))
    drawn, _ = complete_sketch(model, prefix, z, num_samples=2, temperature=0.7,
                               generator=torch.Generator().manual_seed(9))
    with torch.no_grad():
        out = model._decode_teacher_forced(z, x[: prefix.shape[0] + 1])[:, prefix.shape[0]]
        expected = _draw_row(model, out, 0.7, torch.Generator().manual_seed(9))
    ended = expected[:, 4] == 1  # a row drawing the end state is stored as the end row
    expected[ended] = torch.tensor([0.0, 0, 0, 0, 1])
    torch.testing.assert_close(drawn[:, prefix.shape[0]], expected, rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------- latent optimisation
def _toy_problem():
    """Codes in 2-d decode to strings naming z_0 (to 0.01); the property peaks at z_0 = 2.5
    (value 0) and strings with z_0 > 3.2 are "invalid" (NaN), like SMILES that do not parse."""

    def decode(z):
        return [f"v{float(v):.2f}" for v in z[:, 0]]

    def score(outputs):
        values = np.array([float(s[1:]) for s in outputs])
        return np.where(values > 3.2, np.nan, -((values - 2.5) ** 2))

    return decode, score


def test_predictor_learns_a_smooth_property():
    generator = torch.Generator().manual_seed(0)
    z = torch.randn(400, 3, generator=generator)
    y = torch.sin(z[:, 0]) + 0.5 * z[:, 1]
    y[:5] = float("nan")  # invalid molecules have no value: dropped
    _, metrics = fit_property_predictor(z, y, epochs=400, seed=0)
    assert metrics["train_size"] + metrics["validation_size"] == 395
    assert metrics["validation_r2"] > 0.9  # a smooth 2-d function, 355 points: R^2 ~ 0.99


def test_ascent_follows_the_gradient_and_the_prior_pull():
    z0 = torch.zeros(4, 2)
    path = ascend(lambda z: -(z[:, 0] - 2.0).square(), z0, steps=300, lr=0.05,
                  prior_weight=0.0, record_every=100)
    assert path.shape == (3, 4, 2)
    torch.testing.assert_close(path[-1, :, 0], torch.full((4,), 2.0), atol=0.05, rtol=0)
    # with the pull, the optimum of -(z - 2)^2 - w z^2 / 2 is at 2 / (1 + w / 2)
    pulled = ascend(lambda z: -(z[:, 0] - 2.0).square(), z0, steps=400, lr=0.05,
                    prior_weight=1.0, record_every=400)
    torch.testing.assert_close(pulled[-1, :, 0], torch.full((4,), 4 / 3), atol=0.05, rtol=0)


def test_latent_search_beats_the_training_set_within_its_budget():
    decode, score = _toy_problem()
    generator = torch.Generator().manual_seed(0)
    z_train = torch.randn(300, 2, generator=generator) * 0.5  # training codes: z_0 near 0
    y_train = torch.tensor(score(decode(z_train)), dtype=torch.float32)
    predictor, _ = fit_property_predictor(z_train, y_train, epochs=300, seed=0)
    best = torch.topk(y_train, 5).indices
    search = optimize_latent(decode, score, predictor, z_train[best], steps=100, lr=0.05,
                             prior_weight=0.01, record_every=10)
    assert search.decodes == 5 * 10 == len(search.outputs)
    found = search.summary(k=3)
    training_best = float(y_train.max())
    assert found["best"] > training_best
    assert all(np.isfinite(s) for _, s in found["top3"])  # only valid outputs are reported
    baseline = random_search(decode, score, 2, search.decodes, seed=1)
    assert baseline.decodes == search.decodes


# ----------------------------------------------------------------------------- the scripts
def _script_env(root):
    import os

    from conftest import REPO

    env = dict(os.environ, PYTHONPATH=str(REPO), PYROVAE_DATA=str(root), MPLBACKEND="Agg",
               OMP_NUM_THREADS="1")
    return REPO, env


def _run(module, *args, root):
    import subprocess
    import sys

    repo, env = _script_env(root)
    subprocess.run([sys.executable, "-m", module, *args], cwd=repo, env=env, check=True,
                   capture_output=True, timeout=300)


def test_completion_script_smoke(tmp_path):
    import json

    from test_sketch_rnn import sheep_root

    root = sheep_root()
    _run("experiments.sketch_rnn.train", "--out", str(tmp_path / "train"), "--device", "cpu",
         "--train-limit", "20", "--test-limit", "4", "--epochs", "1", "--batch-size", "10",
         "--latent-dim", "4", "--encoder-size", "8", "--decoder-size", "8",
         "--num-mixtures", "2", "--max-length", "60", root=root)
    out = tmp_path / "complete"
    _run("experiments.sketch_rnn.complete", "--checkpoint",
         str(tmp_path / "train" / "checkpoints" / "last.pt"), "--sketches", "2",
         "--samples", "2", "--temperatures", "0.2", "0.5", "--out", str(out), "--device", "cpu",
         root=root)
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["completions"]) == {"encode/tau=0.2", "encode/tau=0.5", "prior/tau=0.2",
                                           "prior/tau=0.5"}
    assert all(v["n"] == 4 for v in metrics["completions"].values())
    for name in ("completion_encode.png", "completion_prior.png"):
        assert (out / name).stat().st_size > 0


def test_optimization_script_smoke(tmp_path):
    import json

    pytest.importorskip("rdkit")
    from test_smiles_vae import moses_root

    root = moses_root()
    train = tmp_path / "train"
    _run("experiments.smiles.train", "--train-limit", "200", "--epoch-size", "100",
         "--batch-size", "50", "--latent-dim", "3", "--decoder-size", "8", "--encoder-size", "4",
         "--embedding-dim", "4", "--epochs", "1", "--monitor-size", "20", "--device", "cpu",
         "--out", str(train), root=root)
    out = tmp_path / "optimize"
    _run("experiments.smiles.optimize", "--checkpoint", str(train / "last.pt"), "--subset",
         "60", "--starts", "3", "--steps", "20", "--record-every", "10",
         "--predictor-epochs", "20", "--out", str(out), "--device", "cpu", root=root)
    result = json.loads((out / "metrics.json").read_text())
    assert result["latent_search"]["decodes"] == 3 * 2
    assert result["random_prior_same_decodes"]["decodes"] == 6
    assert result["training_subset"]["decodes"] <= 60
    # every reported molecule is valid: its score is RDKit's, a finite number
    for part in ("latent_search", "random_prior_same_decodes", "training_subset"):
        assert all(np.isfinite(value) for _, value in result[part]["top10"])
