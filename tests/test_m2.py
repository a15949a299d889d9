"""M2: the enumerated and labelled ELBOs against explicit formulas, errors, JIT and checkpoints.

Design of the exact checks: ``TraceEnum_ELBO`` draws one reparameterised ``z`` per enumerated class
(shape ``[C, B, K]``). We record those draws with a ``poutine.trace`` nested inside the guide the
ELBO runs, and evaluate the explicit bound at exactly those ``z`` values, so the two sides share
their noise and must agree to rounding (float64).
"""

import math

import pyro.poutine as poutine
import pytest
import torch
import torch.distributions as tdist
from pyro.infer import TraceEnum_ELBO

import pyrovae
from pyrovae.infer import make_objective
from pyrovae.models.m2 import M2

# The labelled call has no enumerated site, so TraceEnum_ELBO warns that it enumerates nothing.
pytestmark = pytest.mark.filterwarnings("ignore:TraceEnum_ELBO found no sample sites")

C, D, K = 4, 12, 3


def small_m2(**kwargs) -> M2:
    options = dict(data_dim=D, num_classes=C, latent_dim=K, hidden_sizes=[8], alpha=7.0)
    options.update(kwargs)
    return M2(**options).double()


def binary_data(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    x = (torch.rand(n, D, generator=gen, dtype=torch.float64) < 0.4).double()
    y = torch.arange(n) % C
    return x, y


def recording_guide(m2: M2, store: dict):
    """The guide, with its z draws recorded in ``store['z']``."""

    def guide(*args, **kwargs):
        trace = poutine.trace(m2.guide).get_trace(*args, **kwargs)
        store["z"] = trace.nodes["z"]["value"]

    return guide


def continuous_data(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, D, generator=gen, dtype=torch.float64), torch.arange(n) % C


def log_likelihood(m2: M2, x, y, z) -> torch.Tensor:
    """``log p(x | y, z)`` written out for each likelihood M2 offers."""
    out = m2.decoder_logits(z, y)
    if m2.config["likelihood"] == "bernoulli":
        return tdist.Bernoulli(logits=out).log_prob(x).sum(-1)
    if m2.config["likelihood"] == "gaussian":
        sigma = m2.config["sigma"]
        return (-0.5 * (math.log(2 * math.pi * sigma**2) + (x - out) ** 2 / sigma**2)).sum(-1)
    mean, raw = out.chunk(2, -1)  # identity mean; log-variance softly bounded below
    low = 2 * math.log(1e-3)
    log_var = low + torch.nn.functional.softplus(raw - low)
    return (-0.5 * (math.log(2 * math.pi) + log_var + (x - mean) ** 2 / log_var.exp())).sum(-1)


def supervised_bound(m2: M2, x, y, z) -> torch.Tensor:
    """Explicit ``log p(x|y,z) + log p(y) + log p(z) - log q(z|x,y)`` per row: [..., B]."""
    loc, scale = m2.encoder(x, y)
    log_px = log_likelihood(m2, x, y, z)
    log_pz = tdist.Normal(0.0, 1.0).log_prob(z).sum(-1)
    log_qz = tdist.Normal(loc, scale).log_prob(z).sum(-1)
    return log_px - math.log(C) + log_pz - log_qz


def enum_loss(m2, *args, **kwargs):
    return TraceEnum_ELBO(max_plate_nesting=1).differentiable_loss(
        m2.model, *args, **kwargs
    )


@pytest.mark.parametrize("likelihood", ["bernoulli", "gaussian", "gaussian_learned"])
@pytest.mark.parametrize("subsample", [None, torch.tensor([4, 0, 2])])
def test_enumerated_elbo_is_the_exact_sum_over_classes(subsample, likelihood):
    # The weight must not touch unlabelled data.
    m2, store = small_m2(labelled_weight=3.0, likelihood=likelihood, sigma=0.7), {}
    x, _ = binary_data(6) if likelihood == "bernoulli" else continuous_data(6)
    loss = enum_loss(m2, recording_guide(m2, store), x, subsample=subsample)
    z = store["z"]
    # One z per class: parallel enumeration, not a sampled y (shape [C, M, K]).
    assert z.shape == (C, 6 if subsample is None else 3, K)
    xb = x if subsample is None else x[subsample]
    log_q_y = torch.log_softmax(m2.classifier(xb), -1)  # [M, C]
    classes = torch.arange(C).unsqueeze(-1)  # [C, 1]
    bound = supervised_bound(m2, xb, classes, z)  # [C, M]
    unsupervised = (log_q_y.exp().T * (bound - log_q_y.T)).sum(0)  # U(x) = sum_y q(y|x)[L - log q]
    scale = 6 / xb.shape[0]
    # Same noise, float64: only rounding separates the two sides.
    assert torch.allclose(loss, -scale * unsupervised.sum(), atol=1e-5, rtol=0)


@pytest.mark.parametrize(("weight", "likelihood"),
                         [(1.0, "bernoulli"), (3.5, "bernoulli"), (3.5, "gaussian_learned")])
@pytest.mark.parametrize("subsample", [None, torch.tensor([5, 1, 2, 3])])
def test_labelled_elbo_is_the_supervised_bound_plus_the_classifier_term(
    subsample, weight, likelihood
):
    m2, store = small_m2(labelled_weight=weight, likelihood=likelihood), {}
    x, y = binary_data(6) if likelihood == "bernoulli" else continuous_data(6)
    loss = enum_loss(m2, recording_guide(m2, store), x, y, subsample=subsample)
    rows = torch.arange(6) if subsample is None else subsample
    xb, yb = x[rows], y[rows]
    bound = supervised_bound(m2, xb, yb, store["z"])
    log_q_y = torch.log_softmax(m2.classifier(xb), -1).gather(-1, yb[:, None]).squeeze(-1)
    # The plate scales by N_l/M: the estimate of sum L + alpha * mean log q(y|x).
    scale = 6 / len(rows)
    expected = weight * scale * bound.sum() + m2.alpha * log_q_y.mean()
    assert torch.allclose(loss, -expected, atol=1e-5, rtol=0)


def test_classifier_term_gradient_is_alpha_grad_log_q():
    """The supervised bound does not involve q(y|x): the classifier's gradient is the factor's."""
    m2 = small_m2()
    x, y = binary_data(8)
    loss = enum_loss(m2, m2.guide, x, y)
    params = list(m2.classifier.parameters())
    grads = torch.autograd.grad(loss, params)
    log_q = torch.log_softmax(m2.classifier(x), -1).gather(-1, y[:, None]).sum()
    expected = torch.autograd.grad(-m2.alpha / 8 * log_q, params)
    # Exact (no noise reaches the classifier in the labelled path); float64 rounding only.
    for got, want in zip(grads, expected, strict=True):
        assert torch.allclose(got, want, atol=1e-10)


def test_default_alpha_follows_kingma():
    assert M2(num_train=50000).alpha == pytest.approx(5000.0)
    assert M2(alpha=3.0, num_train=50000).alpha == 3.0


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(), "give alpha"),
        (dict(alpha=-1.0), "alpha must be >= 0"),
        (dict(alpha=1.0, labelled_weight=0.0), "labelled_weight must be > 0"),
        (dict(alpha=1.0, num_classes=1), "num_classes must be >= 2"),
        (dict(alpha=1.0, classifier_arch="resnet"), "classifier_arch must be one of"),
        (dict(alpha=1.0, data_dim=64, arch="conv"), "28x28"),
        (dict(alpha=1.0, hidden_sizes=[0]), "positive integer"),
        (dict(alpha=1.0, likelihood="poisson"), "likelihood must be one of"),
    ],
)
def test_bad_arguments_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        M2(**kwargs)


@pytest.mark.parametrize(
    "y, match",
    [
        (torch.tensor([0, 1, 2, 3, 4, 0]), r"must lie in 0\.\.3"),
        (torch.tensor([0, 1, 2, -1, 1, 0]), r"must lie in 0\.\.3"),
        (torch.tensor([0.0, 1, 2, 3, 1, 0]), "integer tensor"),
        (torch.tensor([0, 1, 2, 3.5]), "integer tensor"),
        (torch.tensor([0, 1, 2]), "x has 6 rows but y has 3 labels"),
    ],
)
def test_bad_labels_raise(y, match):
    m2 = small_m2()
    x, _ = binary_data(6)
    with pytest.raises(ValueError, match=match):
        enum_loss(m2, m2.guide, x, y)


def tiny_streams(n_unlabelled=40, n_labelled=8):
    x, y = binary_data(n_unlabelled + n_labelled, seed=1)
    x, y = x.float(), y
    return {"unlabelled": (x[:n_unlabelled],), "labelled": (x[n_unlabelled:], y[n_unlabelled:])}


def positional(fn):
    """How fit calls a model under JIT: every tensor positional, the subsample last."""
    return lambda *args: fn(*args[:-1], subsample=args[-1])


def test_jit_enum_loss_agrees_with_eager():
    """The compiled TraceEnum loss equals the eager one, for both call signatures.

    Traced code draws the Gaussian noise through another kernel (torch's JIT workaround in
    ``_standard_normal``), so equal seeds do not give equal z. Hence: the labelled path's
    classifier gradient, which no noise reaches, must match exactly; the unlabelled loss must
    match in expectation (means of 100 draws each, within 4 standard errors of the difference).
    """
    m2 = small_m2()
    x, y = binary_data(6)
    idx = torch.tensor([1, 4, 5, 0])
    jit = make_objective("enum", jit=True, max_plate_nesting=1)
    eager = make_objective("enum", max_plate_nesting=1)
    model, guide = positional(m2.model), positional(m2.guide)
    params = list(m2.classifier.parameters())

    def check_labelled_gradient():
        got = torch.autograd.grad(jit.differentiable_loss(model, guide, x, y, idx), params)
        want = torch.autograd.grad(
            eager.differentiable_loss(m2.model, m2.guide, x, y, subsample=idx), params
        )
        for g, w in zip(got, want, strict=True):
            assert torch.allclose(g, w, atol=1e-10)

    check_labelled_gradient()

    draws = 100
    compiled = torch.stack(
        [jit.differentiable_loss(model, guide, x, idx).detach() for _ in range(draws)]
    )
    plain = torch.stack(
        [eager.differentiable_loss(m2.model, m2.guide, x, subsample=idx).detach()
         for _ in range(draws)]
    )
    stderr = (compiled.var() / draws + plain.var() / draws).sqrt()
    assert abs(compiled.mean() - plain.mean()) < 4 * stderr
    # Pyro keeps one list of parameter names for all compiled signatures: the labelled graph
    # must still get its parameters in the right order after the unlabelled one was compiled.
    check_labelled_gradient()


def test_jit_fit_moves_every_parameter():
    """fit(objective="enum", jit=True) trains every weight (none baked in as a constant)."""
    m2 = small_m2().float()
    before = {k: v.detach().clone() for k, v in m2.state_dict().items()}
    history = pyrovae.fit(m2, tiny_streams(), objective="enum", jit=True, epochs=2, batch_size=8)
    assert len(history.epochs) == 2 and all(math.isfinite(v) for v in history.losses)
    for name, value in m2.state_dict().items():
        assert not torch.equal(value, before[name]), f"{name} did not change"


def test_checkpoint_round_trip(tmp_path):
    m2 = small_m2(classifier_arch="mlp").float()
    x, y = binary_data(10)
    path = pyrovae.save_checkpoint(tmp_path / "m2.pt", m2)
    loaded = pyrovae.load_checkpoint(path)
    assert isinstance(loaded, M2) and loaded.config == m2.config
    x = x.float()
    assert torch.equal(loaded.classify(x), m2.eval().classify(x))
    z = torch.randn(4, K)
    labels = torch.tensor([0, 1, 2, 3])
    assert torch.equal(loaded.decode(z, labels), m2.decode(z, labels))


def test_classify_is_argmax_of_q_y_and_decode_uses_the_decoder():
    m2 = small_m2()
    x, _ = binary_data(7)
    logits = torch.log_softmax(m2.classifier(x), -1)
    assert torch.equal(m2.classify(x, batch_size=3), logits.argmax(-1))
    assert m2.classify(x).dtype == torch.long
    y, z = torch.tensor([0, 3]), torch.randn(2, K, dtype=torch.float64)
    assert torch.allclose(m2.decode(z, y), torch.sigmoid(m2.decoder_logits(z, y)))
    with pytest.raises(ValueError, match="z must have shape"):
        m2.decode(torch.randn(3, K, dtype=torch.float64), y)
    # A Gaussian M2's sample is its mean head (identity), not a sigmoid of the outputs.
    gaussian = small_m2(likelihood="gaussian_learned")
    mean = gaussian.decoder_logits(z, y)[..., :D]
    assert gaussian.decode(z, y).shape == (2, D)
    assert torch.allclose(gaussian.decode(z, y), mean)


@pytest.mark.parametrize("likelihood", ["bernoulli", "gaussian", "gaussian_learned"])
def test_class_elbos_are_the_supervised_bound_of_every_class(likelihood):
    m2 = small_m2(likelihood=likelihood, sigma=0.7)
    x, _ = binary_data(5) if likelihood == "bernoulli" else continuous_data(5)
    eps = torch.randn(3, C, 5, K, dtype=torch.float64)
    got = m2.class_elbos(x, eps=eps)
    assert got.shape == (5, C)
    for k in range(C):
        y = torch.full((5,), k)
        loc, scale = m2.encoder(x, y)
        bounds = [supervised_bound(m2, x, y, loc + scale * eps[s, k]) for s in range(3)]
        # Same noise, float64: exact up to rounding.
        assert torch.allclose(got[:, k], torch.stack(bounds).mean(0), atol=1e-10)
    assert m2.class_elbos(x, num_samples=4).shape == (5, C)


@pytest.mark.parametrize("arch", ["conv"])
def test_conv_networks_run_on_28x28(arch):
    m2 = M2(
        alpha=1.0, latent_dim=4, hidden_sizes=[16], arch=arch, classifier_arch=arch,
    )
    x = (torch.rand(5, 784) < 0.3).float()
    y = torch.tensor([0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0])
    x_l = (torch.rand(11, 784) < 0.3).float()
    loss = enum_loss(m2, m2.guide, x) + enum_loss(m2, m2.guide, x_l, y)
    assert torch.isfinite(loss)
    assert m2.sample(torch.arange(10)).shape == (10, 784)
