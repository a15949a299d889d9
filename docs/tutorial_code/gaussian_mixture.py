"""Tutorial part 1: a Gaussian mixture whose cluster assignments are summed out exactly.

Run it: ``python docs/tutorial_code/gaussian_mixture.py``. The tests run ``main()`` with its
defaults and check the numbers it returns.
"""

# --8<-- [start:imports]
import pyro
import pyro.distributions as dist
import torch
from pyro.distributions import constraints
from pyro.infer import config_enumerate
from pyro.nn import PyroParam, pyro_method

from pyrovae import fit
from pyrovae.infer import param_scope
from pyrovae.models import ConfigurableModule, data_plate, take

# --8<-- [end:imports]


# --8<-- [start:model]
class GaussianMixture(ConfigurableModule):
    """A mixture of C diagonal Gaussians in D dimensions.

    Model: ``c_n ~ Categorical(softmax(logits))``,
    ``x_n | c_n ~ N(locs[c_n], diag(scales[c_n]^2))``.
    The weights, means and scales are parameters (point estimates); the assignment ``c_n`` is
    the only latent variable, and it is discrete, so it is summed out instead of sampled.
    """

    def __init__(self, num_components: int, data_dim: int) -> None:
        super().__init__(num_components=num_components, data_dim=data_dim)
        self.logits = PyroParam(torch.zeros(num_components))
        self.locs = PyroParam(torch.randn(num_components, data_dim))
        self.scales = PyroParam(
            torch.ones(num_components, data_dim), constraint=constraints.positive
        )

    @pyro_method
    @config_enumerate  # sum over c instead of sampling it (needs objective="enum")
    def model(self, x, subsample=None):
        with data_plate(x, subsample):  # N/M-scaled plate over the rows, dim=-1
            c = pyro.sample("c", dist.Categorical(logits=self.logits))
            pyro.sample(
                "x",
                dist.Normal(self.locs[c], self.scales[c]).to_event(1),
                obs=take(x, subsample),
            )

    @pyro_method
    def guide(self, x, subsample=None):
        pass  # no continuous latents; c is enumerated in the model

    # --8<-- [end:model]

    # --8<-- [start:helpers]
    @torch.no_grad()
    def initialise(self, x, generator=None):
        """Put the means on C distinct random data points (avoids empty clusters)."""
        rows = torch.randperm(x.shape[0], generator=generator)[: len(self.logits)]
        self.locs = x[rows].clone()
        return self

    @torch.no_grad()
    def log_joint(self, x):
        """``log p(x_n, c_n = k)`` for every row and component: [N, C]."""
        log_weights = torch.log_softmax(self.logits, -1)
        comps = dist.Normal(self.locs, self.scales).to_event(1)
        return log_weights + comps.log_prob(x.unsqueeze(-2))

    def log_likelihood(self, x):
        """Exact ``log p(x_n) = logsumexp_k log p(x_n, c_n = k)``: [N]."""
        return torch.logsumexp(self.log_joint(x), -1)

    def responsibilities(self, x):
        """The exact posterior ``p(c_n = k | x_n)``: [N, C]."""
        return torch.softmax(self.log_joint(x), -1)

    # --8<-- [end:helpers]


# --8<-- [start:data]
def make_data(num_points=1500, seed=0):
    """Three well-separated 2-D clusters with different spreads and weights."""
    g = torch.Generator().manual_seed(seed)
    locs = torch.tensor([[-4.0, 0.0], [0.0, 4.0], [4.0, -1.0]])
    scales = torch.tensor([[0.6, 1.0], [0.8, 0.4], [1.2, 0.7]])
    c = torch.multinomial(torch.tensor([0.5, 0.3, 0.2]), num_points, True, generator=g)
    x = locs[c] + scales[c] * torch.randn(num_points, 2, generator=g)
    return x, c


# --8<-- [end:data]


def main(num_points=1500, epochs=150, seed=0):
    # --8<-- [start:train]
    x, true_c = make_data(num_points, seed)
    pyro.set_rng_seed(seed)
    gmm = GaussianMixture(num_components=3, data_dim=2).initialise(x)
    history = fit(gmm, x, objective="enum", lr=0.05, epochs=epochs, batch_size=500, seed=seed)

    # With c summed out and no other latents, the loss IS -log p(x): no bound, no noise.
    with param_scope(gmm), torch.no_grad():
        exact_loss = pyro.infer.TraceEnum_ELBO(max_plate_nesting=1).loss(gmm.model, gmm.guide, x)
    log_lik = gmm.log_likelihood(x).sum().item()
    print(f"TraceEnum_ELBO loss {exact_loss:.3f}  vs  -log p(x) by hand {-log_lik:.3f}")
    # --8<-- [end:train]

    # --8<-- [start:compare]
    from sklearn.mixture import GaussianMixture as SklearnGMM

    em = SklearnGMM(3, covariance_type="diag", random_state=seed).fit(x.numpy())
    ours, theirs = log_lik / num_points, float(em.score(x.numpy()))
    print(f"log-likelihood per point: SVI {ours:.4f}, EM (scikit-learn) {theirs:.4f}")

    # Clusters are found up to a relabelling: score each cluster by its best-matching label.
    hard = gmm.responsibilities(x).argmax(-1)
    agreement = sum(
        (true_c[hard == k].bincount(minlength=3).max().item() if (hard == k).any() else 0)
        for k in range(3)
    ) / num_points
    print(f"fraction of points in a cluster's majority class: {agreement:.3f}")
    # --8<-- [end:compare]
    return dict(
        loss=exact_loss,
        neg_log_lik=-log_lik,
        log_lik_per_point=ours,
        sklearn_log_lik_per_point=theirs,
        agreement=agreement,
        final_epoch_loss=history.losses[-1],
        weights=torch.softmax(gmm.logits.detach(), -1).tolist(),
    )


if __name__ == "__main__":
    main()
