"""The same networks and losses as pyrovae's VAE, M2 and PPCA, written in plain PyTorch.

Each class copies its weights from the pyrovae module it shadows, so both start from the same
point, and computes the loss pyrovae's ``fit`` minimises, by hand: the single-sample ELBO scaled
by N/M (and for M2 the exact sum over the C labels and the classifier term). Only the
benchmarks use these.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

LOG_2PI = math.log(2 * math.pi)


def normal_log_prob(x: torch.Tensor, loc, scale) -> torch.Tensor:
    """Log-density of independent Normals, summed over the last dimension."""
    scale = torch.as_tensor(scale, dtype=x.dtype, device=x.device)
    return (-0.5 * ((x - loc) / scale) ** 2 - scale.log() - 0.5 * LOG_2PI).sum(-1)


def bernoulli_log_prob(x: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    return -F.binary_cross_entropy_with_logits(logits, x.expand_as(logits), reduction="none").sum(
        -1
    )


def copy_parameters(target: nn.Module, source: nn.Module) -> None:
    """Copy ``source``'s parameters into ``target``'s, matched by order and shape."""
    ours, theirs = list(target.parameters()), list(source.parameters())
    if [p.shape for p in ours] != [p.shape for p in theirs]:
        raise ValueError("the plain and pyrovae networks differ in their parameters")
    with torch.no_grad():
        for a, b in zip(ours, theirs, strict=True):
            a.copy_(b)


def mlp(sizes: list[int], activation: type[nn.Module], activate_last: bool) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        layers.append(nn.Linear(n_in, n_out))
        if i < len(sizes) - 2 or activate_last:
            layers.append(activation())
    return nn.Sequential(*layers)


class PlainVAE(nn.Module):
    """An MLP VAE with a Bernoulli likelihood, as ``pyrovae.models.VAE(arch="mlp")``."""

    def __init__(self, vae) -> None:
        super().__init__()
        c = vae.config
        hidden, act = c["hidden_sizes"], nn.ReLU if c["activation"] == "relu" else nn.Tanh
        self.body = mlp([c["data_dim"], *hidden], act, activate_last=True)
        self.loc = nn.Linear(hidden[-1], c["latent_dim"])
        self.raw_scale = nn.Linear(hidden[-1], c["latent_dim"])
        self.decoder = mlp([c["latent_dim"], *c["decoder_hidden_sizes"], c["data_dim"]], act, False)
        copy_parameters(self, vae)

    def loss(self, xb: torch.Tensor, scale: float) -> torch.Tensor:
        h = self.body(xb)
        loc, sd = self.loc(h), F.softplus(self.raw_scale(h)) + 1e-4
        z = loc + sd * torch.randn_like(loc)
        elbo = (
            bernoulli_log_prob(xb, self.decoder(z))
            + normal_log_prob(z, 0.0, 1.0)
            - normal_log_prob(z, loc, sd)
        )
        return -scale * elbo.sum()

    def iwae_loss(self, xb: torch.Tensor, scale: float, num_particles: int) -> torch.Tensor:
        """The K-sample importance-weighted bound's loss, K particles in one batch dimension."""
        h = self.body(xb)
        loc, sd = self.loc(h), F.softplus(self.raw_scale(h)) + 1e-4
        z = loc + sd * torch.randn((num_particles, *loc.shape), dtype=loc.dtype, device=loc.device)
        log_w = (
            bernoulli_log_prob(xb, self.decoder(z))
            + normal_log_prob(z, 0.0, 1.0)
            - normal_log_prob(z, loc, sd)
        )
        bound = torch.logsumexp(log_w, 0) - math.log(num_particles)
        return -scale * bound.sum()


class PlainPPCA(nn.Module):
    """PPCA with the amortised linear-Gaussian guide, as ``pyrovae.models.PPCA``.

    The parameters are the same unconstrained values: ``sigma2 = exp(s)`` and the guide's
    Cholesky factor ``L = tril(T, -1) + diag(exp(diag(T)))``, as Pyro's transforms define them.
    """

    def __init__(self, ppca) -> None:
        super().__init__()
        state = {k.removesuffix("_unconstrained"): v for k, v in ppca.state_dict().items()}
        for name, value in state.items():
            setattr(self, name, nn.Parameter(value.detach().clone()))

    def loss(self, xb: torch.Tensor, scale: float) -> torch.Tensor:
        T = self.guide_scale_tril
        L = torch.tril(T, -1) + torch.diag_embed(T.diagonal().exp())
        loc = xb @ self.encoder_weight.T + self.encoder_bias
        eps = torch.randn_like(loc)
        z = loc + eps @ L.T
        log_q = -0.5 * (eps**2).sum(-1) - T.diagonal().sum() - 0.5 * loc.shape[-1] * LOG_2PI
        sigma = (0.5 * self.sigma2).exp()
        elbo = (
            normal_log_prob(xb, z @ self.W.T + self.mu, sigma)
            + normal_log_prob(z, 0.0, 1.0)
            - log_q
        )
        return -scale * elbo.sum()


class PlainM2(nn.Module):
    """M2 with MLP networks, as ``pyrovae.models.M2`` with every ``*_arch="mlp"``."""

    def __init__(self, m2) -> None:
        super().__init__()
        c = m2.config
        acts = {"softplus": nn.Softplus, "relu": nn.ReLU, "tanh": nn.Tanh}
        act = acts[c["activation"]]
        d, k, h, classes = c["data_dim"], c["latent_dim"], c["hidden_sizes"], c["num_classes"]
        self.num_classes, self.alpha = classes, m2.alpha
        self.classifier_body = mlp([d, *h], act, activate_last=True)
        self.classifier_head = nn.Linear(h[-1], classes)
        self.encoder_body = mlp([d, *h], act, activate_last=True)
        self.joint = nn.Linear(h[-1], h[-1])
        self.label = nn.Embedding(classes, h[-1])
        self.act = act()
        self.loc = nn.Linear(h[-1], k)
        self.raw_scale = nn.Linear(h[-1], k)
        self.decoder = mlp([k + classes, *h[::-1], d], act, False)
        copy_parameters(self, m2)

    def _labelled_elbo(self, xb, y):
        """``L(x, y)`` for labels ``y`` broadcastable against the batch ([B] or [C, 1])."""
        hidden = self.joint(self.encoder_body(xb))
        h = self.act(hidden + self.label(y))
        loc, sd = self.loc(h), F.softplus(self.raw_scale(h)) + 1e-4
        z = loc + sd * torch.randn_like(loc)
        y_hot = F.one_hot(y, self.num_classes).to(z.dtype).expand(*z.shape[:-1], self.num_classes)
        logits = self.decoder(torch.cat([z, y_hot], -1))
        return (
            bernoulli_log_prob(xb, logits)
            - math.log(self.num_classes)
            + normal_log_prob(z, 0.0, 1.0)
            - normal_log_prob(z, loc, sd)
        )

    def loss(self, xu, scale_u, xl, yl, scale_l, num_labelled) -> torch.Tensor:
        log_q = F.log_softmax(self.classifier_head(self.classifier_body(xu)), -1)  # [B, C]
        ys = torch.arange(self.num_classes, device=xu.device).unsqueeze(-1)  # [C, 1]
        per_class = self._labelled_elbo(xu, ys)  # [C, B]: every class at once
        unsupervised = (log_q.exp().T * (per_class - log_q.T)).sum(0)
        supervised = self._labelled_elbo(xl, yl)
        log_q_l = F.log_softmax(self.classifier_head(self.classifier_body(xl)), -1)
        classifier = log_q_l.gather(-1, yl.unsqueeze(-1)).squeeze(-1)
        labelled = supervised + (self.alpha / num_labelled) * classifier
        return -(scale_u * unsupervised.sum() + scale_l * labelled.sum())
