"""Graph-safe objectives: the same loss and gradient as Pyro's, and no host read of a value.

Each comparison runs Pyro's objective and ours from the same seed in float64, so both draw the
same noise; values and gradients then agree to rounding (tolerance 1e-6, absolute and relative).
"""

import pyro
import pytest
import torch
from pyro.infer import Trace_ELBO, TraceMeanField_ELBO

from pyrovae.infer import make_objective, param_scope
from pyrovae.infer.graph_safe import (
    GraphSafeELBO,
    GraphSafeEnumELBO,
    GraphSafeMeanFieldELBO,
    HostSyncError,
    forbid_host_sync,
)
from pyrovae.infer.objectives import EnumELBO, ImportanceWeightedELBO
from pyrovae.models import M2, PPCA, VAE

N, D = 20, 6
PARTICLES = [(1, True), (3, True), (3, False)]


def _data():
    gen = torch.Generator().manual_seed(0)
    x = torch.bernoulli(torch.full((N, D), 0.4, dtype=torch.float64), generator=gen)
    y = torch.arange(N) % 3
    idx = torch.tensor([3, 7, 1, 12, 18])  # M = 5 of N = 20: every site scaled by 4
    return x, y, idx


def _models():
    return {
        "vae": lambda: VAE(D, 2, (5,)),
        "vae_score_function": lambda: VAE(D, 2, (5,), reparameterized=False),
        "ppca": lambda: PPCA(D, 2),
        "m2": lambda: M2(
            data_dim=D,
            num_classes=3,
            latent_dim=2,
            hidden_sizes=(5,),
            alpha=3.0,
            labelled_weight=2.0,
        ),
    }


def _loss_and_grads(objective, module, args, kwargs, seed=1):
    pyro.set_rng_seed(seed)
    loss = objective.differentiable_loss(module.model, module.guide, *args, **kwargs)
    params = list(module.parameters())
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    return loss, [
        torch.zeros_like(p) if g is None else g for p, g in zip(params, grads, strict=True)
    ]


def _assert_same(ours, theirs, module, args, kwargs):
    loss_a, grads_a = _loss_and_grads(theirs, module, args, kwargs)
    loss_b, grads_b = _loss_and_grads(ours, module, args, kwargs)
    torch.testing.assert_close(loss_b, loss_a, rtol=1e-6, atol=1e-6)
    assert any(g.abs().sum() > 0 for g in grads_a)
    for a, b in zip(grads_a, grads_b, strict=True):
        torch.testing.assert_close(b, a, rtol=1e-6, atol=1e-6)


CASES = [
    # (model, labelled, ours, Pyro's)
    ("vae", False, GraphSafeELBO, Trace_ELBO),
    ("vae_score_function", False, GraphSafeELBO, Trace_ELBO),
    ("ppca", False, GraphSafeELBO, Trace_ELBO),
    ("vae", False, GraphSafeMeanFieldELBO, TraceMeanField_ELBO),
    ("ppca", False, GraphSafeMeanFieldELBO, TraceMeanField_ELBO),
    ("m2", False, GraphSafeEnumELBO, EnumELBO),
    ("m2", True, GraphSafeEnumELBO, EnumELBO),
]


@pytest.mark.parametrize("num_particles,vectorize", PARTICLES)
@pytest.mark.parametrize("name,labelled,ours,theirs", CASES)
def test_same_loss_and_gradient_as_pyro(name, labelled, ours, theirs, num_particles, vectorize):
    torch.set_default_dtype(torch.float64)
    x, y, idx = _data()
    module = _models()[name]()
    args = (x, y) if labelled else (x,)
    options = dict(num_particles=num_particles, vectorize_particles=vectorize)
    with param_scope(module):
        _assert_same(
            ours(max_plate_nesting=1, **options),
            theirs(max_plate_nesting=1, **options),
            module,
            args,
            dict(subsample=idx),
        )


def test_enum_elbo_whole_data_and_make_objective():
    """No subsample (scale 1), and the objective ``make_objective`` builds by name."""
    torch.set_default_dtype(torch.float64)
    x, _, _ = _data()
    module = _models()["m2"]()
    ours = make_objective("enum", num_particles=2, graph_safe=True)
    assert isinstance(ours, GraphSafeEnumELBO)
    with param_scope(module):
        _assert_same(ours, make_objective("enum", num_particles=2), module, (x,), {})


def test_iwae_is_graph_safe_and_the_elbo_at_one_particle():
    """pyrovae's IWAE makes no sync, so make_objective returns it; at K=1 it is the ELBO."""
    torch.set_default_dtype(torch.float64)
    x, _, idx = _data()
    module = _models()["vae"]()
    assert isinstance(make_objective("iwae", 4, graph_safe=True), ImportanceWeightedELBO)
    with param_scope(module):
        _assert_same(ImportanceWeightedELBO(1), GraphSafeELBO(), module, (x,), dict(subsample=idx))


def test_make_objective_rejects_jit_with_graph_safe():
    with pytest.raises(ValueError, match="jit"):
        make_objective("elbo", jit=True, graph_safe=True)
    with pytest.raises(ValueError, match="max_plate_nesting"):
        make_objective("elbo", max_plate_nesting=None, graph_safe=True)


def test_mean_field_refuses_score_function_sites():
    module = _models()["vae_score_function"]()
    x, _, idx = _data()
    with param_scope(module), pytest.raises(ValueError, match="reparameterised"):
        GraphSafeMeanFieldELBO().differentiable_loss(module.model, module.guide, x.float(), idx)


SYNC_CASES = [
    (
        "vae",
        False,
        lambda: GraphSafeELBO(3),
        lambda: Trace_ELBO(num_particles=3, max_plate_nesting=1),
    ),
    (
        "ppca",
        False,
        lambda: GraphSafeMeanFieldELBO(2),
        lambda: TraceMeanField_ELBO(num_particles=2, vectorize_particles=True, max_plate_nesting=1),
    ),
    (
        "vae_score_function",
        False,
        lambda: GraphSafeELBO(2),
        lambda: Trace_ELBO(num_particles=2, vectorize_particles=True, max_plate_nesting=1),
    ),
    (
        "m2",
        False,
        lambda: GraphSafeEnumELBO(2),
        lambda: EnumELBO(num_particles=2, vectorize_particles=True, max_plate_nesting=1),
    ),
    ("vae", False, lambda: ImportanceWeightedELBO(4), None),
]


@pytest.mark.parametrize("name,labelled,ours,theirs", SYNC_CASES)
def test_no_host_sync_in_loss_and_backward(name, labelled, ours, theirs):
    """Ours run (loss and backward) with every host read refused; Pyro's trip the trap."""
    x, _, idx = _data()
    x = x.float()
    module = _models()[name]()
    assert ours().graph_safe is True  # the flag a caller such as fit may check
    with param_scope(module), pyro.validation_enabled(False):
        with forbid_host_sync():
            loss = ours().differentiable_loss(module.model, module.guide, x, subsample=idx)
            loss.backward()
        assert torch.isfinite(loss)
        if theirs is not None:
            with forbid_host_sync(), pytest.raises(HostSyncError):
                theirs().differentiable_loss(module.model, module.guide, x, subsample=idx)


def test_m2_labelled_batches_make_no_host_sync():
    # M2 reads label values only while Pyro's validation is on (the data-check rule).
    x, y, idx = _data()
    module = _models()["m2"]()
    with param_scope(module), pyro.validation_enabled(False), forbid_host_sync():
        GraphSafeEnumELBO().differentiable_loss(
            module.model, module.guide, x.float(), y, subsample=idx
        )


def test_forbid_host_sync_restores_tensor_methods():
    t = torch.tensor([1.5])
    with pytest.raises(HostSyncError), forbid_host_sync():
        float(t)
    assert float(t) == 1.5 and t.tolist() == [1.5] and bool(t)


def test_enum_elbo_with_a_class_of_zero_probability():
    """q(y=0|x) = 0 exactly: Pyro drops the 0 * -inf terms by masked_select, ours by ``where``
    (static shape); loss and gradients agree and are finite."""
    torch.set_default_dtype(torch.float64)
    x, _, idx = _data()
    module = _models()["m2"]()
    with torch.no_grad():
        module.classifier.head.bias[0] = -float("inf")
    with param_scope(module):
        _assert_same(
            GraphSafeEnumELBO(), EnumELBO(max_plate_nesting=1), module, (x,), {"subsample": idx}
        )
        _, grads = _loss_and_grads(GraphSafeEnumELBO(), module, (x,), {"subsample": idx})
    assert all(torch.isfinite(g).all() for g in grads)
