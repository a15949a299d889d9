"""A character-level RNN language model of SMILES strings: the SMILES VAE's decoder, no latent code.

The baseline the SMILES VAE is held against (MOSES's "CharRNN"): if a VAE's prior samples are
much less often valid than a plain language model's trained for the same time, the code costs
more than it gives. Its likelihood is exact (there is nothing to integrate out), so its test
NLL is a number the VAE's negative ELBO bounds from above for a decoder of the same size.

References:
    D. Polykovskiy, A. Zhebrak, B. Sanchez-Lengeling et al. Molecular Sets (MOSES): a
    benchmarking platform for molecular generation models. Frontiers in Pharmacology 2020.
    M. H. S. Segler, T. Kogej, C. Tyrchan, M. P. Waller. Generating focused molecule libraries
    for drug discovery with recurrent neural networks. ACS Central Science 4, 120–131, 2018.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from pyro import poutine
from torch import Tensor

from pyrovae.data.smiles import SmilesVocabulary

from .base import data_plate, take
from .sequence import trim_to_longest
from .smiles_decoder import SmilesGRUDecoder

__all__ = ["CharRNN"]


class CharRNN(SmilesGRUDecoder):
    """Autoregressive GRU language model of token sequences.

    Generative story (model), for each molecule n with tokens ``x_n = (x_n1, ..., x_nL, <eos>)``::

        h_n0 = tanh(b_h)                                # learned, the same for every molecule
        for t = 1, ..., L_n + 1:                        # up to and including <eos>
            h_nt = GRU(h_n,t-1, embed(x_n,t-1))         # x_n0 = <bos>
            x_nt | x_n,<t ~ Categorical(softmax(W_o h_nt + b_o))

    This is the [`SMILESVAE`][pyrovae.models.smiles_vae.SMILESVAE]'s decoder with the latent
    code removed (K = 0: ``W_h z`` and the ``z`` appended to every input are gone), built by the
    same class, [`SmilesGRUDecoder`][pyrovae.models.smiles_decoder.SmilesGRUDecoder]: the same
    tokeniser and vocabulary, embedding, GRU, output layer, masking after ``<eos>`` and
    sampler.

    Guide: none (empty); there is no latent variable, so ``Trace_ELBO``'s loss is exactly
    ``-log p(x)`` and training maximises the likelihood.

    Site: ``"x"`` (the next-token categoricals, masked after ``<eos>``, ``.to_event(1)``), in
    the data plate at ``dim=-1``. ``model``/``guide`` take ``(tokens, lengths,
    subsample=None)`` as made by [`pyrovae.data.smiles.SmilesVocabulary.encode`][]: ``tokens``
    [N, T] long, each row ``<bos> x_1 .. x_L <eos> <pad>..``, ``lengths`` [N] long, ``L + 1``.

    Args:
        tokens: the vocabulary's token list (index order, ``<pad>``, ``<bos>``, ``<eos>``
            first); kept in the config so a reloaded model decodes to strings.
        embedding_dim: token embedding width (default 32).
        hidden_size: GRU width (default 256).
        num_layers: GRU layers (default 1).
        max_length: most tokens [`sample`][pyrovae.models.smiles_decoder.SmilesGRUDecoder.sample]
            generates before giving up on ``<eos>`` (default 100).
    """

    def __init__(
        self,
        tokens: Sequence[str],
        embedding_dim: int = 32,
        hidden_size: int = 256,
        num_layers: int = 1,
        max_length: int = 100,
    ) -> None:
        vocab = SmilesVocabulary(tokens)
        super().__init__(tokens=list(tokens), embedding_dim=embedding_dim,
                         hidden_size=hidden_size, num_layers=num_layers, max_length=max_length)
        self._build_decoder(vocab, 0, embedding_dim, hidden_size, num_layers, max_length)

    def _no_code(self, n: int) -> Tensor:
        """``z`` [n, 0]: the decoder's code input, empty."""
        return self._like().new_zeros(n, 0)

    def model(self, tokens: Tensor, lengths: Tensor, subsample: Tensor | None = None) -> None:
        """``tokens`` [N, T] long and ``lengths`` [N] long, the whole data; ``subsample`` rows."""
        self._check_inputs(tokens, lengths)
        with data_plate(tokens, subsample):
            lb = take(lengths, subsample)
            # columns after the longest molecule's <eos> are masked everywhere: not computed
            tb = trim_to_longest(take(tokens, subsample), lb)
            self._observe_tokens(self._no_code(tb.shape[0]), tb, lb)

    def guide(self, tokens: Tensor, lengths: Tensor, subsample: Tensor | None = None) -> None:
        """Empty: the model has no latent variable."""

    @torch.no_grad()
    def log_marginal(self, tokens: Tensor, lengths: Tensor) -> Tensor:
        """``log p(x_n)`` [N] of each molecule, exact: the ``"x"`` site's log-density in a trace
        of [`model`][] (summed over its tokens, ``<eos>`` included, padding excluded)."""
        trace = poutine.trace(self.model).get_trace(tokens, lengths)
        site = trace.nodes["x"]
        return site["fn"].log_prob(site["value"])
