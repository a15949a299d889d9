"""SketchRNN (Ha & Eck 2018): a sequence VAE over pen strokes, as a Pyro model/guide.

References:
    D. Ha and D. Eck. A neural representation of sketch drawings. ICLR 2018 (arXiv:1704.03477).
    A. Graves. Generating sequences with recurrent neural networks. arXiv:1308.0850, 2013
    (the bivariate-Gaussian mixture over pen offsets).
"""

from __future__ import annotations

import math

import pyro
import pyro.distributions as dist
import torch
import torch.nn.functional as F
from pyro import poutine
from torch import nn

from .base import ConfigurableModule, check_positive_int, data_plate, draw, take
from .free_bits import check_kl_floor, kl_floor_factor
from .sequence import masked_sequence, reverse_within_length, step_mask, trim_to_longest

__all__ = ["PEN_LOSSES", "SketchRNN", "bivariate_normal_log_prob"]

PEN_LOSSES = ("sketch", "padded")
#: stroke-5 row that starts every sketch (the decoder's first input): pen down at the origin.
START = (0.0, 0.0, 1.0, 0.0, 0.0)
#: stroke-5 row after a sketch's last point.
END = (0.0, 0.0, 0.0, 0.0, 1.0)
_RHO_LIMIT = 1.0 - 1e-5  # keeps 1 - rho^2 away from 0 in float32


def bivariate_normal_log_prob(
    dx: torch.Tensor,
    dy: torch.Tensor,
    mu_x: torch.Tensor,
    mu_y: torch.Tensor,
    sigma_x: torch.Tensor,
    sigma_y: torch.Tensor,
    rho: torch.Tensor,
) -> torch.Tensor:
    """``log N((dx, dy) | mu, sigma, rho)`` of a correlated bivariate normal, written out.

    ``-log(2 pi sx sy sqrt(1 - rho^2)) - Z / (2 (1 - rho^2))`` with
    ``Z = u^2 + v^2 - 2 rho u v``, ``u = (dx - mu_x) / sx``, ``v = (dy - mu_y) / sy``
    (Ha & Eck 2018, eq. 2 and its footnote; Graves 2013, eqs. 24-25). All arguments broadcast.
    """
    u = (dx - mu_x) / sigma_x
    v = (dy - mu_y) / sigma_y
    one_minus = 1.0 - rho * rho
    z = u * u + v * v - 2.0 * rho * u * v
    return -math.log(2.0 * math.pi) - sigma_x.log() - sigma_y.log() - 0.5 * one_minus.log() - (
        0.5 * z / one_minus
    )


def _scale_tril(sigma_x, sigma_y, rho):
    """Cholesky factor ``[[sx, 0], [rho sy, sy sqrt(1 - rho^2)]]`` of the 2x2 covariance."""
    zero = torch.zeros_like(sigma_x)
    row0 = torch.stack([sigma_x, zero], dim=-1)
    row1 = torch.stack([rho * sigma_y, sigma_y * (1.0 - rho * rho).sqrt()], dim=-1)
    return torch.stack([row0, row1], dim=-2)


class _Encoder(nn.Module):
    """Bidirectional LSTM over the first ``L_n`` rows of each sketch -> ``(loc, scale)`` of z.

    The backward direction reads each sketch reversed within its own length (a gather), so no
    packing is needed and the rows after ``L_n`` never enter either direction's final state.
    """

    def __init__(self, hidden_size: int, latent_dim: int) -> None:
        super().__init__()
        self.forward_rnn = nn.LSTM(5, hidden_size, batch_first=True)
        self.backward_rnn = nn.LSTM(5, hidden_size, batch_first=True)
        self.head = nn.Linear(2 * hidden_size, 2 * latent_dim)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor):
        last = (lengths - 1).clamp(min=0)
        x_reversed = reverse_within_length(x, lengths)
        index = last.view(-1, 1, 1)
        h_forward = self.forward_rnn(x)[0]
        h_backward = self.backward_rnn(x_reversed)[0]
        h_forward = h_forward.gather(1, index.expand(-1, 1, h_forward.shape[-1])).squeeze(1)
        h_backward = h_backward.gather(1, index.expand(-1, 1, h_backward.shape[-1])).squeeze(1)
        loc, log_var = self.head(torch.cat([h_forward, h_backward], dim=-1)).chunk(2, dim=-1)
        return loc, (0.5 * log_var).exp()


class SketchRNN(ConfigurableModule):
    """SketchRNN: a VAE whose decoder is an LSTM emitting pen strokes.

    A sketch is a sequence of stroke-5 rows ``S_t = (dx_t, dy_t, p1_t, p2_t, p3_t)`` (offsets,
    then a one-hot pen state: down / lifted / sketch ended), padded to ``[N, T, 5]`` with
    ``lengths`` L_n (see [`pyrovae.data.sketches`][]).

    Generative story (model), for each sketch n::

        z_n ~ N(0, I_K)
        (h_0, c_0) = tanh(W_0 z_n + b_0)
        for t = 0, 1, ...:                     # S_{-1} = (0, 0, 1, 0, 0), the start row
            (h_t, c_t) = LSTM([S_{t-1}, z_n], (h_{t-1}, c_{t-1}))
            pi, mu, sigma, rho, q = heads(h_t)
            (dx_t, dy_t) ~ sum_j pi_j N(mu_j, Sigma(sigma_j, rho_j))    # M bivariate Gaussians
            pen_t ~ Categorical(q)                                     # 3 states

    Teacher forcing: the decoder reads the observed previous row. Offsets are scored at
    ``t < L_n``. Pen states are scored at ``t <= L_n`` (``pen_loss="sketch"``, default: the
    points and the one end-of-sketch row, so the model learns when to stop) or at
    ``t < max_length`` (``pen_loss="padded"``: the paper's training loss, which also scores the
    end state over the padding up to N_max). Either way the model replaces every row after
    ``L_n`` with the end row itself, so padding values never change a log-probability.

    Guide::

        q(z_n | S) = N(loc, diag scale^2),  (loc, log scale^2) = W [h_fwd(L_n - 1), h_bwd]

    from a bidirectional LSTM over the L_n points.

    Sites: ``"z"`` (``.to_event(1)``), ``"offsets"`` and ``"pen"`` (observed; one event per
    sketch through [`pyrovae.models.sequence.masked_sequence`][]), all in the data plate at
    ``dim=-1`` (subsampled by [`pyrovae.fit`][], which scales them by N/M). Optional
    guide site ``"kl_floor"`` (a factor, see ``kl_floor`` and [`pyrovae.models.free_bits`][]).

    KL annealing and free bits (the paper's ``w_KL * eta_step * max(L_KL, KL_min)``):
    ``kl_weight`` scales the ``"z"`` site in model and guide (``poutine.scale``), so the ELBO's
    KL term is multiplied by it; ``kl_floor > 0`` adds, in the guide, the factor
    ``N * kl_weight * relu(kl_floor - mean_n KL_n)`` with ``KL_n`` the closed-form
    ``KL(q(z_n | S) || N(0, I))`` averaged over the minibatch: with ``Trace_ELBO``
    (``objective="elbo"``) the loss is then ``recon + kl_weight * max(KL, kl_floor)`` per sketch in
    expectation. ``TraceMeanField_ELBO`` ignores factors in guides, so use ``"elbo"`` with a floor.
    ``kl_weight`` is a buffer (saved in checkpoints);
    [`KLAnnealing`][pyrovae.infer.callbacks.KLAnnealing] with ``rate=`` updates it per epoch.

    Units differ from the paper's: here the reconstruction term is a sum over a sketch's steps
    and the KL a sum over the K latent dimensions (nats per sketch), where the paper divides
    them by N_max and K. The paper's ``w_KL`` corresponds to ``kl_weight = w_KL * N_max / K``
    and its ``KL_min`` to ``kl_floor = KL_min * K``.

    Args:
        latent_dim: K (default 128).
        encoder_size: hidden units of each encoder direction (default 256).
        decoder_size: hidden units of the decoder LSTM (default 512).
        num_mixtures: M Gaussians per offset (default 20).
        max_length: N_max, the steps the decoder may take when sampling and the scored pen
            steps of ``pen_loss="padded"`` (default 250).
        pen_loss: ``"sketch"`` (default) or ``"padded"``, see above.
        kl_weight: initial weight of the KL term (default 1.0, must be positive).
        kl_floor: free nats per sketch below which the KL is not pushed down (default 0.0).
        min_sigma: added to the mixture's standard deviations (default 1e-3, in units of the
            data's offset scale), which keeps the offset density bounded.
    """

    def __init__(
        self,
        latent_dim: int = 128,
        encoder_size: int = 256,
        decoder_size: int = 512,
        num_mixtures: int = 20,
        max_length: int = 250,
        pen_loss: str = "sketch",
        kl_weight: float = 1.0,
        kl_floor: float = 0.0,
        min_sigma: float = 1e-3,
    ) -> None:
        for value, name in [
            (latent_dim, "latent_dim"),
            (encoder_size, "encoder_size"),
            (decoder_size, "decoder_size"),
            (num_mixtures, "num_mixtures"),
            (max_length, "max_length"),
        ]:
            check_positive_int(value, name)
        if pen_loss not in PEN_LOSSES:
            raise ValueError(f"pen_loss must be one of {PEN_LOSSES}, got {pen_loss!r}")
        if not kl_weight > 0:
            raise ValueError(f"kl_weight must be positive, got {kl_weight}")
        if not min_sigma >= 0:
            raise ValueError(f"min_sigma must be non-negative, got {min_sigma}")
        super().__init__(
            latent_dim=latent_dim,
            encoder_size=encoder_size,
            decoder_size=decoder_size,
            num_mixtures=num_mixtures,
            max_length=max_length,
            pen_loss=pen_loss,
            kl_weight=kl_weight,
            kl_floor=kl_floor,
            min_sigma=min_sigma,
        )
        self.latent_dim, self.num_mixtures = latent_dim, num_mixtures
        self.max_length, self.pen_loss = max_length, pen_loss
        self.kl_floor, self.min_sigma = check_kl_floor(kl_floor), float(min_sigma)
        self.register_buffer("kl_weight", torch.tensor(float(kl_weight)))
        self.encoder = _Encoder(encoder_size, latent_dim)
        self.initial_state = nn.Linear(latent_dim, 2 * decoder_size)
        self.decoder_rnn = nn.LSTM(5 + latent_dim, decoder_size, batch_first=True)
        self.head = nn.Linear(decoder_size, 6 * num_mixtures + 3)

    # ------------------------------------------------------------------------- building blocks
    def _check(self, x: torch.Tensor, lengths: torch.Tensor) -> None:
        if not isinstance(x, torch.Tensor) or not x.is_floating_point():
            raise ValueError("x must be a floating-point tensor [N, T, 5]")
        if x.dim() != 3 or x.shape[-1] != 5:
            raise ValueError(f"x must have shape [N, T, 5], got {list(x.shape)}")
        if lengths.shape != x.shape[:1] or lengths.is_floating_point():
            raise ValueError(f"lengths must be an integer tensor [{x.shape[0]}]")

    def _clean(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """``x`` with every row at ``t >= L_n`` replaced by the end row; ``max_length`` rows
        at least when ``pen_loss="padded"``."""
        if self.pen_loss == "padded" and x.shape[-2] < self.max_length:
            x = F.pad(x, (0, 0, 0, self.max_length - x.shape[-2]))
        valid = step_mask(lengths, x.shape[-2]).unsqueeze(-1)
        return torch.where(valid, x, x.new_tensor(END))

    def _pen_mask(self, lengths: torch.Tensor, num_steps: int) -> torch.Tensor:
        if self.pen_loss == "sketch":
            return step_mask(lengths + 1, num_steps)
        return step_mask(lengths.new_full(lengths.shape, self.max_length), num_steps)

    def _initial_state(self, z: torch.Tensor):
        h, c = torch.tanh(self.initial_state(z)).chunk(2, dim=-1)
        return h.unsqueeze(0).contiguous(), c.unsqueeze(0).contiguous()

    def _mixture_params(self, out: torch.Tensor, temperature: float = 1.0):
        """Heads -> (mixture logits, mu_x, mu_y, sigma_x, sigma_y, rho, pen logits).

        ``temperature`` tau divides both sets of logits and multiplies the covariances
        (``sigma * sqrt(tau)``), as in the paper's sampling.
        """
        m = self.num_mixtures
        logits, mu_x, mu_y, log_sx, log_sy, rho_raw, pen = out.split([m] * 6 + [3], dim=-1)
        root_tau = math.sqrt(temperature)
        sigma_x = (log_sx.exp() + self.min_sigma) * root_tau
        sigma_y = (log_sy.exp() + self.min_sigma) * root_tau
        rho = torch.tanh(rho_raw) * _RHO_LIMIT
        return logits / temperature, mu_x, mu_y, sigma_x, sigma_y, rho, pen / temperature

    def _decode_teacher_forced(self, z: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Head outputs ``[..., N, T, 6M + 3]`` for ``z`` [..., N, K] reading rows of ``x``."""
        batch_shape = z.shape[:-1]
        x = x.expand(*batch_shape, *x.shape[-2:]).reshape(-1, *x.shape[-2:])
        z = z.reshape(-1, z.shape[-1])
        start = x.new_tensor(START).expand(x.shape[0], 1, 5)
        previous = torch.cat([start, x[:, :-1]], dim=1)
        inputs = torch.cat([previous, z.unsqueeze(1).expand(-1, x.shape[1], -1)], dim=-1)
        hidden = self.decoder_rnn(inputs, self._initial_state(z))[0]
        out = self.head(hidden)
        return out.reshape(*batch_shape, *out.shape[-2:])

    def step_distributions(self, out: torch.Tensor, temperature: float = 1.0):
        """``(offsets, pen)`` per-step distributions of batch shape ``out.shape[:-1]``."""
        logits, mu_x, mu_y, sigma_x, sigma_y, rho, pen = self._mixture_params(out, temperature)
        components = dist.MultivariateNormal(
            torch.stack([mu_x, mu_y], dim=-1), scale_tril=_scale_tril(sigma_x, sigma_y, rho)
        )
        offsets = dist.MixtureSameFamily(dist.Categorical(logits=logits), components)
        return offsets, dist.Categorical(logits=pen)

    def prior(self, like: torch.Tensor) -> dist.TorchDistribution:
        """``p(z) = N(0, I_K)`` on ``like``'s device and dtype; the model and [`sample`][] read
        it."""
        zeros = like.new_zeros(self.latent_dim)
        return dist.Normal(zeros, torch.ones_like(zeros)).to_event(1)

    # ----------------------------------------------------------------------------- model/guide
    def model(
        self, x: torch.Tensor, lengths: torch.Tensor, subsample: torch.Tensor | None = None
    ) -> None:
        """``x`` [N, T, 5] stroke-5 sketches, ``lengths`` [N]; ``subsample`` optional rows [M]."""
        self._check(x, lengths)
        with data_plate(x, subsample):
            lengths_b = take(lengths, subsample)
            # the rows after the longest sketch's end row are masked everywhere: not computed
            x_b = self._clean(trim_to_longest(take(x, subsample), lengths_b), lengths_b)
            with poutine.scale(scale=self.kl_weight):
                z = pyro.sample("z", self.prior(x))
            offsets, pen = self.step_distributions(self._decode_teacher_forced(z, x_b))
            num_steps = x_b.shape[-2]
            pyro.sample(
                "offsets",
                masked_sequence(offsets, step_mask(lengths_b, num_steps)),
                obs=x_b[..., :2],
            )
            pyro.sample(
                "pen",
                masked_sequence(pen, self._pen_mask(lengths_b, num_steps)),
                obs=x_b[..., 2:].argmax(-1),
            )

    def guide(
        self, x: torch.Tensor, lengths: torch.Tensor, subsample: torch.Tensor | None = None
    ) -> None:
        """``q(z | sketch)`` for the rows ``subsample``; plus the free-bits factor if any."""
        self._check(x, lengths)
        with data_plate(x, subsample):
            lengths_b = take(lengths, subsample)
            x_b = trim_to_longest(take(x, subsample), lengths_b)
            loc, scale = self.encoder(self._clean(x_b, lengths_b), lengths_b)
            with poutine.scale(scale=self.kl_weight):
                pyro.sample("z", dist.Normal(loc, scale).to_event(1))
        kl_floor_factor(loc, scale, self.kl_floor, self.kl_weight, x.shape[0])

    # ------------------------------------------------------------------------------ utilities
    @torch.no_grad()
    def loss_terms(self, x: torch.Tensor, lengths: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per-sketch ``log p(offsets | z)``, ``log p(pen | z)`` and ``KL(q || p)`` [N].

        [`elbo_terms`][pyrovae.infer.evaluation.elbo_terms] of this model and guide, with one
        ``z ~ q`` per sketch (the global RNG) and the closed-form KL, so they are the terms the
        training objective uses (before ``kl_weight`` and the floor).
        """
        from pyrovae.infer.evaluation import elbo_terms  # infer builds on models, not back

        sites = elbo_terms(self, x, lengths, batch_size=max(1, x.shape[0]), analytic_kl=True).sites
        return {"offsets": sites["offsets"], "pen": sites["pen"], "kl": sites["z"]}

    @torch.no_grad()
    def encode(self, x: torch.Tensor, lengths: torch.Tensor):
        """The guide's ``(loc [N, K], scale [N, K])``."""
        self._check(x, lengths)
        return self.encoder(self._clean(x, lengths), lengths)

    @torch.no_grad()
    def generate(
        self,
        z: torch.Tensor,
        temperature: float = 1.0,
        max_length: int | None = None,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Draw one sketch per row of ``z`` [n, K], step by step, at ``temperature``.

        Returns ``(x [n, T, 5], lengths [n])`` in the data's normalised units, rows after each
        sketch's end set to the end row; a sketch stops when it draws p3 or reaches
        ``max_length`` steps (default: the model's).
        """
        if not temperature > 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        if z.dim() != 2 or z.shape[-1] != self.latent_dim:
            raise ValueError(f"z must have shape [n, {self.latent_dim}], got {list(z.shape)}")
        steps = self.max_length if max_length is None else max_length
        check_positive_int(steps, "max_length")
        n = z.shape[0]
        state = self._initial_state(z)
        previous = z.new_tensor(START).expand(n, 5)
        rows = []
        done = torch.zeros(n, dtype=torch.bool, device=z.device)
        lengths = torch.full((n,), steps, dtype=torch.long, device=z.device)
        for t in range(steps):  # autoregressive: one step for all n sketches at once
            hidden, state = self.decoder_rnn(torch.cat([previous, z], -1).unsqueeze(1), state)
            out = self.head(hidden.squeeze(1))
            logits, mu_x, mu_y, sigma_x, sigma_y, rho, pen = self._mixture_params(out, temperature)
            j = _categorical(logits, generator).unsqueeze(-1)
            mx, my, sx, sy, r = (
                p.gather(-1, j).squeeze(-1) for p in (mu_x, mu_y, sigma_x, sigma_y, rho)
            )
            e1, e2 = torch.randn(2, n, generator=generator, device=z.device, dtype=z.dtype)
            dx = mx + sx * e1
            dy = my + sy * (r * e1 + (1.0 - r * r).sqrt() * e2)
            pen_state = F.one_hot(_categorical(pen, generator), 3).to(z.dtype)
            row = torch.cat([torch.stack([dx, dy], -1), pen_state], -1)
            ended = pen_state[:, 2].bool() & ~done
            lengths = torch.where(ended, torch.full_like(lengths, t), lengths)
            done = done | ended
            rows.append(torch.where(done.unsqueeze(-1), z.new_tensor(END), row))
            previous = rows[-1]
            if t % 16 == 15 and bool(done.all()):  # occasional host sync to stop early
                break
        return torch.stack(rows, dim=1), lengths

    @torch.no_grad()
    def reconstruct(
        self,
        x: torch.Tensor,
        lengths: torch.Tensor,
        temperature: float = 1.0,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``generate(encode(x).loc)``: new sketches drawn from the posterior mean of each z."""
        return self.generate(self.encode(x, lengths)[0], temperature, generator=generator)

    @torch.no_grad()
    def sample(
        self, n: int, temperature: float = 1.0, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``n`` sketches from the model: ``z ~`` [`prior`][], then [`generate`][].

        ``generator`` (default: the global RNG) must live on the model's device, as in
        [`generate`][] and [`reconstruct`][].
        """
        check_positive_int(n, "n")
        z = draw(self.prior(self.head.weight), (n,), generator)
        return self.generate(z, temperature, generator=generator)


def _categorical(logits: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """One draw per row of ``logits`` [n, k] (``torch.multinomial`` takes a generator)."""
    return torch.multinomial(logits.softmax(-1), 1, generator=generator).squeeze(-1)
