"""SketchRNN: masked sequence likelihoods against explicit sums, the bivariate mixture against
SciPy, padding invariance, the stroke-5 data (md5 before unpickling), training and the script."""

import io
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyro
import pytest
import torch
from conftest import REPO
from pyro import poutine
from scipy.stats import multivariate_normal

from pyrovae.data import download, sketches
from pyrovae.data.mnist import ChecksumError, DatasetNotFoundError
from pyrovae.data.sketches import (
    load_sketches,
    load_stroke3,
    stroke3_to_stroke5,
    stroke5_to_stroke3,
)
from pyrovae.infer import KLAnnealing, fit
from pyrovae.models.sequence import masked_sequence, step_mask
from pyrovae.models.sketch_rnn import END, SketchRNN, bivariate_normal_log_prob


def sheep_root() -> Path:
    root = os.environ.get("PYROVAE_DATA")
    if not root or not (Path(root) / "sketch-rnn-datasets/aaron_sheep/aaron_sheep.npz").exists():
        pytest.skip("aaron_sheep not found: set PYROVAE_DATA to a folder with sketch-rnn-datasets")
    return Path(root)


def random_stroke3(rng, lengths):
    out = []
    for n in lengths:
        s = np.zeros((n, 3), dtype=np.int16)
        s[:, :2] = rng.integers(-30, 31, size=(n, 2))
        s[:, 2] = rng.random(n) < 0.2
        s[-1, 2] = 1
        out.append(s)
    return out


def tiny_model(pen_loss="sketch", **kw):
    model = SketchRNN(latent_dim=3, encoder_size=5, decoder_size=6, num_mixtures=2,
                      max_length=12, pen_loss=pen_loss, **kw)
    return model.double()


def batch(lengths=(4, 1, 7, 10), num_steps=12, seed=0):
    x, lengths = stroke3_to_stroke5(random_stroke3(np.random.default_rng(seed), lengths),
                                    num_steps, dtype=torch.float64)
    x[..., :2] /= 10.0
    return x, lengths


def model_log_probs(model, x, lengths, z):
    """Per-sketch log-probabilities of the observed sites at a fixed ``z``."""
    conditioned = poutine.condition(model.model, data={"z": z})
    with torch.no_grad():
        trace = poutine.trace(conditioned).get_trace(x, lengths)
        trace.compute_log_prob()
    return trace.nodes["offsets"]["log_prob"], trace.nodes["pen"]["log_prob"]


# ------------------------------------------------------------------------------ likelihoods
@pytest.mark.parametrize("pen_loss", ["sketch", "padded"])
def test_masked_log_likelihood_equals_explicit_sum_over_valid_steps(pen_loss):
    model = tiny_model(pen_loss)
    x, lengths = batch()
    z = torch.randn(len(x), 3, dtype=torch.float64)
    offsets_lp, pen_lp = model_log_probs(model, x, lengths, z)
    with torch.no_grad():
        out = model._decode_teacher_forced(z, model._clean(x, lengths))
    m = model.num_mixtures
    for n, length in enumerate(lengths.tolist()):
        expected_offsets, expected_pen = 0.0, 0.0
        pen_steps = length + 1 if pen_loss == "sketch" else model.max_length
        for t in range(pen_steps):
            o = out[n, t]
            target = x[n, t] if t < length else torch.tensor(END, dtype=torch.float64)
            pen_logits = o[6 * m:]
            expected_pen += float(pen_logits[int(target[2:].argmax())] - pen_logits.logsumexp(0))
            if t < length:
                log_weights = o[:m] - o[:m].logsumexp(0)
                terms = [
                    float(log_weights[j]) + math.log(multivariate_normal.pdf(
                        target[:2].numpy(), mean=[float(o[m + j]), float(o[2 * m + j])],
                        cov=_covariance(o, j, m, model.min_sigma)))
                    for j in range(m)
                ]
                expected_offsets += float(np.logaddexp.reduce(terms))
        assert abs(float(offsets_lp[n]) - expected_offsets) < 1e-10 * max(1, abs(expected_offsets))
        assert abs(float(pen_lp[n]) - expected_pen) < 1e-10 * max(1, abs(expected_pen))


def _covariance(o, j, m, min_sigma):
    sx = math.exp(float(o[3 * m + j])) + min_sigma
    sy = math.exp(float(o[4 * m + j])) + min_sigma
    rho = math.tanh(float(o[5 * m + j])) * (1 - 1e-5)
    return [[sx * sx, rho * sx * sy], [rho * sx * sy, sy * sy]]


def test_bivariate_normal_log_prob_matches_scipy():
    rng = np.random.default_rng(1)
    for _ in range(20):
        mu = rng.normal(size=2)
        sx, sy = np.exp(rng.normal(size=2))
        rho = rng.uniform(-0.99, 0.99)
        point = rng.normal(size=2) * 2
        cov = [[sx * sx, rho * sx * sy], [rho * sx * sy, sy * sy]]
        expected = multivariate_normal.logpdf(point, mean=mu, cov=cov)
        t = [torch.tensor(v, dtype=torch.float64) for v in (*point, *mu, sx, sy, rho)]
        assert abs(float(bivariate_normal_log_prob(*t)) - expected) < 1e-10


def test_masked_sequence_and_step_mask():
    lengths = torch.tensor([0, 2, 5])
    mask = step_mask(lengths, 4)
    assert mask.tolist() == [[False] * 4, [True, True, False, False], [True] * 4]
    loc = torch.randn(3, 4, dtype=torch.float64)
    value = torch.randn(3, 4, dtype=torch.float64)
    value[0, 0] = 1e200  # its log-density is -inf, but it is masked out
    d = masked_sequence(pyro.distributions.Normal(loc, 1.0), mask)
    lp = d.log_prob(value)
    normal = torch.distributions.Normal(loc, 1.0)
    for n in range(3):
        expected = sum(float(normal.log_prob(value)[n, t]) for t in range(min(int(lengths[n]), 4)))
        assert abs(float(lp[n]) - expected) < 1e-12


@pytest.mark.parametrize("pen_loss", ["sketch", "padded"])
def test_padding_never_changes_a_log_probability(pen_loss):
    model = tiny_model(pen_loss)
    x, lengths = batch()
    z = torch.randn(len(x), 3, dtype=torch.float64)
    reference = model_log_probs(model, x, lengths, z)
    garbage = x.clone()
    after = ~step_mask(lengths, x.shape[1])
    garbage[after] = torch.randn(int(after.sum()), 5, dtype=torch.float64) * 100
    longer = torch.cat([garbage, torch.randn(len(x), 9, 5, dtype=torch.float64) * 100], dim=1)
    for variant in (garbage, longer):
        for a, b in zip(reference, model_log_probs(model, variant, lengths, z), strict=True):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(model.encode(variant, lengths), model.encode(x, lengths),
                                   rtol=1e-12, atol=1e-12)


def test_kl_weight_and_floor_enter_the_objective_as_documented():
    model = tiny_model(kl_weight=0.25, kl_floor=50.0)
    x, lengths = batch()
    subsample = torch.tensor([0, 2])
    with torch.no_grad():
        guide_trace = poutine.trace(model.guide).get_trace(x, lengths, subsample=subsample)
        model_trace = poutine.trace(poutine.replay(model.model, trace=guide_trace)).get_trace(
            x, lengths, subsample=subsample)
    n_over_m = len(x) / len(subsample)
    assert float(model_trace.nodes["z"]["scale"]) == pytest.approx(0.25 * n_over_m, rel=1e-12)
    assert float(guide_trace.nodes["z"]["scale"]) == pytest.approx(0.25 * n_over_m, rel=1e-12)
    q = guide_trace.nodes["z"]["fn"]
    kl = torch.distributions.kl_divergence(q, model_trace.nodes["z"]["fn"])
    expected = len(x) * 0.25 * max(0.0, 50.0 - float(kl.mean()))
    factor = guide_trace.nodes["kl_floor"]["fn"].log_factor
    assert float(factor) == pytest.approx(expected, rel=1e-10)
    callback = KLAnnealing(0.1, rate=0.5, weight=2.0)
    row = callback(type("Info", (), {"step": 3, "module": model})())
    assert float(model.kl_weight) == pytest.approx(2.0 * (1 - 0.9 * 0.125))
    assert row["kl_weight_next"] == pytest.approx(float(model.kl_weight))


def test_loss_terms_are_the_trace_log_probs():
    model = tiny_model()
    x, lengths = batch()
    pyro.set_rng_seed(3)
    terms = model.loss_terms(x, lengths)
    pyro.set_rng_seed(3)
    loc, scale = model.encode(x, lengths)
    z = loc + scale * torch.randn_like(loc)
    offsets, pen = model_log_probs(model, x, lengths, z)
    torch.testing.assert_close(terms["offsets"], offsets)
    torch.testing.assert_close(terms["pen"], pen)
    expected_kl = 0.5 * (loc**2 + scale**2 - 1 - 2 * scale.log()).sum(-1)
    torch.testing.assert_close(terms["kl"], expected_kl)


def traced_loss_terms(model, x, lengths):
    """SketchRNN's loss terms as ``SketchRNN.loss_terms`` read them before it called
    ``elbo_terms``: one guide trace, the model replayed on it, closed-form KL."""
    with torch.no_grad():
        guide_trace = poutine.trace(model.guide).get_trace(x, lengths)
        model_trace = poutine.trace(poutine.replay(model.model, trace=guide_trace)).get_trace(
            x, lengths)
    terms = {name: model_trace.nodes[name]["fn"].log_prob(model_trace.nodes[name]["value"])
             for name in ("offsets", "pen")}
    terms["kl"] = torch.distributions.kl_divergence(guide_trace.nodes["z"]["fn"],
                                                    model_trace.nodes["z"]["fn"])
    return terms


@pytest.mark.parametrize("pen_loss, kl_floor", [("sketch", 0.0), ("padded", 5.0)])
def test_loss_terms_through_elbo_terms_are_unchanged(pen_loss, kl_floor):
    model = tiny_model(pen_loss, kl_weight=0.3, kl_floor=kl_floor)
    x, lengths = batch()
    pyro.set_rng_seed(5)
    terms = model.loss_terms(x, lengths)
    pyro.set_rng_seed(5)
    before = traced_loss_terms(model, x, lengths)
    assert terms.keys() == before.keys()
    for name in before:
        assert torch.equal(terms[name], before[name]), name  # the same draws, the same sums


# ------------------------------------------------------------------------------- sampling
def test_decoded_sketches_end_with_end_rows():
    model = tiny_model()
    gen = torch.Generator().manual_seed(0)
    for tau in (0.1, 1.0):
        x, lengths = model.sample(16, temperature=tau, generator=gen)
        assert x.shape[0] == 16 and x.shape[1] <= model.max_length
        valid = step_mask(lengths, x.shape[1])
        assert (x[valid][:, 4] == 0).all()  # no end state before a sketch's length
        assert (x[~valid] == torch.tensor(END, dtype=x.dtype)).all()
        assert (x[valid][:, 2:].sum(-1) == 1).all()


def test_temperature_narrows_the_offsets():
    model = tiny_model()
    z = torch.randn(200, 3, dtype=torch.float64)
    spreads = []
    for tau in (0.01, 1.0):
        x, _ = model.generate(z, temperature=tau, max_length=1,
                            generator=torch.Generator().manual_seed(0))
        spreads.append(float(x[:, 0, :2].std()))
    # tau scales each Gaussian's covariance and sharpens the mixture weights; with 200 draws the
    # low-temperature spread (means of the chosen components only) is far below tau = 1's
    assert spreads[0] < 0.5 * spreads[1]


# ---------------------------------------------------------------------------------- training
def test_tiny_model_overfits_a_handful_of_sketches():
    x, lengths = batch(lengths=(5, 6, 4, 7), num_steps=8, seed=4)
    x, lengths = x.float(), lengths
    model = SketchRNN(latent_dim=4, encoder_size=16, decoder_size=32, num_mixtures=3,
                      max_length=8, kl_weight=0.1)
    history = fit(model, (x, lengths), epochs=150, batch_size=4, lr=1e-2, clip_norm=5.0, seed=0)
    first, last = history.losses[0] / 4, history.losses[-1] / 4
    # measured with seed 0: 38.0 nats per sketch (loss / 4) at the first step, 5.3 after 150
    # steps (and below 0 after 300); the threshold 10 leaves room for other BLAS builds while a
    # model that does not learn stays near its starting 38
    assert first > 30 and last < 10, (first, last)


# -------------------------------------------------------------------------------------- data
def test_stroke3_stroke5_round_trip():
    rng = np.random.default_rng(2)
    strokes = random_stroke3(rng, [3, 1, 9])
    x, lengths = stroke3_to_stroke5(strokes)
    assert x.shape == (3, 10, 5) and lengths.tolist() == [3, 1, 9]
    assert (x[~step_mask(lengths, 10)] == torch.tensor(END)).all()
    assert (x[step_mask(lengths, 10)][:, 2:4].sum(-1) == 1).all()
    for a, b in zip(strokes, stroke5_to_stroke3(x, lengths), strict=True):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="shorter"):
        stroke3_to_stroke5(strokes, num_steps=5)


def _fake_npz() -> bytes:
    buffer = io.BytesIO()
    arrays = np.empty(2, dtype=object)
    arrays[0], arrays[1] = np.zeros((2, 3), np.int16), np.ones((3, 3), np.int16)
    np.savez(buffer, train=arrays, valid=arrays, test=arrays)
    return buffer.getvalue()


def test_corrupt_file_is_rejected_before_unpickling(tmp_path, monkeypatch):
    path = tmp_path / "sketch-rnn-datasets/aaron_sheep/aaron_sheep.npz"
    path.parent.mkdir(parents=True)
    path.write_bytes(_fake_npz())

    def no_unpickling(*args, **kwargs):
        raise AssertionError("np.load was called on a file that failed its md5 check")

    monkeypatch.setattr(sketches.np, "load", no_unpickling)
    with pytest.raises(ChecksumError, match="was not read"):
        load_stroke3("aaron_sheep", root=tmp_path)


def test_missing_file_offline_and_bad_download(tmp_path, monkeypatch):
    with pytest.raises(DatasetNotFoundError, match="download=False"):
        load_stroke3("kanji", root=tmp_path, download=False)

    def offline(url, timeout):
        raise OSError("network unreachable")

    monkeypatch.setattr(download, "_fetch", offline)
    with pytest.raises(DatasetNotFoundError, match="download failed: network unreachable"):
        load_stroke3("kanji", root=tmp_path)
    monkeypatch.setattr(download, "_fetch", lambda url, timeout: _fake_npz())
    with pytest.raises(ChecksumError, match="discarded"):
        load_stroke3("kanji", root=tmp_path)
    assert not (tmp_path / "sketch-rnn-datasets/kanji/short_kanji.npz").exists()
    with pytest.raises(ValueError, match="unknown sketch"):
        load_stroke3("sheep", root=tmp_path)


def test_sheep_loader_normalises_by_the_training_scale():
    root = sheep_root()
    raw = load_stroke3("aaron_sheep", root=root)
    assert [len(raw[s]) for s in ("train", "valid", "test")] == [7400, 300, 300]
    data = load_sketches("aaron_sheep", "test", root=root, max_length=200)
    kept = [s for s in raw["train"] if len(s) <= 200]
    scale = np.concatenate([s[:, :2].astype(np.float64).ravel() for s in kept]).std()
    assert data.scale == pytest.approx(scale, rel=1e-12)
    assert data.x.shape[1] == 201 and int(data.lengths.max()) <= 200
    test = [s for s in raw["test"] if len(s) <= 200]
    unscale = torch.tensor([scale, scale, 1.0, 1.0, 1.0])
    back = stroke5_to_stroke3(data.x.double() * unscale, data.lengths)
    for a, b in zip(test, back, strict=True):
        np.testing.assert_allclose(b, a, atol=1e-3)


# -------------------------------------------------------------------------------- experiment
def test_train_script_smoke(tmp_path):
    root = sheep_root()
    env = dict(os.environ, PYTHONPATH=str(REPO), PYROVAE_DATA=str(root), MPLBACKEND="Agg",
               OMP_NUM_THREADS="1")
    args = ["--out", str(tmp_path), "--device", "cpu", "--train-limit", "20", "--test-limit", "4",
            "--epochs", "1", "--batch-size", "10", "--latent-dim", "4", "--encoder-size", "8",
            "--decoder-size", "8", "--num-mixtures", "2", "--max-length", "60"]
    cmd = [sys.executable, "-m", "experiments.sketch_rnn.train", *args]
    subprocess.run(cmd, cwd=REPO, env=env, check=True, capture_output=True, timeout=120)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["epochs_done"] == 1
    assert all(math.isfinite(row["test_recon"]) for row in metrics["history"])
    for name in ("samples.png", "reconstructions.png", "interpolation.png", "checkpoints/last.pt"):
        assert (tmp_path / name).stat().st_size > 0
    # the same command with more epochs resumes from the checkpoint and keeps the history
    subprocess.run([*cmd, "--epochs", "2"], cwd=REPO, env=env, check=True, capture_output=True,
                   timeout=120)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["epochs_done"] == 2
    # the test L_R on dequantised offsets beside the raw one, every epoch, and said so
    assert all(math.isfinite(row["test_dq_recon_per_step"]) for row in metrics["history"])
    assert all(row["test_dq_offsets_nll_pixels"] >= 0 for row in metrics["history"])
    assert "dequantised" in metrics["test_metrics"]
    assert metrics["args"]["random_scale"] == 0.15 and metrics["args"]["dequantize"]
    # resuming with other noise options would change the run's data: refused in one line
    refused = subprocess.run([*cmd, "--epochs", "3", "--no-dequantize"], cwd=REPO, env=env,
                             capture_output=True, text=True, timeout=120)
    assert refused.returncode != 0 and "--random-scale 0.15 --dequantize" in refused.stderr
    # the command line samples and evaluates the script's checkpoint (no 'family' in it)
    checkpoint = str(tmp_path / "checkpoints" / "last.pt")
    cli = [sys.executable, "-m", "pyrovae.cli", "sketch"]
    subprocess.run([*cli, "sample", "--checkpoint", checkpoint, "--out",
                    str(tmp_path / "cli_samples.png"), "--num", "2", "--temperatures", "0.5",
                    "--device", "cpu"], cwd=REPO, env=env, check=True, capture_output=True,
                   timeout=120)
    assert (tmp_path / "cli_samples.png").read_bytes()[:4] == b"\x89PNG"
    evaluated = subprocess.run([*cli, "evaluate", "--checkpoint", checkpoint, "--device", "cpu"],
                               cwd=REPO, env=env, check=True, capture_output=True, text=True,
                               timeout=120).stdout
    # the script's last test row, recomputed from its checkpoint (same sketches, same seed)
    dq = float(re.search(r"on dequantised offsets: reconstruction ([-\d.]+)", evaluated).group(1))
    assert dq == pytest.approx(metrics["history"][-1]["test_dq_recon"], abs=1e-3)
