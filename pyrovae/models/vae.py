"""The variational autoencoder (Kingma & Welling 2014; Rezende et al. 2014) as a Pyro model/guide.

References:
    D. P. Kingma and M. Welling. Auto-encoding variational Bayes. ICLR 2014.
    D. J. Rezende, S. Mohamed and D. Wierstra. Stochastic backpropagation and approximate
    inference in deep generative models. ICML 2014.
    Y. Burda, R. Grosse and R. Salakhutdinov. Importance weighted autoencoders. ICLR 2016.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import pyro
import pyro.distributions as dist
import torch
from torch import nn

from .base import (
    ConfigurableModule,
    check_data,
    check_once,
    check_positive_int,
    data_plate,
    draw,
    draw_data,
    take,
)
from .likelihoods import make_likelihood
from .networks import as_pyro, build_decoder, build_encoder, check_image_shape


class ScoreFunctionNormal(dist.Normal):
    """A ``Normal`` that Pyro treats as not reparameterisable (``has_rsample = False``).

    Its draws carry no gradient path, so ``Trace_ELBO`` differentiates through the site with the
    score-function (REINFORCE) estimator. A class attribute rather than ``has_rsample_(False)``,
    so that the flag survives ``.to_event()`` and the plates' ``expand``.
    """

    has_rsample = False


class VAE(ConfigurableModule):
    """A VAE with a diagonal-Gaussian amortised guide.

    Generative story (model), for each data point n::

        z_n ~ p(z) = N(0, I_K)                  # prior(): override it for another prior
        x_n | z_n ~ p_theta(x_n | z_n)          # Bernoulli / Gaussian with decoder output

    Guide::

        q_phi(z_n | x_n) = N(mu_phi(x_n), diag sigma_phi(x_n)^2)

    Sites: ``"z"`` (latent, ``.to_event(1)``) and ``"x"`` (observed, ``.to_event(1)``), both in
    the data plate at ``dim=-1``; vectorised particles add dimensions on the left.

    Colour images are flattened channel-major (``D = C*H*W``, ``image_shape=(C, H, W)``) and
    ``x_n`` holds every channel's grey level: each value in [0, 1] gets its own Bernoulli
    (``allow_continuous=True``) or Gaussian, independent given ``z_n``.

    Args:
        data_dim: D, values per image (default 784): pixels times colour channels.
        latent_dim: K (default 20).
        hidden_sizes: hidden widths of the encoder, from the data side (default ``(400,)``);
            the decoder mirrors them unless ``decoder_hidden_sizes`` is given. For
            ``arch="conv"`` the last entry is the width of the convolutional body's linear layer.
        decoder_hidden_sizes: decoder hidden widths from the latent side (default: reversed
            ``hidden_sizes``).
        arch: ``"mlp"`` (default) or ``"conv"`` (images of ``image_shape``, see
            [`conv_layout`][pyrovae.models.networks.conv_layout]).
        activation: nonlinearity name (default ``"relu"``; ``"tanh"`` for Burda et al.).
        likelihood: ``"bernoulli"`` (default), ``"gaussian"`` (fixed ``sigma``) or
            ``"gaussian_learned"`` (per-pixel mean and log-variance heads).
        sigma: observation noise of ``"gaussian"`` (default 0.1).
        min_scale: soft lower bound on the standard deviation of ``"gaussian_learned"``
            (default 0.01).
        mean_activation: ``"sigmoid"`` (default) or ``"identity"`` for Gaussian means.
        allow_continuous: let ``"bernoulli"`` score values in [0, 1] that are not 0/1
            (default False: non-binary data raises a ``ValueError``).
        reparameterized: draw the guide's ``z`` with the reparameterisation trick (default
            True). With False the guide's Normal has ``has_rsample=False`` and Pyro's ELBOs
            use the score-function (REINFORCE) estimator for it.
        encoder: your own network instead of the built one (default None): a ``torch.nn.Module``
            ``x [..., D] -> (loc [..., K], scale [..., K])`` with ``scale > 0``. ``arch`` and
            ``hidden_sizes`` then do not apply to it.
        decoder: your own network instead of the built one (default None): a ``torch.nn.Module``
            ``z [..., K] -> [..., H * D]`` raw outputs, where the likelihood reads ``H`` heads
            per pixel (1: Bernoulli logits, or Gaussian means before ``mean_activation``; 2 for
            ``"gaussian_learned"``: means, then raw log-variances). Both are converted to
            ``PyroModule`` in place, so that their weights go through Pyro's param store.
            ``config`` keeps a copy of each module as given, so a checkpoint can rebuild the
            model: the module's class must be importable to load it.
        image_shape: ``(C, H, W)`` of the flattened images, e.g. ``(3, 32, 32)`` for SVHN
            (default None: ``(1, 28, 28)`` for ``arch="conv"``); ``data_dim`` must be its
            product.

    Methods: [`encode`][] ``x -> (loc, scale)`` of ``q(z | x)``; [`decode`][]
    ``z -> E[x | z]``, the mean of ``p(x | z)``; [`sample`][] draws ``z`` from [`prior`][] and
    decodes it; [`reconstruct`][]; [`check_data`][].

    Data checks follow the rule of [`pyrovae.models.base`][]: shapes on every call; the
    likelihood's support (binary values for Bernoulli) on the whole data tensor once, while Pyro
    validation is on.
    """

    def __init__(
        self,
        data_dim: int = 784,
        latent_dim: int = 20,
        hidden_sizes: Sequence[int] = (400,),
        decoder_hidden_sizes: Sequence[int] | None = None,
        arch: str = "mlp",
        activation: str = "relu",
        likelihood: str = "bernoulli",
        sigma: float = 0.1,
        min_scale: float = 0.01,
        mean_activation: str = "sigmoid",
        allow_continuous: bool = False,
        reparameterized: bool = True,
        encoder: nn.Module | None = None,
        decoder: nn.Module | None = None,
        image_shape: Sequence[int] | None = None,
    ) -> None:
        check_positive_int(data_dim, "data_dim")
        check_positive_int(latent_dim, "latent_dim")
        if image_shape is not None:
            image_shape = check_image_shape(arch, data_dim, image_shape)
        hidden_sizes = [int(h) for h in hidden_sizes]
        if decoder_hidden_sizes is None:
            decoder_hidden_sizes = hidden_sizes[::-1]
        decoder_hidden_sizes = [int(h) for h in decoder_hidden_sizes]
        super().__init__(
            data_dim=data_dim,
            latent_dim=latent_dim,
            hidden_sizes=hidden_sizes,
            decoder_hidden_sizes=decoder_hidden_sizes,
            arch=arch,
            activation=activation,
            likelihood=likelihood,
            sigma=sigma,
            min_scale=min_scale,
            mean_activation=mean_activation,
            allow_continuous=allow_continuous,
            reparameterized=reparameterized,
            encoder=copy.deepcopy(encoder),  # as given, unconverted: a checkpoint rebuilds it
            decoder=copy.deepcopy(decoder),
            image_shape=None if image_shape is None else list(image_shape),
        )
        self.data_dim, self.latent_dim = data_dim, latent_dim
        self.image_shape = image_shape
        self.reparameterized = bool(reparameterized)
        self.likelihood = make_likelihood(
            likelihood,
            sigma=sigma,
            min_scale=min_scale,
            mean_activation=mean_activation,
            allow_continuous=allow_continuous,
        )
        if encoder is None:
            encoder = build_encoder(arch, data_dim, latent_dim, hidden_sizes, activation,
                                    image_shape)
        self.encoder = as_pyro(encoder)
        if decoder is None:
            decoder = build_decoder(
                arch, latent_dim, data_dim, decoder_hidden_sizes, activation,
                num_heads=self.likelihood.num_heads, image_shape=image_shape,
            )
        self.decoder = as_pyro(decoder)

    # ----------------------------------------------------------------------------- model/guide
    def prior(self, like: torch.Tensor) -> dist.TorchDistribution:
        """``p(z)``: ``N(0, I_K)`` with one event dimension, on ``like``'s device and dtype.

        The model and [`sample`][] both read it: override it for another prior.
        """
        zeros = like.new_zeros(self.latent_dim)
        return dist.Normal(zeros, torch.ones_like(zeros)).to_event(1)

    def model(self, x: torch.Tensor, subsample: torch.Tensor | None = None) -> None:
        """``x`` [N, D], the whole data; ``subsample`` an optional LongTensor [M] of rows."""
        self._check_inputs(x)
        with data_plate(x, subsample):
            xb = take(x, subsample)
            z = pyro.sample("z", self.prior(x))
            pyro.sample("x", self.likelihood.distribution(self.decoder(z)), obs=xb)

    def guide(self, x: torch.Tensor, subsample: torch.Tensor | None = None) -> None:
        """``q(z | x) = N(loc(x), diag scale(x)^2)`` for the rows ``subsample`` of ``x``."""
        self._check_inputs(x)
        with data_plate(x, subsample):
            loc, scale = self.encoder(take(x, subsample))
            normal = dist.Normal if self.reparameterized else ScoreFunctionNormal
            pyro.sample("z", normal(loc, scale).to_event(1))

    # ------------------------------------------------------------------------------ utilities
    def _check_inputs(self, x: torch.Tensor) -> None:
        """The data-check rule of [`pyrovae.models.base`][]: shapes now, values once."""
        check_data(x, self.data_dim)
        check_once(x, self.likelihood.check_key, self.likelihood.check)

    def check_data(self, x: torch.Tensor) -> None:
        """Check shape and the likelihood's support on all of ``x`` now (one host sync)."""
        check_data(x, self.data_dim)
        self.likelihood.check(x)

    def _like(self) -> torch.Tensor:
        return next(self.parameters())

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The guide's ``(loc [N, K], scale [N, K])`` for images ``x`` [N, D]."""
        check_data(x, self.data_dim)
        return self.encoder(x)

    @torch.no_grad()
    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Mean images ``E[x | z]`` [..., D] (probabilities for Bernoulli) for ``z`` [..., K]."""
        if z.shape[-1] != self.latent_dim:
            raise ValueError(f"z must have shape [..., {self.latent_dim}], got {list(z.shape)}")
        return self.likelihood.mean(self.decoder(z))

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """``decode(encode(x).loc)``: mean images [N, D] at the guide's posterior means."""
        return self.decode(self.encode(x)[0])

    @torch.no_grad()
    def sample(
        self, num_samples: int, mean: bool = True, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Images: ``z ~`` [`prior`][], then ``E[x | z]`` (default) or a draw of ``x``.

        Returns ``[num_samples, D]``. A subclass that overrides [`prior`][] (a VampPrior, a
        mixture) is sampled through it.

        Args:
            num_samples: number of images.
            mean: return ``E[x | z]`` (default True) instead of a draw from ``p(x | z)``.
            generator: optional ``torch.Generator`` for ``z`` and ``x`` (default: torch's
                global RNG). [`prior`][] is asked for ``p(z)`` on the generator's device (the
                CPU without one) and ``z`` moved to the model's, so a seeded sample of the
                standard prior is the same on every device; ``x`` is drawn likewise.
        """
        check_positive_int(num_samples, "num_samples")
        like = self._like()
        where = like.new_empty(0, device="cpu" if generator is None else generator.device)
        z = draw(self.prior(where), (num_samples,), generator).to(like.device)
        out = self.decoder(z)
        return self.likelihood.mean(out) if mean else draw_data(self.likelihood, out, generator)
