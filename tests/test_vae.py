"""The VAE model/guide pair: site agreement, objectives, JIT, the public API, checkpoints."""

import pyro
import pyro.poutine as poutine
import pytest
import torch
from pyro.infer import JitTrace_ELBO, Trace_ELBO, TraceMeanField_ELBO
from pyro.util import check_model_guide_match

import pyrovae
from pyrovae.infer import fit, param_scope
from pyrovae.infer.evaluation import elbo_terms
from pyrovae.models.vae import VAE

D = 16  # 4x4 "images" keep the MLP tests fast


def binary_data(n=40, d=D, seed=0):
    gen = torch.Generator().manual_seed(seed)
    probs = torch.rand(n, d, generator=gen)
    return torch.bernoulli(probs, generator=gen)


def data_for(likelihood, n=40, d=D):
    x = binary_data(n, d)
    return x if likelihood == "bernoulli" else 0.1 + 0.8 * x * torch.rand(n, d)


CONFIGS = [
    dict(likelihood="bernoulli"),
    dict(likelihood="gaussian", sigma=0.3),
    dict(likelihood="gaussian_learned"),
    dict(likelihood="bernoulli", arch="conv", data_dim=784, hidden_sizes=[32]),
    dict(likelihood="gaussian_learned", arch="conv", data_dim=784, hidden_sizes=[32]),
]


def make(config, latent_dim=3):
    options = dict(data_dim=D, latent_dim=latent_dim, hidden_sizes=[8])
    options.update(config)
    return VAE(**options)


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: "-".join(map(str, c.values())))
@pytest.mark.parametrize("num_particles", [1, 4])
def test_model_and_guide_sites_agree(config, num_particles):
    vae = make(config)
    x = data_for(config["likelihood"], 12, vae.data_dim)
    idx = torch.tensor([0, 3, 5])
    with param_scope(vae), pyro.plate("particles", num_particles, dim=-2):
        guide_trace = poutine.trace(vae.guide).get_trace(x, subsample=idx)
        model_trace = poutine.trace(poutine.replay(vae.model, trace=guide_trace)).get_trace(
            x, subsample=idx
        )
    if num_particles == 1:
        check_model_guide_match(model_trace, guide_trace, max_plate_nesting=1)
    model_trace.compute_log_prob()
    guide_trace.compute_log_prob()
    expected = (num_particles, 3)
    for trace, sites in [(model_trace, ["z", "x"]), (guide_trace, ["z"])]:
        for name in sites:
            assert trace.nodes[name]["log_prob"].shape == expected, name
    assert model_trace.nodes["x"]["fn"].event_shape == (vae.data_dim,)
    # Trace_ELBO with validation enabled (conftest) runs Pyro's own site and support checks.
    with param_scope(vae):
        loss = Trace_ELBO(num_particles=num_particles, vectorize_particles=num_particles > 1,
                          max_plate_nesting=1).loss(vae.model, vae.guide, x, subsample=idx)
    assert torch.isfinite(torch.tensor(loss))


def test_minibatch_loss_is_scaled_to_the_full_data():
    # The data plate scales a minibatch by N/M, so the minibatch loss estimates the full loss:
    # with the whole data as "subsample" the scaled loss equals the unscaled full-data loss.
    vae = make({})
    x = binary_data(10)
    full_idx = torch.arange(10)
    with param_scope(vae):
        pyro.set_rng_seed(1)
        a = Trace_ELBO().loss(vae.model, vae.guide, x, subsample=full_idx)
        pyro.set_rng_seed(1)
        b = Trace_ELBO().loss(vae.model, vae.guide, x)
        pyro.set_rng_seed(1)
        half = Trace_ELBO().loss(vae.model, vae.guide, x[:5], subsample=torch.arange(5))
        pyro.set_rng_seed(1)
        scaled = Trace_ELBO().loss(vae.model, vae.guide, torch.cat([x[:5], x[:5]]),
                                   subsample=torch.arange(5))
    assert a == pytest.approx(b, rel=1e-6)
    assert scaled == pytest.approx(2 * half, rel=1e-5)


def test_non_binary_data_is_a_clear_error_for_bernoulli():
    vae = make({})
    grey = torch.full((4, D), 0.5)
    with param_scope(vae), pytest.raises(ValueError, match="binary data"):
        Trace_ELBO().loss(vae.model, vae.guide, grey)
    with pytest.raises(ValueError, match="binary data"):
        vae.check_data(grey)
    lenient = make(dict(allow_continuous=True))
    lenient.check_data(grey)
    with param_scope(lenient):
        assert torch.isfinite(torch.tensor(Trace_ELBO().loss(lenient.model, lenient.guide, grey)))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        lenient.check_data(grey + 1)


@pytest.mark.parametrize(
    "bad, match",
    [
        (dict(latent_dim=0), "latent_dim"),
        (dict(arch="rnn"), "arch"),
        (dict(arch="conv"), "28x28"),
        (dict(likelihood="poisson"), "likelihood"),
        (dict(activation="swishy"), "activation"),
        (dict(hidden_sizes=[]), "hidden_sizes"),
        (dict(likelihood="gaussian", sigma=0.0), "sigma"),
    ],
)
def test_bad_arguments_raise(bad, match):
    with pytest.raises(ValueError, match=match):
        make(bad)


def test_wrong_data_shape_raises():
    vae = make({})
    with param_scope(vae), pytest.raises(ValueError, match=r"\[N, 16\]"):
        Trace_ELBO().loss(vae.model, vae.guide, torch.zeros(3, D + 1))


def test_meanfield_and_trace_elbo_agree_in_expectation():
    # Both estimate the same ELBO; they differ only in the KL term (closed form vs Monte Carlo).
    # Each side is the mean of R independent losses of P vectorised particles; the tolerance is
    # 4 standard errors of the difference (estimated from the R repeats), plus 1e-3 relative.
    vae = make(dict(latent_dim=4))
    x = binary_data(20)
    repeats, particles = 20, 100
    values = {}
    with param_scope(vae):
        for name, cls in [("trace", Trace_ELBO), ("meanfield", TraceMeanField_ELBO)]:
            elbo = cls(num_particles=particles, vectorize_particles=True, max_plate_nesting=1)
            values[name] = torch.tensor(
                [elbo.loss(vae.model, vae.guide, x) for _ in range(repeats)], dtype=torch.float64
            )
    diff = values["trace"].mean() - values["meanfield"].mean()
    stderr = (values["trace"].var() / repeats + values["meanfield"].var() / repeats).sqrt()
    assert abs(diff) < 4 * stderr + 1e-3 * abs(values["trace"].mean())
    # Same expectation, lower variance: the closed-form KL removes the KL's sampling noise.
    assert values["meanfield"].var() < values["trace"].var()


def test_analytic_and_monte_carlo_kl_agree():
    # The KL term alone, per data point: closed form vs the mean of 4000 samples. The Monte Carlo
    # error of the mean over 20 points is about sqrt(K/2)/sqrt(4000*20) < 0.01 nats; tol 0.05.
    vae = make(dict(latent_dim=4))
    x = binary_data(20)
    exact = elbo_terms(vae, x, num_samples=1, analytic_kl=True)
    mc = elbo_terms(vae, x, num_samples=4000)
    assert float(mc.kl.mean()) == pytest.approx(float(exact.kl.mean()), abs=0.05)
    assert torch.allclose(exact.elbo, exact.reconstruction - exact.kl)


@pytest.mark.parametrize(
    "objective, particles, jit, config",
    # The trainer has no JIT variant of the IWAE bound.
    [("elbo", 1, False, {}), ("elbo", 1, True, {}), ("meanfield", 3, False, {}),
     ("meanfield", 3, True, {}), ("iwae", 3, False, {}),
     ("meanfield", 2, True, dict(arch="conv", data_dim=784, likelihood="gaussian_learned"))],
)
def test_fit_trains_every_parameter(objective, particles, jit, config):
    vae = make(dict(hidden_sizes=[8, 8], **config))
    x = data_for(config.get("likelihood", "bernoulli"), 64, vae.data_dim)
    before = {k: v.clone() for k, v in vae.state_dict().items()}
    history = fit(vae, x, objective=objective, num_particles=particles, jit=jit,
                  epochs=3, batch_size=16, lr=1e-2)
    after = vae.state_dict()
    unchanged = [k for k in before if torch.equal(before[k], after[k])]
    assert not unchanged, f"parameters not trained: {unchanged}"
    losses = history.column("loss_per_example")
    assert losses[-1] < losses[0]


def test_jit_loss_equals_python_loss():
    vae = make({})
    x = binary_data(12)
    idx = torch.arange(6)
    with param_scope(vae):
        pyro.set_rng_seed(3)
        plain = Trace_ELBO(max_plate_nesting=1).loss(vae.model, vae.guide, x, subsample=idx)

        def model(x, idx):
            return vae.model(x, subsample=idx)

        def guide(x, idx):
            return vae.guide(x, subsample=idx)

        pyro.set_rng_seed(3)
        jitted = JitTrace_ELBO(max_plate_nesting=1, ignore_jit_warnings=True).loss(
            model, guide, x, idx
        )
    assert jitted == pytest.approx(plain, rel=1e-5)


def test_score_function_guide_draws_without_gradient_path():
    vae = make(dict(reparameterized=False))
    x = binary_data(8)
    with param_scope(vae):
        trace = poutine.trace(vae.guide).get_trace(x)
    site = trace.nodes["z"]
    assert not site["fn"].has_rsample
    assert not site["value"].requires_grad


def test_public_api_is_consistent():
    vae = make(dict(latent_dim=2))
    x = binary_data(5)
    loc, scale = vae.encode(x)
    assert loc.shape == scale.shape == (5, 2) and bool((scale > 0).all())
    recon = vae.reconstruct(x)
    assert torch.equal(recon, vae.decode(loc))
    assert bool(((recon > 0) & (recon < 1)).all())  # Bernoulli means are probabilities
    a = vae.sample(7, generator=torch.Generator().manual_seed(0))
    b = vae.sample(7, generator=torch.Generator().manual_seed(0))
    assert torch.equal(a, b) and a.shape == (7, D)
    draws = vae.sample(7, mean=False)
    assert set(draws.unique().tolist()) <= {0.0, 1.0}
    z = torch.zeros(3, 4, 2)  # any leading batch dims
    assert vae.decode(z).shape == (3, 4, D)
    with pytest.raises(ValueError, match="z must have shape"):
        vae.decode(torch.zeros(3, 5))


class ShiftedPriorVAE(VAE):
    """A VAE whose prior is ``N((3, -2), 0.5^2 I)``, with an identity decoder so that
    ``sample`` returns the latent draws themselves (Gaussian likelihood, identity mean)."""

    def __init__(self):
        super().__init__(2, 2, likelihood="gaussian", mean_activation="identity",
                         decoder=torch.nn.Identity())

    def prior(self, like):
        loc = like.new_tensor([3.0, -2.0])
        return pyro.distributions.Normal(loc, 0.5 * torch.ones_like(loc)).to_event(1)


def test_sample_draws_from_the_models_own_prior():
    vae = ShiftedPriorVAE()
    z = vae.sample(4000, generator=torch.Generator().manual_seed(1))
    # 4000 draws: the standard error of each mean is 0.5 / sqrt(4000) = 0.008, of each
    # standard deviation about 0.5 / sqrt(8000) = 0.006; 0.05 is over six of either.
    assert torch.allclose(z.mean(0), torch.tensor([3.0, -2.0]), atol=0.05)
    assert torch.allclose(z.std(0), torch.tensor([0.5, 0.5]), atol=0.05)
    global_state = torch.get_rng_state()
    again = vae.sample(4000, generator=torch.Generator().manual_seed(1))
    assert torch.equal(z, again)  # the generator alone decides the draw ...
    assert torch.equal(torch.get_rng_state(), global_state)  # ... and the global RNG is unused
    assert abs(float(vae.sample(4000).mean())) > 0.4  # global RNG: the same prior (mean 0.5)


def test_importable_from_models_package():
    import pyrovae.models as models

    assert getattr(models, "VAE", VAE) is VAE


@pytest.mark.parametrize("config", CONFIGS[:3], ids=lambda c: c["likelihood"])
def test_checkpoint_round_trip_gives_the_same_elbo(tmp_path, config):
    vae = make(config)
    x = data_for(config["likelihood"], 10)
    fit(vae, x, epochs=1, batch_size=5)
    path = pyrovae.save_checkpoint(tmp_path / "vae.pt", vae)
    loaded = pyrovae.load_checkpoint(path)
    assert isinstance(loaded, VAE) and loaded.config == vae.config
    pyro.set_rng_seed(7)
    before = elbo_terms(vae, x, num_samples=3).elbo
    pyro.set_rng_seed(7)
    after = elbo_terms(loaded, x, num_samples=3).elbo
    assert torch.equal(before, after)
