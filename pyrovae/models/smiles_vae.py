"""A VAE of SMILES strings with an autoregressive GRU decoder (Gómez-Bombarelli et al. 2018).

The model scores a molecule's token sequence under a GRU that is conditioned on the latent code
(its initial state is computed from ``z`` and ``z`` is appended to every input), with teacher
forcing: step ``t`` predicts token ``t`` from the true tokens before it. Sequences of different
lengths share one padded tensor; the steps after each molecule's ``<eos>`` are masked out of the
log-likelihood, so padding never changes a log-probability (tested exactly).

References:
    R. Gómez-Bombarelli, J. N. Wei, D. Duvenaud et al. Automatic chemical design using a
    data-driven continuous representation of molecules. ACS Central Science 4, 268–276, 2018.
    S. R. Bowman, L. Vilnis, O. Vinyals et al. Generating sentences from a continuous space.
    CoNLL 2016 (KL annealing, word dropout).
    D. P. Kingma, T. Salimans, R. Jozefowicz et al. Improved variational inference with
    inverse autoregressive flow. NeurIPS 2016 (free bits).
    D. Polykovskiy, A. Zhebrak, B. Sanchez-Lengeling et al. Molecular Sets (MOSES): a
    benchmarking platform for molecular generation models. Frontiers in Pharmacology 2020.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from torch import Tensor, nn

from pyrovae.data.smiles import SmilesVocabulary

from .base import check_positive_int, data_plate, take
from .free_bits import check_kl_floor, kl_floor_factor
from .sequence import reverse_within_length, trim_to_longest
from .smiles_decoder import SmilesGRUDecoder, check_lengths, check_token_shapes

__all__ = ["SMILESVAE", "check_lengths", "check_token_shapes"]


class SMILESVAE(SmilesGRUDecoder):
    """VAE of token sequences: Gaussian latent code, autoregressive GRU decoder.

    Generative story (model), for each molecule n with tokens ``x_n = (x_n1, ..., x_nL, <eos>)``::

        z_n ~ N(0, I_K)
        h_n0 = tanh(W_h z_n + b_h)
        for t = 1, ..., L_n + 1:                        # up to and including <eos>
            h_nt = GRU(h_n,t-1, [embed(x_n,t-1), z_n])  # x_n0 = <bos>
            x_nt | x_n,<t, z_n ~ Categorical(softmax(W_o h_nt + b_o))

    Guide::

        q_phi(z_n | x_n) = N(mu_phi(x_n), diag sigma_phi(x_n)^2)

    where ``mu_phi, sigma_phi`` read the final states of a bidirectional GRU over the tokens
    (one GRU left to right, one over the tokens reversed within each molecule's length, so
    padding never reaches either). The paper's encoder is a stack of 1-D convolutions over a
    fixed width of 120 characters; a recurrent encoder reads each molecule only up to its own
    end, which makes the padding invariance exact, and is what MOSES's character VAE uses.

    The decoder (its networks, teacher-forced likelihood, sampler and data checks) is
    [`SmilesGRUDecoder`][pyrovae.models.smiles_decoder.SmilesGRUDecoder]'s, which the
    baseline [`CharRNN`][pyrovae.models.char_rnn.CharRNN] shares with no latent code.

    Sites: ``"z"`` (``.to_event(1)``, scaled by `kl_weight` in model and guide, so the
    KL term of the ELBO is multiplied by it: KL annealing) and ``"x"`` (the next-token
    categoricals, masked after ``<eos>``, ``.to_event(1)``), both in the data plate at
    ``dim=-1``. ``model``/``guide`` take ``(tokens, lengths, subsample=None)`` as made by
    [`pyrovae.data.smiles.SmilesVocabulary.encode`][]: ``tokens`` [N, T] long, each row
    ``<bos> x_1 .. x_L <eos> <pad>..``, ``lengths`` [N] long, ``L + 1``.

    Two training devices against posterior collapse, both off by default:

    - *Word dropout* (Bowman et al. 2016): in training mode (``module.training``), each of the
      decoder's inputs after ``<bos>`` is replaced, independently with probability
      ``word_dropout``, by ``<pad>``, whose embedding is the zero vector (``padding_idx``): a
      dropped word tells the decoder nothing, so it must lean on ``z``. Only inputs are
      dropped, never the targets, and the draws come from torch's global generator (seeded by
      ``pyro.set_rng_seed``) on the data's device, one mask per molecule shared by vectorised
      particles. The objective trained is then the ELBO of a decoder that reads corrupted
      inputs; in eval mode (what [`pyrovae.load_checkpoint`][] returns, and what
      [`pyrovae.fit`][] leaves), and in [`generate`][], [`generate_smiles`][], [`reconstruct`][]
      and [`sample`][pyrovae.models.smiles_decoder.SmilesGRUDecoder.sample], nothing is
      dropped, so ELBOs and likelihoods evaluated there are those of the model as written
      above.
    - *Free bits* (``kl_floor``, the same option and factor as SketchRNN's, see
      [`pyrovae.models.free_bits`][]): the guide adds the factor ``"kl_floor"``, so that with
      ``Trace_ELBO`` the loss per molecule is ``recon + kl_weight * max(mean KL, kl_floor)``
      in expectation, the mean over the minibatch and ``kl_floor`` in nats per molecule. It is
      a term of the objective, not of the model: evaluate ELBOs with the site hidden.

    Args:
        tokens: the vocabulary's token list (index order, ``<pad>``, ``<bos>``, ``<eos>``
            first); kept in the config so a reloaded model decodes to strings.
        latent_dim: K (default 64).
        embedding_dim: token embedding width (default 32).
        hidden_size: decoder GRU width (default 256).
        encoder_hidden_size: width of each direction of the encoder GRU (default 128).
        num_layers: decoder GRU layers (default 1).
        max_length: most tokens [`generate`][] and
            [`sample`][pyrovae.models.smiles_decoder.SmilesGRUDecoder.sample] generate before
            giving up on ``<eos>`` (default 100).
        kl_weight: initial weight of the KL term, in (0, 1] (default 1.0: the ELBO); a buffer,
            so a checkpoint keeps the annealed value. See
            [`KLAnnealing`][pyrovae.infer.callbacks.KLAnnealing].
        word_dropout: probability of replacing each decoder input after ``<bos>`` by
            ``<pad>`` in training mode, in [0, 1] (default 0.0: none).
        kl_floor: free nats per molecule below which the KL is not pushed down (default 0.0:
            none).
    """

    def __init__(
        self,
        tokens: Sequence[str],
        latent_dim: int = 64,
        embedding_dim: int = 32,
        hidden_size: int = 256,
        encoder_hidden_size: int = 128,
        num_layers: int = 1,
        max_length: int = 100,
        kl_weight: float = 1.0,
        word_dropout: float = 0.0,
        kl_floor: float = 0.0,
    ) -> None:
        vocab = SmilesVocabulary(tokens)
        check_positive_int(latent_dim, "latent_dim")
        check_positive_int(encoder_hidden_size, "encoder_hidden_size")
        if not 0.0 < kl_weight <= 1.0:
            raise ValueError(f"kl_weight must be in (0, 1], got {kl_weight}")
        if not 0.0 <= word_dropout <= 1.0:
            raise ValueError(f"word_dropout must be in [0, 1], got {word_dropout}")
        kl_floor = check_kl_floor(kl_floor)
        super().__init__(
            tokens=list(tokens), latent_dim=latent_dim, embedding_dim=embedding_dim,
            hidden_size=hidden_size, encoder_hidden_size=encoder_hidden_size,
            num_layers=num_layers, max_length=max_length, kl_weight=kl_weight,
            word_dropout=word_dropout, kl_floor=kl_floor,
        )
        self.word_dropout, self.kl_floor = float(word_dropout), kl_floor
        self.register_buffer("kl_weight", torch.tensor(float(kl_weight)))
        # guide, built first: the order in which the initial weights are drawn
        self.encoder_embedding = nn.Embedding(len(vocab), embedding_dim, padding_idx=vocab.pad)
        self.encoder_forward = nn.GRU(embedding_dim, encoder_hidden_size, batch_first=True)
        self.encoder_backward = nn.GRU(embedding_dim, encoder_hidden_size, batch_first=True)
        self.encoder_head = nn.Linear(2 * encoder_hidden_size, 2 * latent_dim)
        # model
        self._build_decoder(vocab, latent_dim, embedding_dim, hidden_size, num_layers, max_length)

    # ------------------------------------------------------------------------------ networks
    def _guide_params(self, tokens: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        """``(loc, scale)`` [N, K] of q(z | x) from ``tokens`` [N, T] (with ``<bos>``)."""
        body = tokens[:, 1:]  # x_1 .. x_L <eos> <pad>..
        steps = body.shape[1]
        last = (lengths - 1).clamp(min=0, max=steps - 1)
        rows = torch.arange(body.shape[0], device=body.device)
        forward, _ = self.encoder_forward(self.encoder_embedding(body))
        backward, _ = self.encoder_backward(
            self.encoder_embedding(reverse_within_length(body, lengths))
        )
        summary = torch.cat([forward[rows, last], backward[rows, last]], dim=-1)
        loc, raw_scale = self.encoder_head(summary).chunk(2, dim=-1)
        return loc, nn.functional.softplus(raw_scale) + 1e-4

    def drop_words(self, inputs: Tensor) -> Tensor:
        """Decoder inputs [N, T] with word dropout applied in training mode (class docstring).

        Column 0, ``<bos>``, is never dropped. With ``word_dropout == 0`` or in eval mode the
        inputs come back as they are and no random number is drawn.
        """
        if not self.training or self.word_dropout == 0.0:
            return inputs
        drop = torch.rand(inputs.shape, device=inputs.device) < self.word_dropout
        drop[:, 0] = False
        return inputs.masked_fill(drop, self.vocab.pad)

    # ----------------------------------------------------------------------------- model/guide
    def model(self, tokens: Tensor, lengths: Tensor, subsample: Tensor | None = None) -> None:
        """``tokens`` [N, T] long and ``lengths`` [N] long, the whole data; ``subsample`` rows."""
        self._check_inputs(tokens, lengths)
        with data_plate(tokens, subsample):
            lb = take(lengths, subsample)
            # columns after the longest molecule's <eos> are masked everywhere: not computed
            tb = trim_to_longest(take(tokens, subsample), lb)
            zeros = self._like().new_zeros(self.latent_dim)
            with poutine.scale(scale=self.kl_weight):
                z = pyro.sample("z", dist.Normal(zeros, torch.ones_like(zeros)).to_event(1))
            self._observe_tokens(z, tb, lb)

    def guide(self, tokens: Tensor, lengths: Tensor, subsample: Tensor | None = None) -> None:
        """``q(z | x) = N(loc(x), diag scale(x)^2)`` for the rows ``subsample``; plus the
        free-bits factor if ``kl_floor > 0``."""
        self._check_inputs(tokens, lengths)
        with data_plate(tokens, subsample):
            lb = take(lengths, subsample)
            loc, scale = self._guide_params(trim_to_longest(take(tokens, subsample), lb), lb)
            with poutine.scale(scale=self.kl_weight):
                pyro.sample("z", dist.Normal(loc, scale).to_event(1))
        kl_floor_factor(loc, scale, self.kl_floor, self.kl_weight, tokens.shape[0])

    # ------------------------------------------------------------------------------ utilities
    @torch.no_grad()
    def encode(self, smiles: Sequence[str] | tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
        """The guide's ``(loc, scale)`` [N, K] for SMILES strings or ``(tokens, lengths)``."""
        if isinstance(smiles, tuple) and len(smiles) == 2 and isinstance(smiles[0], Tensor):
            tokens, lengths = smiles
        else:
            tokens, lengths = self._encode_strings(smiles)
        return self._guide_params(tokens, lengths)

    @torch.no_grad()
    def generate(
        self,
        z: Tensor,
        temperature: float = 1.0,
        greedy: bool = False,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Token rows [N, <= max_length + 1] decoded from ``z`` [N, K], one step at a time.

        ``greedy=True`` takes the most likely token at every step; otherwise tokens are drawn
        from ``softmax(logits / temperature)``. Rows end at ``<eos>``; the loop stops when every
        row has ended or after ``max_length + 1`` steps.
        """
        if z.dim() != 2 or z.shape[-1] != self.latent_dim:
            raise ValueError(f"z must have shape [N, {self.latent_dim}], got {list(z.shape)}")
        return self._generate(z, temperature, greedy, generator)

    @torch.no_grad()
    def generate_smiles(self, z: Tensor, **options: Any) -> list[str]:
        """SMILES strings from codes ``z`` [N, K]; ``options`` as in [`generate`][]."""
        return self.vocab.decode(self.generate(z, **options))

    @torch.no_grad()
    def reconstruct(self, smiles: Sequence[str], greedy: bool = True, **options: Any) -> list[str]:
        """``generate_smiles(encode(smiles).loc)``: greedy by default, as MOSES-style accuracy
        uses."""
        return self.generate_smiles(self.encode(smiles)[0], greedy=greedy, **options)
