"""``fit(..., precision="bf16")``: bfloat16 autocast for the networks, float32 for the rest."""

import pyro
import pytest
import torch

from pyrovae import fit
from pyrovae.infer import make_objective, read_checkpoint
from pyrovae.infer.precision import autocast_networks
from pyrovae.models.m2 import M2
from pyrovae.models.vae import VAE


def binary_images(n, seed=0):
    return torch.rand(n, 784, generator=torch.Generator().manual_seed(seed)).round()


def loss_and_gradient(module, objective, args, precision):
    module.zero_grad(set_to_none=True)
    pyro.set_rng_seed(1)  # the same noise in both precisions: z's draws are float32 in both
    with autocast_networks(module, torch.device("cpu"), precision):
        loss = objective.differentiable_loss(module.model, module.guide, *args)
    loss.backward()
    return loss.detach(), torch.cat([p.grad.flatten() for p in module.parameters()])


def small_vae():
    return VAE(784, 10, hidden_sizes=(200,)), make_objective("elbo"), (binary_images(64),)


def small_m2_unlabelled():
    model = M2(784, latent_dim=10, hidden_sizes=(200,), alpha=10.0)
    return model, make_objective("enum"), (binary_images(64),)


def small_m2_labelled():
    model = M2(784, latent_dim=10, hidden_sizes=(200,), alpha=10.0)
    return model, make_objective("enum"), (binary_images(64), torch.arange(64) % 10)


@pytest.mark.parametrize("build", [small_vae, small_m2_unlabelled, small_m2_labelled])
def test_bf16_loss_and_gradient_match_fp32(build):
    module, objective, args = build()
    loss32, grad32 = loss_and_gradient(module, objective, args, "fp32")
    loss16, grad16 = loss_and_gradient(module, objective, args, "bf16")
    assert loss16.dtype == torch.float32
    # bf16 keeps 8 significant bits: one rounding is off by up to 2^-9 = 2e-3 relative. The
    # networks' inputs and weights are rounded, their products accumulated in float32 and the
    # log-densities summed in float32, so the independent rounding errors of thousands of terms
    # mostly cancel in the loss (measured: 3e-7 VAE, 7e-6 M2). 1e-3 is a quarter of one bf16
    # step of the total: a loss summed in bf16 would miss it.
    assert float((loss16 - loss32).abs() / loss32.abs()) < 1e-3
    # Gradients pass through the rounded activations of every layer in backward (errors of a
    # few 2^-9 per layer, compounding): measured relative L2 errors 0.026 (VAE) and 0.003 (M2).
    relative = float((grad16 - grad32).norm() / grad32.norm())
    assert relative < 0.1
    assert relative > 0  # the bf16 path really ran in bf16


def test_autocast_hooks_leave_the_model_as_it_was():
    module, objective, args = small_m2_unlabelled()
    with autocast_networks(module, torch.device("cpu"), "bf16"):
        assert module.classifier(args[0]).dtype == torch.float32  # cast back at the boundary
    assert not module.classifier._forward_hooks
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert module.classifier(args[0]).dtype == torch.bfloat16  # no hook left behind


def test_fit_bf16_keeps_float32_state_and_records_precision(tmp_path):
    x = binary_images(200)
    y = torch.arange(40) % 10
    model = M2(784, latent_dim=10, hidden_sizes=(100,), alpha=10.0)
    history = fit(model, {"unlabelled": (x[40:],), "labelled": (x[:40], y)}, objective="enum",
                  precision="bf16", epochs=2, batch_size=40, checkpoint_dir=tmp_path)
    assert len(history.epochs) == 2
    assert history.epochs[1]["loss"] < history.epochs[0]["loss"]
    assert all(p.dtype == torch.float32 for p in model.parameters())
    payload = read_checkpoint(tmp_path / "last.pt")
    assert payload["fit_config"]["precision"] == "bf16"
    for state in payload["optimizer_state"]["state"].values():
        assert state["exp_avg"].dtype == torch.float32
    again = M2(784, latent_dim=10, hidden_sizes=(100,), alpha=10.0)
    with pytest.raises(ValueError, match="precision"):
        fit(again, {"unlabelled": (x[40:],), "labelled": (x[:40], y)}, objective="enum",
            epochs=3, batch_size=40, checkpoint_dir=tmp_path, resume=True)


def test_fp32_is_the_default_and_unchanged():
    x = binary_images(100)
    losses = []
    for kwargs in ({}, {"precision": "fp32"}):
        pyro.clear_param_store()
        torch.manual_seed(0)
        vae = VAE(784, 5, hidden_sizes=(50,))
        losses.append([row["loss"] for row in fit(vae, x, epochs=2, batch_size=50,
                                                  **kwargs).epochs])
    assert losses[0] == losses[1]


@pytest.mark.parametrize("kwargs, message", [
    ({"precision": "fp16"}, "precision must be one of"),
    ({"precision": "bf16", "jit": True}, "excludes compiled=True and jit=True"),
    ({"precision": "bf16", "compiled": True}, "excludes compiled=True and jit=True"),
])
def test_bad_precision_is_a_value_error(kwargs, message):
    with pytest.raises(ValueError, match=message):
        fit(VAE(784, 5, hidden_sizes=(20,)), binary_images(10), epochs=1, **kwargs)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_bf16_on_cuda_matches_fp32():
    module, objective, args = small_m2_unlabelled()
    module, args = module.cuda(), tuple(a.cuda() for a in args)
    results = {}
    for precision in ("fp32", "bf16"):
        module.zero_grad(set_to_none=True)
        pyro.set_rng_seed(1)
        with autocast_networks(module, torch.device("cuda"), precision):
            loss = objective.differentiable_loss(module.model, module.guide, *args)
        loss.backward()
        results[precision] = (loss.detach(), torch.cat([p.grad.flatten() for p in
                                                        module.parameters()]))
    (loss32, grad32), (loss16, grad16) = results["fp32"], results["bf16"]
    # The tolerances of test_bf16_loss_and_gradient_match_fp32, for the same reasons.
    assert float((loss16 - loss32).abs() / loss32.abs()) < 1e-3
    assert 0 < float((grad16 - grad32).norm() / grad32.norm()) < 0.1
