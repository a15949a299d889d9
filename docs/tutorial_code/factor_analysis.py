"""Tutorial part 2: factor analysis with an amortised guide, checked against its exact likelihood.

Run it: ``python docs/tutorial_code/factor_analysis.py``. The tests run ``main()`` with its
defaults and check the numbers it returns.
"""

# --8<-- [start:imports]
import pyro
import pyro.distributions as dist
import torch
from pyro.distributions import constraints
from pyro.infer import Trace_ELBO
from pyro.nn import PyroParam, pyro_method

from pyrovae import fit
from pyrovae.infer import param_scope
from pyrovae.models import ConfigurableModule, data_plate, take

# --8<-- [end:imports]


# --8<-- [start:model]
class TinyFactorAnalysis(ConfigurableModule):
    """z ~ N(0, I_K);  x | z ~ N(W z + mu, diag(psi)).  Guide: q(z | x) = N(A x + b, diag(s^2))."""

    def __init__(self, data_dim: int, latent_dim: int) -> None:
        super().__init__(data_dim=data_dim, latent_dim=latent_dim)
        self.latent_dim = latent_dim
        # Generative parameters (theta).
        self.W = PyroParam(0.1 * torch.randn(data_dim, latent_dim))
        self.mu = PyroParam(torch.zeros(data_dim))
        self.psi = PyroParam(torch.ones(data_dim), constraint=constraints.positive)
        # Variational parameters (phi): one linear encoder shared by every data point.
        self.A = PyroParam(torch.zeros(latent_dim, data_dim))
        self.b = PyroParam(torch.zeros(latent_dim))
        self.s = PyroParam(torch.ones(latent_dim), constraint=constraints.positive)

    @pyro_method
    def model(self, x, subsample=None):
        with data_plate(x, subsample):
            z = pyro.sample("z", dist.Normal(x.new_zeros(self.latent_dim), 1.0).to_event(1))
            pyro.sample(
                "x", dist.Normal(z @ self.W.T + self.mu, self.psi.sqrt()).to_event(1),
                obs=take(x, subsample),
            )

    @pyro_method
    def guide(self, x, subsample=None):
        with data_plate(x, subsample):
            loc = take(x, subsample) @ self.A.T + self.b
            pyro.sample("z", dist.Normal(loc, self.s).to_event(1))

    # --8<-- [end:model]

    # --8<-- [start:exact]
    @torch.no_grad()
    def log_marginal(self, x):
        """Exact log p(x_n) = log N(x_n; mu, W W^T + diag(psi)): [N]."""
        cov = self.W @ self.W.T + torch.diag(self.psi)
        return dist.MultivariateNormal(self.mu, covariance_matrix=cov).log_prob(x)

    # --8<-- [end:exact]


# --8<-- [start:data]
def make_data(num_points=2000, data_dim=8, latent_dim=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(data_dim, latent_dim, generator=g)
    psi = 0.2 + 0.3 * torch.rand(data_dim, generator=g)
    z = torch.randn(num_points, latent_dim, generator=g)
    return z @ W.T + psi.sqrt() * torch.randn(num_points, data_dim, generator=g)


# --8<-- [end:data]


def elbo_per_point(module, x, num_particles=100):
    with param_scope(module), torch.no_grad():
        loss = Trace_ELBO(num_particles=num_particles, vectorize_particles=True,
                          max_plate_nesting=1).loss(module.model, module.guide, x)
    return -loss / x.shape[0]


def main(num_points=2000, epochs=300, seed=0):
    # --8<-- [start:train]
    x = make_data(num_points, seed=seed)
    pyro.set_rng_seed(seed)
    fa = TinyFactorAnalysis(data_dim=8, latent_dim=2)
    history = fit(fa, x, lr=0.03, epochs=epochs, batch_size=500, lr_schedule="cosine", seed=seed)
    exact = fa.log_marginal(x).mean().item()
    elbo = elbo_per_point(fa, x)
    print(f"per point: exact log p(x) {exact:.4f}, ELBO {elbo:.4f}, gap {exact - elbo:.4f}")
    # --8<-- [end:train]

    # --8<-- [start:compare]
    from sklearn.decomposition import FactorAnalysis as SklearnFA

    from pyrovae.models.factor_analysis import FactorAnalysis

    em_score = SklearnFA(2, random_state=seed).fit(x.numpy()).score(x.numpy())
    pyro.set_rng_seed(seed)
    full = FactorAnalysis(data_dim=8, latent_dim=2).initialise(x)
    fit(full, x, lr=0.03, epochs=epochs, batch_size=500, lr_schedule="cosine", seed=seed)
    full_exact, full_elbo = full.log_marginal(x).mean().item(), elbo_per_point(full, x)
    print(f"scikit-learn EM: log p(x) {em_score:.4f} per point")
    print(f"pyrovae FactorAnalysis (full-covariance guide): log p(x) {full_exact:.4f}, "
          f"ELBO {full_elbo:.4f}, gap {full_exact - full_elbo:.4f}")
    # --8<-- [end:compare]
    return dict(
        exact=exact, elbo=elbo, sklearn=float(em_score), full_exact=full_exact,
        full_elbo=full_elbo, final_epoch_loss=history.losses[-1],
    )


if __name__ == "__main__":
    main()
