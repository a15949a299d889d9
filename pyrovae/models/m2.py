"""The semi-supervised M2 model (Kingma, Rezende, Mohamed & Welling, 2014) as one model/guide pair.

Generative story, for every image ``n`` (labelled or not)::

    y_n ~ Cat(pi)                      pi = uniform over the C classes
    z_n ~ N(0, I_K)
    x_n | y_n, z_n ~ Bernoulli(sigmoid(f_theta(z_n, y_n)))      (D pixels, independent)

or, with ``likelihood="gaussian_learned"`` (continuous data such as M1's latent codes, the
"M1+M2" stack)::

    x_n | y_n, z_n ~ N(m_theta(z_n, y_n), diag exp(v_theta(z_n, y_n)))

Guide (amortised)::

    q(y_n | x_n) = Cat(softmax(g_phi(x_n)))                             (the classifier)
    q(z_n | x_n, y_n) = N(mu_phi(x_n, y_n), diag sigma_phi(x_n, y_n)^2)

One ``model(x, y=None, subsample=None)`` and one ``guide(x, y=None, subsample=None)`` serve both
kinds of data:

* ``y`` given (labelled data): the model observes ``y``, the guide draws only ``z``, and the
  ELBO is the supervised bound
  ``L(x, y) = E_q(z|x,y)[log p(x|y,z) + log p(y) + log p(z) - log q(z|x,y)]``.
* ``y=None`` (unlabelled data): the guide's ``y`` site is marked for parallel enumeration
  (``config_enumerate``), so ``TraceEnum_ELBO`` sums over all C classes exactly instead of
  sampling one: ``U(x) = sum_y q(y|x) [L(x, y) - log q(y|x)]``. Train with
  ``fit(..., objective="enum")`` (``TraceEnum_ELBO(max_plate_nesting=1)``).

The classifier term lives in the same objective: on labelled data the guide adds
``pyro.factor("classifier", -(alpha / N_l) * log q(y_n | x_n))`` inside the data plate (a guide
factor is *subtracted* by the ELBO, hence the minus sign; ``has_rsample=True`` because it is a
deterministic, differentiable function of the parameters, so no score-function term is added).
The data plate scales it by ``N_l / M`` for a minibatch of M of the N_l labelled images, so the
minibatch estimate of the classifier term is ``alpha * mean_batch log q(y|x)``, and the full
objective maximised by ``fit`` with data ``{"unlabelled": (x_u,), "labelled": (x_l, y_l)}`` is
exactly Kingma et al.'s eq. (9)::

    J = sum_{n in U} U(x_n) + sum_{n in L} L(x_n, y_n) + alpha * (1/N_l) sum_{n in L} log q(y_n|x_n)

with one optimiser step per pair of batches. Kingma et al. use ``alpha = 0.1 * N`` (N = all
training images), the default here when ``num_train=N`` is given; e.g. N = 50000 and N_l = 100
weigh each labelled image's ``log q(y|x)`` by 50.

Optionally ``labelled_weight = w`` multiplies the supervised bound (not the classifier term):
``J_w = sum_U U + w * sum_L L(x, y) + alpha * mean_L log q(y|x)``. ``w = 1`` (default) is
Kingma et al.'s J; ``w = N_u / N_l`` weighs a labelled batch like an unlabelled one, as
implementations that average each batch do (it pushes the decoder to use y when labels are few).

Notes:
    * With the Bernoulli likelihood ``x`` must be binary (0/1): binarise images first
      (``pyrovae.data.binarize`` or ``DynamicBinarized``); Pyro's validation rejects other values.
    * ``fit(..., objective="enum", jit=True)`` works: ``JitTraceEnum_ELBO`` compiles one graph
      per call signature, ``(x, idx)`` and ``(x, y, idx)``; label checks are skipped while
      tracing. Both signatures read the parameters in the same order, which Pyro's
      ``CompiledFunction`` silently relies on (it keeps a single list of parameter names).
    * On labelled batches ``TraceEnum_ELBO`` warns that no site is enumerated; it is harmless.

References:
    D. P. Kingma, D. J. Rezende, S. Mohamed, M. Welling. Semi-supervised learning with deep
    generative models. NeurIPS 2014.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Sequence

import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
import torch
import torch.nn.functional as F
from pyro.infer import config_enumerate
from torch import nn

from .base import ConfigurableModule, check_data, check_positive_int, data_plate, take
from .likelihoods import make_likelihood
from .networks import activation_layer, as_pyro, build_decoder, conv_encoder_body, mlp

ARCHITECTURES = ("mlp", "conv")
M2_LIKELIHOODS = ("bernoulli", "gaussian", "gaussian_learned")


def check_labels(y: torch.Tensor, num_classes: int, what: str = "y") -> None:
    """Raise a ``ValueError`` unless ``y`` is a 1-D integer tensor of labels in ``0..C-1``."""
    if not isinstance(y, torch.Tensor) or y.dim() != 1 or y.is_floating_point():
        desc = f"{y.dtype} of shape {list(y.shape)}" if isinstance(y, torch.Tensor) else type(y)
        raise ValueError(f"{what} must be a 1-D integer tensor of class labels, got {desc}")
    if y.numel() and (int(y.min()) < 0 or int(y.max()) >= num_classes):
        raise ValueError(
            f"{what} has labels in {int(y.min())}..{int(y.max())}; they must lie in "
            f"0..{num_classes - 1} (num_classes={num_classes})"
        )


def _features(arch: str, data_dim: int, hidden_dims: Sequence[int], activation: str):
    """``[..., D] -> [..., hidden_dims[-1]]``: an MLP, or the 28x28 conv body."""
    if arch == "mlp":
        return mlp([data_dim, *hidden_dims], activation, activate_last=True)
    return conv_encoder_body(hidden_dims[-1], activation=activation)


class _Classifier(nn.Module):
    """``x [..., D] -> logits of q(y | x) [..., C]``."""

    def __init__(self, arch, data_dim, num_classes, hidden_dims, activation) -> None:
        super().__init__()
        self.body = _features(arch, data_dim, hidden_dims, activation)
        self.head = nn.Linear(hidden_dims[-1], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


class _LatentEncoder(nn.Module):
    """``(x [B, D], y) -> (loc, scale)`` of ``q(z | x, y)``.

    ``x`` goes through a body once; the label enters through a learned embedding added to the
    joint hidden layer (the same as a linear layer on ``[features, one_hot(y)]``), so with ``y``
    enumerated as ``[C, 1]`` the output is ``[C, B, K]`` without copying ``x`` C times.
    """

    def __init__(self, arch, data_dim, num_classes, latent_dim, hidden_dims, activation) -> None:
        super().__init__()
        width = hidden_dims[-1]
        self.body = _features(arch, data_dim, hidden_dims, activation)
        self.joint = nn.Linear(width, width)
        self.label = nn.Embedding(num_classes, width)
        self.act = activation_layer(activation)
        self.loc = nn.Linear(width, latent_dim)
        self.raw_scale = nn.Linear(width, latent_dim)

    def forward(self, x, y):
        h = self.act(self.joint(self.body(x)) + self.label(y))
        return self.loc(h), F.softplus(self.raw_scale(h)) + 1e-4


class M2(ConfigurableModule):
    """Semi-supervised M2 (see the module docstring for the story).

    Args:
        data_dim: D, pixels per image (default 784; ``"conv"`` networks need 784 = 28x28).
        num_classes: C (default 10).
        latent_dim: K, the style latent's dimension (default 50, as Kingma et al.). With 100
            labels and a short budget a 2-D z learned to classify far better than 50-D (a
            small z cannot hold the digit identity, so the model puts it in y; results/m2).
        hidden_dims: hidden widths of every network (default ``(500,)``); the decoder uses them
            in reverse order from the latent side, a conv body uses ``hidden_dims[-1]``.
        classifier_arch: ``"mlp"`` (default) or ``"conv"``, the network of ``q(y|x)``.
        encoder_arch: ``"mlp"`` (default) or ``"conv"``, the body of ``q(z|x,y)``.
        decoder_arch: ``"mlp"`` (default) or ``"conv"``, the network of ``p(x|y,z)``.
        activation: nonlinearity name from :mod:`pyrovae.models.networks` (default ``"softplus"``,
            as Kingma et al.).
        alpha: weight of the classifier term, ``alpha * mean_{labelled} log q(y|x)`` (Kingma et
            al.'s alpha). Default ``None``: ``0.1 * num_train``.
        num_train: N, the number of training images (labelled + unlabelled), used only for the
            default ``alpha``; one of ``alpha`` or ``num_train`` is required.
        labelled_weight: w > 0, the weight of the supervised bound L(x, y) (default 1.0).
        likelihood: ``"bernoulli"`` (default, binary images), ``"gaussian_learned"`` (a
            diagonal Gaussian with mean and log-variance heads, identity mean, for real-valued
            features such as M1's codes; its standard deviations are bounded below by 1e-3) or
            ``"gaussian"`` (identity mean, fixed standard deviation ``sigma``).
        sigma: the fixed standard deviation of ``likelihood="gaussian"`` (default 1.0).

    Attributes:
        alpha: the classifier weight in use (a float).
    """

    def __init__(
        self,
        data_dim: int = 784,
        num_classes: int = 10,
        latent_dim: int = 50,
        hidden_dims: Sequence[int] = (500,),
        classifier_arch: str = "mlp",
        encoder_arch: str = "mlp",
        decoder_arch: str = "mlp",
        activation: str = "softplus",
        alpha: float | None = None,
        num_train: int | None = None,
        labelled_weight: float = 1.0,
        likelihood: str = "bernoulli",
        sigma: float = 1.0,
    ) -> None:
        check_positive_int(data_dim, "data_dim")
        check_positive_int(num_classes, "num_classes")
        check_positive_int(latent_dim, "latent_dim")
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {num_classes}")
        hidden_dims = [check_positive_int(int(h), "hidden_dims[i]") for h in hidden_dims]
        if not hidden_dims:
            raise ValueError("hidden_dims must list at least one width")
        for name, arch in [("classifier_arch", classifier_arch), ("encoder_arch", encoder_arch),
                           ("decoder_arch", decoder_arch)]:
            if arch not in ARCHITECTURES:
                raise ValueError(f"{name} must be one of {ARCHITECTURES}, got {arch!r}")
            if arch == "conv" and data_dim != 784:
                raise ValueError(f"{name}='conv' needs 28x28 images (data_dim=784), got {data_dim}")
        if alpha is None:
            if num_train is None:
                raise ValueError(
                    "give alpha (the classifier weight) or num_train (then "
                    "alpha = 0.1 * num_train, Kingma et al.'s choice)"
                )
            check_positive_int(num_train, "num_train")
            alpha = 0.1 * num_train
        if not float(alpha) >= 0:
            raise ValueError(f"alpha must be >= 0, got {alpha}")
        if not float(labelled_weight) > 0:
            raise ValueError(f"labelled_weight must be > 0, got {labelled_weight}")
        if likelihood not in M2_LIKELIHOODS:
            raise ValueError(f"likelihood must be one of {M2_LIKELIHOODS}, got {likelihood!r}")
        super().__init__(
            data_dim=data_dim, num_classes=num_classes, latent_dim=latent_dim,
            hidden_dims=list(hidden_dims), classifier_arch=classifier_arch,
            encoder_arch=encoder_arch, decoder_arch=decoder_arch, activation=activation,
            alpha=float(alpha), num_train=num_train, labelled_weight=float(labelled_weight),
            likelihood=likelihood, sigma=float(sigma),
        )
        self.data_dim, self.num_classes, self.latent_dim = data_dim, num_classes, latent_dim
        self.alpha, self.labelled_weight = float(alpha), float(labelled_weight)
        self.classifier = as_pyro(
            _Classifier(classifier_arch, data_dim, num_classes, hidden_dims, activation)
        )
        self.encoder = as_pyro(
            _LatentEncoder(encoder_arch, data_dim, num_classes, latent_dim, hidden_dims, activation)
        )
        self.likelihood = make_likelihood(
            likelihood, sigma=sigma, min_scale=1e-3, mean_activation="identity"
        )
        self.decoder = build_decoder(
            decoder_arch, latent_dim + num_classes, data_dim, hidden_dims[::-1], activation,
            num_heads=self.likelihood.num_heads,
        )

    # ----------------------------------------------------------------- networks
    def _one_hot(self, y: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        return F.one_hot(y, self.num_classes).to(like.dtype)

    def decoder_logits(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The decoder's output for ``p(x | y, z)`` (Bernoulli logits, or Gaussian mean and
        log-variance heads): ``z`` [..., K] and ``y`` [...] (broadcastable) -> [..., heads * D]."""
        y_hot = self._one_hot(y, z)
        shape = torch.broadcast_shapes(z.shape[:-1], y_hot.shape[:-1])
        joint = torch.cat(
            [z.expand(*shape, self.latent_dim), y_hot.expand(*shape, self.num_classes)], -1
        )
        return self.decoder(joint)

    def _check_x(self, x: torch.Tensor, y: torch.Tensor | None) -> None:
        check_data(x, self.data_dim)
        if torch.jit.is_tracing():
            return
        if y is not None:
            check_labels(y, self.num_classes)
            if y.shape[0] != x.shape[0]:
                raise ValueError(f"x has {x.shape[0]} rows but y has {y.shape[0]} labels")
            if x.shape[0] < self.num_classes:
                raise ValueError(
                    f"only {x.shape[0]} labelled examples for {self.num_classes} classes: give at "
                    "least one per class (see pyrovae.data.labelled_split)"
                )

    # ----------------------------------------------------------------- model / guide
    def model(
        self, x: torch.Tensor, y: torch.Tensor | None = None, subsample: torch.Tensor | None = None
    ) -> None:
        """``p(x, y, z)``. ``x`` [N, D] binary; ``y`` [N] labels or None; ``subsample`` [M] rows."""
        self._check_x(x, y)
        prior_logits = x.new_zeros(self.num_classes)
        with data_plate(x, subsample), self._supervised_scale(y):
            xb, yb = take(x, subsample), take(y, subsample)
            y_site = pyro.sample("y", dist.Categorical(logits=prior_logits), obs=yb)
            z_loc = xb.new_zeros(xb.shape[0], self.latent_dim)
            z = pyro.sample("z", dist.Normal(z_loc, 1.0).to_event(1))
            out = self.decoder_logits(z, y_site)
            pyro.sample("x", self.likelihood.distribution(out), obs=xb)

    def guide(
        self, x: torch.Tensor, y: torch.Tensor | None = None, subsample: torch.Tensor | None = None
    ) -> None:
        """``q(y | x) q(z | x, y)``; ``y`` enumerated in parallel when None (see module doc)."""
        config_enumerate(self._guide, default="parallel")(x, y, subsample)

    def _guide(self, x, y, subsample) -> None:
        self._check_x(x, y)
        with data_plate(x, subsample):
            xb = take(x, subsample)
            logits = self.classifier(xb)
            if y is None:
                y_site = pyro.sample("y", dist.Categorical(logits=logits))
            else:
                y_site = take(y, subsample)
                log_q = dist.Categorical(logits=logits).log_prob(y_site)
                # Minus: the ELBO subtracts guide factors. Scaled by N_l/M by the plate.
                pyro.factor("classifier", -(self.alpha / x.shape[0]) * log_q, has_rsample=True)
            loc, scale = self.encoder(xb, y_site)
            with self._supervised_scale(y):
                pyro.sample("z", dist.Normal(loc, scale).to_event(1))

    def _supervised_scale(self, y: torch.Tensor | None):
        """Scale the supervised bound's sites by ``labelled_weight`` (labelled data only)."""
        if y is None or self.labelled_weight == 1.0:
            return contextlib.nullcontext()
        return poutine.scale(scale=self.labelled_weight)

    # ----------------------------------------------------------------- prediction
    @torch.no_grad()
    def class_logits(self, x: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
        """Logits of ``q(y | x)`` [N, C] for images ``x`` [N, D], in chunks of ``batch_size``."""
        check_data(x, self.data_dim)
        chunks = [self.classifier(xb) for xb in x.split(batch_size)]
        return torch.cat(chunks) if chunks else x.new_zeros(0, self.num_classes)

    @torch.no_grad()
    def classify(self, x: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
        """``argmax_y q(y | x)``: a LongTensor [N] for images ``x`` [N, D]."""
        return self.class_logits(x, batch_size).argmax(-1)

    @torch.no_grad()
    def class_elbos(
        self, x: torch.Tensor, num_samples: int = 1, eps: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Monte Carlo estimates of the supervised bound ``L(x, y=k)`` for every class k: [N, C].

        ``argmax_k L(x, k)`` is the generative model's own classification of ``x`` (up to the
        bound's gap), which the unsupervised term pulls ``q(y|x)`` towards.

        Args:
            x: data [N, D].
            num_samples: reparameterised draws of ``z ~ q(z | x, k)`` averaged per class.
            eps: optional standard-normal noise [S, C, N, K] to use instead of fresh draws.
        """
        check_data(x, self.data_dim)
        classes = torch.arange(self.num_classes, device=x.device)[:, None]  # [C, 1]
        loc, scale = self.encoder(x, classes)  # [C, N, K]
        if eps is None:
            eps = torch.randn((num_samples, *loc.shape), dtype=loc.dtype, device=loc.device)
        z = loc + scale * eps  # [S, C, N, K]
        log_px = self.likelihood.distribution(self.decoder_logits(z, classes)).log_prob(x)
        log_pz = dist.Normal(0.0, 1.0).log_prob(z).sum(-1)
        log_qz = dist.Normal(loc, scale).log_prob(z).sum(-1)
        log_py = -math.log(self.num_classes)
        return (log_px + log_py + log_pz - log_qz).mean(0).T

    @torch.no_grad()
    def encode(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(loc, scale)`` of ``q(z | x, y)``, each [N, K], for ``x`` [N, D] and labels [N]."""
        check_data(x, self.data_dim)
        check_labels(y, self.num_classes)
        return self.encoder(x, y)

    @torch.no_grad()
    def sample(self, y: torch.Tensor, z: torch.Tensor | None = None) -> torch.Tensor:
        """The decoder mean ``E[x | y, z]`` [N, D] (pixel probabilities for Bernoulli).

        Args:
            y: labels [N].
            z: styles [N, K]; default: fresh draws from the prior ``N(0, I)``.
        """
        check_labels(y, self.num_classes)
        if z is None:
            weight = next(self.decoder.parameters())
            z = torch.randn(y.shape[0], self.latent_dim, dtype=weight.dtype, device=weight.device)
        if z.dim() != 2 or z.shape != (y.shape[0], self.latent_dim):
            raise ValueError(
                f"z must have shape [{y.shape[0]}, {self.latent_dim}], got {list(z.shape)}"
            )
        return self.likelihood.mean(self.decoder_logits(z, y))
