"""The autoregressive GRU decoder over SMILES tokens that the SMILES VAE and its baseline share.

[`SMILESVAE`][pyrovae.models.smiles_vae.SMILESVAE] conditions it on a latent code ``z`` of
width K; [`CharRNN`][pyrovae.models.char_rnn.CharRNN] is the same decoder with K = 0, a
character-level language model. One class holds the networks, the teacher-forced logits, the
masked token likelihood, the sampler and the data checks, so the two models cannot drift apart:
with the code's weights set to zero the VAE's decoder *is* the language model (tested).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import pyro
import pyro.distributions as dist
import torch
from torch import Tensor, nn

from pyrovae.data.smiles import SmilesVocabulary

from .base import ConfigurableModule, DataError, check_once, check_positive_int
from .sequence import masked_sequence, step_mask

__all__ = ["LearnedState", "SmilesGRUDecoder", "check_lengths", "check_token_shapes"]


class SmilesGRUDecoder(ConfigurableModule):
    """Base class: ``p(x | z)`` as a GRU over tokens, ``z`` of width ``latent_dim`` (0: none)::

        h_0 = tanh(W_h z + b_h)                          # K = 0: tanh(b_h), learned
        h_t = GRU(h_t-1, [embed(x_t-1), z])              # x_0 = <bos>
        x_t | x_<t, z ~ Categorical(softmax(W_o h_t + b_o))

    Subclasses call ``_build_decoder`` in their constructor (where, in the order of creation,
    it draws its initial weights) and write ``model``/``guide``. Parameter names
    (``embedding``, ``initial_state``, ``decoder``, ``output``) are those of the SMILES VAE's
    checkpoints. With K = 0, ``initial_state`` is a [`LearnedState`][] (``b_h`` alone, named
    ``initial_state.bias`` as the VAE's).
    """

    latent_dim: int
    num_layers: int
    max_length: int
    vocab: SmilesVocabulary

    def _build_decoder(self, vocab: SmilesVocabulary, latent_dim: int, embedding_dim: int,
                       hidden_size: int, num_layers: int, max_length: int) -> None:
        for value, name in [(embedding_dim, "embedding_dim"), (hidden_size, "hidden_size"),
                            (num_layers, "num_layers"), (max_length, "max_length")]:
            check_positive_int(value, name)
        self.vocab = vocab
        self.latent_dim, self.num_layers, self.max_length = latent_dim, num_layers, max_length
        size = len(vocab)
        self.embedding = nn.Embedding(size, embedding_dim, padding_idx=vocab.pad)
        if latent_dim > 0:
            self.initial_state = nn.Linear(latent_dim, num_layers * hidden_size)
        else:
            self.initial_state = LearnedState(num_layers * hidden_size)
        self.decoder = nn.GRU(
            embedding_dim + latent_dim, hidden_size, num_layers=num_layers, batch_first=True
        )
        self.output = nn.Linear(hidden_size, size)

    # ------------------------------------------------------------------------------ networks
    def _initial_hidden(self, z: Tensor) -> Tensor:
        """GRU state [layers, B, H] from ``z`` [B, K]."""
        h = torch.tanh(self.initial_state(z))
        return h.reshape(z.shape[0], self.num_layers, -1).transpose(0, 1).contiguous()

    def drop_words(self, inputs: Tensor) -> Tensor:
        """The decoder's inputs [N, T] as it reads them in training (here: unchanged; the SMILES
        VAE's word dropout overrides this)."""
        return inputs

    def decoder_logits(self, z: Tensor, tokens: Tensor) -> Tensor:
        """Next-token logits [..., N, T - 1, V] under teacher forcing.

        Args:
            z: codes [..., N, K] (leading dimensions: vectorised particles; K may be 0).
            tokens: [N, T], rows starting with ``<bos>``; step t reads token t and predicts
                token t + 1.
        """
        inputs = self.drop_words(tokens[:, :-1])
        batch = z.shape[:-1]
        flat_z = z.reshape(math.prod(batch), z.shape[-1])  # not -1: K may be 0
        repeats = flat_z.shape[0] // inputs.shape[0]
        embedded = self.embedding(inputs).repeat(repeats, 1, 1)
        steps = inputs.shape[1]
        x = torch.cat([embedded, flat_z.unsqueeze(1).expand(-1, steps, -1)], dim=-1)
        out, _ = self.decoder(x, self._initial_hidden(flat_z))
        logits = self.output(out)
        return logits.reshape(*batch, steps, logits.shape[-1])

    def _observe_tokens(self, z: Tensor, tokens: Tensor, lengths: Tensor) -> None:
        """The ``"x"`` site, inside the data plate: the next-token categoricals of ``tokens``
        [N, T] given ``z`` [..., N, K], masked after each molecule's ``<eos>``."""
        logits = self.decoder_logits(z, tokens)
        mask = step_mask(lengths, logits.shape[-2])
        pyro.sample("x", masked_sequence(dist.Categorical(logits=logits), mask), obs=tokens[:, 1:])

    # ------------------------------------------------------------------------------ sampling
    @torch.no_grad()
    def _generate(
        self, z: Tensor, temperature: float, greedy: bool, generator: torch.Generator | None,
    ) -> Tensor:
        """Token rows [N, <= max_length + 1] decoded from ``z`` [N, K], one step at a time:
        the most likely token (``greedy``) or a draw from ``softmax(logits / temperature)``."""
        if not greedy and not temperature > 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        n = z.shape[0]
        hidden = self._initial_hidden(z)
        token = torch.full((n,), self.vocab.bos, dtype=torch.long, device=z.device)
        done = torch.zeros(n, dtype=torch.bool, device=z.device)
        out = []
        for _ in range(self.max_length + 1):
            x = torch.cat([self.embedding(token), z], dim=-1).unsqueeze(1)
            step, hidden = self.decoder(x, hidden)
            logits = self.output(step[:, 0])
            if greedy:
                token = logits.argmax(-1)
            else:
                probs = torch.softmax(logits / temperature, dim=-1)
                token = torch.multinomial(probs, 1, generator=generator).squeeze(-1)
            token = token.masked_fill(done, self.vocab.pad)
            out.append(token)
            done = done | (token == self.vocab.eos)
            if bool(done.all()):
                break
        return torch.stack(out, dim=1)

    @torch.no_grad()
    def sample(
        self,
        n: int,
        temperature: float = 1.0,
        greedy: bool = False,
        generator: torch.Generator | None = None,
    ) -> list[str]:
        """``n`` SMILES strings from the model: ``z ~ N(0, I_K)`` (nothing when K = 0), then
        tokens drawn from ``softmax(logits / temperature)`` (or the most likely, ``greedy``)
        until ``<eos>`` or ``max_length + 1`` tokens.

        ``generator``, if given, must live on the model's device.
        """
        check_positive_int(n, "n")
        like = self._like()
        z = torch.randn(
            n, self.latent_dim, generator=generator, dtype=like.dtype, device=like.device
        )
        return self.vocab.decode(self._generate(z, temperature, greedy, generator))

    # ------------------------------------------------------------------------------ data checks
    def _check_inputs(self, tokens: Tensor, lengths: Tensor) -> None:
        """The data-check rule of [`pyrovae.models.base`][]: shapes now, values once per
        tensor (an id outside the vocabulary would be an ``IndexError``, a device assert on a
        GPU)."""
        check_token_shapes(tokens, lengths)
        check_once(tokens, f"smiles_ids_{len(self.vocab)}", self._check_ids)
        check_once(lengths, f"smiles_lengths_{tokens.shape[1]}",
                   lambda lengths: check_lengths(lengths, tokens.shape[1]))

    def check_data(self, tokens: Tensor, lengths: Tensor) -> None:
        """Check shapes, token ids and lengths of all the data now (one host sync)."""
        check_token_shapes(tokens, lengths)
        self._check_ids(tokens)
        check_lengths(lengths, tokens.shape[1])

    def _check_ids(self, tokens: Tensor) -> None:
        size = len(self.vocab)
        low, high = int(tokens.min()), int(tokens.max())
        if low < 0 or high >= size:
            raise DataError(
                f"tokens hold ids {low}..{high}, outside this model's vocabulary of {size} "
                f"tokens (0..{size - 1}): encode the SMILES with the vocabulary it was built "
                "with (model.vocab.encode)"
            )

    # ------------------------------------------------------------------------------ utilities
    def _like(self) -> Tensor:
        return self.output.weight

    def _encode_strings(self, smiles: Sequence[str]) -> tuple[Tensor, Tensor]:
        tokens, lengths = self.vocab.encode(list(smiles))
        device = self._like().device
        return tokens.to(device), lengths.to(device)


class LearnedState(nn.Module):
    """``b`` [size], one learned vector for every row: ``forward(z)`` is ``b`` repeated for each
    of ``z``'s B rows (``z`` [B, 0]), the ``W z + b`` of ``nn.Linear`` with no inputs.

    A plain module, not a parameter of the ``PyroModule`` that holds it: Pyro shares such
    parameters by name through its global param store, so two models in one process would
    share one ``initial_state``. It starts at zero (``nn.Linear`` with no inputs would too).
    """

    def __init__(self, size: int) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(size))

    def forward(self, z: Tensor) -> Tensor:
        return self.bias.expand(z.shape[0], -1)


def check_token_shapes(tokens: Tensor, lengths: Tensor) -> None:
    """``tokens`` a long [N, T] with T >= 2 (``<bos>`` and one more), ``lengths`` a long [N]."""
    for name, value, dims in (("tokens", tokens, 2), ("lengths", lengths, 1)):
        if not isinstance(value, Tensor) or value.dtype != torch.long or value.dim() != dims:
            got = (f"{value.dtype} of shape {list(value.shape)}" if isinstance(value, Tensor)
                   else type(value).__name__)
            raise ValueError(f"{name} must be a {dims}-D torch.long tensor, got {got}")
    if tokens.shape[1] < 2 or lengths.shape[0] != tokens.shape[0]:
        raise ValueError(f"tokens [N, T >= 2] and lengths [N] must agree, got "
                         f"{list(tokens.shape)} and {list(lengths.shape)}")


def check_lengths(lengths: Tensor, columns: int) -> None:
    """Each length (tokens after ``<bos>``, ``<eos>`` included) in ``1..columns - 1``."""
    low, high = int(lengths.min()), int(lengths.max())
    if low < 1 or high > columns - 1:
        raise DataError(f"lengths must be in 1..{columns - 1} (the tokens after <bos>, <eos> "
                        f"included), got {low}..{high}")
