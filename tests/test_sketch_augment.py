"""Noise on sketch-rnn's integer offsets: the paper's random scaling and dequantisation, and a
loss that a mixture of spikes on the pixel lattice can no longer game."""

import math

import numpy as np
import pytest
import torch

from pyrovae.cli._common import training_options
from pyrovae.data import sketch_augment as augment
from pyrovae.data.buckets import LengthBuckets
from pyrovae.data.sketch_augment import AugmentedSketches, dequantized
from pyrovae.data.sketches import stroke3_to_stroke5
from pyrovae.infer.checkpoint import class_path
from pyrovae.models.sketch_rnn import SketchRNN
from pyrovae.models.vae import VAE
from pyrovae.runs import sketch as family
from pyrovae.runs.launch import RunError

SCALE = 5.0  # pixels per unit of the normalised offsets


def integer_sketches(n=200, low=-2, high=2, max_points=30, seed=0, dtype=torch.float64):
    """``n`` stroke-5 sketches whose offsets are integer pixels in [low, high] divided by
    `SCALE`; ``(x, lengths, pixels)`` with ``pixels`` the integer offsets [N, T, 2]."""
    rng = np.random.default_rng(seed)
    strokes = []
    for length in rng.integers(1, max_points + 1, size=n):
        s = np.zeros((length, 3), dtype=np.int16)
        s[:, :2] = rng.integers(low, high + 1, size=(length, 2))
        s[-1, 2] = 1
        strokes.append(s)
    x, lengths = stroke3_to_stroke5(strokes, dtype=dtype)
    pixels = x[..., :2].clone()
    x[..., :2] /= SCALE
    return x, lengths, pixels


def points(x, lengths):
    return (torch.arange(x.shape[1]) < lengths.unsqueeze(-1)).unsqueeze(-1)


# ------------------------------------------------------------------------------ random scaling
def scale_factors(stream, epoch):
    """The per-sketch, per-axis factors an epoch applied (offsets never 0 in these data)."""
    out, _ = stream.for_epoch(epoch)
    ratio = out[..., :2] / stream.x[..., :2]
    factors = ratio[:, 0]
    inside = points(stream.x, stream.lengths).expand_as(ratio)
    # one factor per sketch and axis, the same at every point of the sketch
    torch.testing.assert_close(ratio[inside], factors.unsqueeze(1).expand_as(ratio)[inside])
    return factors


def test_random_scale_factors_lie_in_range_and_depend_only_on_seed_and_epoch():
    x, lengths, _ = integer_sketches(low=1, high=3)  # no zero offsets, so ratios are defined
    stream = AugmentedSketches(x, lengths, SCALE, random_scale=0.15, seed=4)
    factors = scale_factors(stream, 2)
    assert factors.min() >= 0.85 and factors.max() < 1.15
    # 400 uniform draws fill the range: the factor is r, not r/2 or a fixed stretch
    assert factors.min() < 0.86 and factors.max() > 1.14
    assert abs(float(factors.mean()) - 1.0) < 0.02
    assert abs(float(np.corrcoef(factors[:, 0], factors[:, 1])[0, 1])) < 0.2  # axes independent
    # a fresh stream (a resumed run) gives the same epoch 2 without drawing epochs 0 and 1
    again = AugmentedSketches(x, lengths, SCALE, random_scale=0.15, seed=4)
    torch.testing.assert_close(scale_factors(again, 2), factors, rtol=0, atol=0)
    assert not torch.allclose(scale_factors(stream, 3), factors)
    other_seed = AugmentedSketches(x, lengths, SCALE, random_scale=0.15, seed=5)
    assert not torch.allclose(scale_factors(other_seed, 2), factors)
    out, out_lengths = stream.for_epoch(2)
    assert out_lengths is lengths
    torch.testing.assert_close(out[..., 2:], x[..., 2:], rtol=0, atol=0)  # pen states untouched
    outside = ~points(x, lengths).squeeze(-1)
    assert (out[outside] == x[outside]).all()  # end rows stay end rows


def test_random_scale_out_of_range_is_refused():
    x, lengths, _ = integer_sketches(n=3)
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        AugmentedSketches(x, lengths, SCALE, random_scale=1.0)


# ------------------------------------------------------------------------------ dequantisation
def test_dequantized_test_offsets_are_the_integers_plus_noise_within_one_pixel():
    x, lengths, pixels = integer_sketches()
    dq = dequantized(x, lengths, SCALE, seed=3)
    noise = dq[..., :2] * SCALE - pixels  # in pixels
    inside = points(x, lengths).expand_as(noise)
    assert noise[inside].min() >= -0.5 and noise[inside].max() < 0.5
    # uniform over the whole cell, not a fraction of it
    assert noise[inside].min() < -0.49 and noise[inside].max() > 0.49
    assert abs(float(noise[inside].mean())) < 0.02
    assert abs(float(noise[inside].var()) - 1 / 12) < 0.005
    assert (noise[~inside] == 0).all() and (dq[..., 2:] == x[..., 2:]).all()
    torch.testing.assert_close(dequantized(x, lengths, SCALE, seed=3), dq, rtol=0, atol=0)
    assert not torch.allclose(dequantized(x, lengths, SCALE, seed=4), dq)
    assert (x * SCALE)[..., :2].eq(pixels).all()  # the input is left alone


def test_training_dequantisation_is_fresh_every_epoch_and_scaled_after():
    x, lengths, pixels = integer_sketches()
    stream = AugmentedSketches(x, lengths, SCALE, dequantize=True, seed=0)
    first, second = stream.for_epoch(0)[0], stream.for_epoch(1)[0]
    inside = points(x, lengths).expand_as(pixels)
    for out in (first, second):
        noise = out[..., :2] * SCALE - pixels
        assert noise[inside].abs().max() <= 0.5 and (noise[~inside] == 0).all()
    assert not torch.allclose(first, second)
    torch.testing.assert_close(stream.for_epoch(0)[0], first, rtol=0, atol=0)
    # with scaling too, the dequantised drawing is stretched: (k + u) * f
    both = AugmentedSketches(x, lengths, SCALE, random_scale=0.15, dequantize=True, seed=0)
    out = both.for_epoch(0)[0][..., :2] * SCALE
    generator = augment._generator(0, 0, augment._TRAIN_TAG)
    noise = augment.dequantization_noise(lengths, x.shape[1], SCALE, generator) * SCALE
    factors = augment.random_scale_factors(len(x), 0.15, generator)
    torch.testing.assert_close(out, (pixels + noise) * factors.unsqueeze(1))


def test_the_run_trains_on_noisy_bucketed_batches_unless_both_options_are_off():
    x, lengths, _ = integer_sketches(n=40, dtype=torch.float32)
    sketches = family.Sketches(x, lengths, x[:4], lengths[:4], SCALE)
    options = {"batch_size": 10, "max_length": 30, "seed": 1}
    stream = family.fit_options(options, sketches)["data"]
    assert isinstance(stream, LengthBuckets)  # the default pool buckets the noisy sketches
    noisy, _ = stream.for_epoch(0)
    assert not torch.equal(noisy, x)
    assert torch.equal(stream.for_epoch(0)[0], noisy)
    plain = family.fit_options({**options, "random_scale": 0.0, "dequantize": False,
                                "bucket_pool": 0}, sketches)["data"]
    assert plain[0] is x


def test_resuming_with_other_noise_options_is_refused():
    new = {"random_scale": 0.15, "dequantize": True}
    family.check_same_noise(new, new)
    family.check_same_noise({}, {"random_scale": 0.0, "dequantize": False})
    with pytest.raises(RunError, match="--random-scale 0.0 --no-dequantize"):
        family.check_same_noise({}, new)  # a run from before the options had no noise
    with pytest.raises(RunError, match="--random-scale 0.15 --dequantize"):
        family.check_same_noise(new, {**new, "random_scale": 0.1})


# ------------------------------------------------------------------- the lattice cannot be gamed
def fixed_mixture(mu_x, mu_y, sigma):
    """A SketchRNN whose offset mixture is the same at every step, whatever it reads: M equal
    components at ``(mu_x, mu_y)`` (normalised units) with standard deviation ``sigma``."""
    m = len(mu_x)
    model = SketchRNN(latent_dim=2, encoder_size=3, decoder_size=4, num_mixtures=m,
                      max_length=31, min_sigma=0.0).double()
    log_sigma = torch.full((m,), math.log(sigma), dtype=torch.float64)
    with torch.no_grad():
        model.head.weight.zero_()
        model.head.bias.copy_(torch.cat([
            torch.zeros(m), mu_x, mu_y, log_sigma, log_sigma, torch.zeros(m), torch.zeros(3)]))
    return model


def test_spikes_on_the_pixel_lattice_win_on_raw_offsets_and_lose_on_dequantised_ones():
    x, lengths, _ = integer_sketches(n=60)  # offsets uniform on the 5 x 5 pixels in [-2, 2]^2
    grid = torch.arange(-2, 3, dtype=torch.float64) / SCALE
    gx, gy = torch.meshgrid(grid, grid, indexing="ij")
    # 25 spikes, one on every pixel of the data, 1/1000 of a pixel wide
    spikes = fixed_mixture(gx.flatten(), gy.flatten(), 1e-3 / SCALE)
    # one smooth Gaussian of about the data's spread (sqrt(2 + 1/12) pixels)
    zeros = torch.zeros(25, dtype=torch.float64)
    smooth = fixed_mixture(zeros, zeros, 1.45 / SCALE)
    scores = {name: family.evaluate(model, x, lengths, batch_size=16, seed=0, scale=SCALE)
              for name, model in (("spikes", spikes), ("smooth", smooth))}
    raw = {name: s["test_offsets_nll"] for name, s in scores.items()}
    dq = {name: s["test_dq_offsets_nll"] for name, s in scores.items()}
    assert raw["spikes"] < raw["smooth"] - 100  # raw integers: the spikes win by far
    assert dq["spikes"] > dq["smooth"] + 100  # dequantised: they lose by far
    # Jensen: the dequantised NLL in pixel units bounds -log P(integers) >= 0 for any model;
    # the raw offsets' does not (the spikes' goes far below 0)
    mean_points = float(lengths.double().mean())
    assert min(s["test_dq_offsets_nll_pixels"] for s in scores.values()) >= 0
    assert raw["spikes"] + 2 * math.log(SCALE) * mean_points < -100
    # the smooth model's bound: the cross-entropy of U[-2.5, 2.5)^2 under N(0, 1.45^2 I) in
    # pixels, 3.57 nats per point, above the integers' entropy log 25 = 3.22 that no model beats
    per_point = scores["smooth"]["test_dq_offsets_nll_pixels"] / mean_points
    cross_entropy = 2 * (0.5 * math.log(2 * math.pi * 1.45**2) + (25 / 12) / (2 * 1.45**2))
    assert per_point == pytest.approx(cross_entropy, abs=0.1)
    assert per_point > math.log(25)


def test_evaluate_without_a_scale_reports_the_raw_terms_only():
    x, lengths, _ = integer_sketches(n=8)
    zeros = torch.zeros(2, dtype=torch.float64)
    metrics = family.evaluate(fixed_mixture(zeros, zeros, 0.3), x, lengths, batch_size=4)
    assert "test_recon_per_step" in metrics and not any("dq" in key for key in metrics)


# ---------------------------------------------------------------------- the CLI reads a script's
def test_the_cli_reads_a_checkpoint_written_by_the_experiment_script():
    args = {"dataset": "aaron_sheep", "batch_size": 50, "max_length": 250, "seed": 0}
    checkpoint = {"model_class": class_path(SketchRNN), "fit_config": {"user": {"args": args}}}
    options = training_options(checkpoint, "last.pt", "sketch", script_model=SketchRNN)
    assert options == {**args, "family": "sketch"}
    with pytest.raises(RunError, match="was not written by 'pyrovae sketch train'"):
        training_options(checkpoint, "last.pt", "sketch")
    other = {**checkpoint, "model_class": class_path(VAE)}
    with pytest.raises(RunError, match="was not written by"):
        training_options(other, "last.pt", "sketch", script_model=SketchRNN)
