"""The SMILES VAE family of a run: its molecules and vocabulary, its model built from the run's
options, the training stream and callbacks (KL schedule with a cap, the collapse monitor, the
CPU time and its budget), and the metrics of a trained model (MOSES-style sample metrics,
reconstruction, ELBO, KL and active units). ``pyrovae smiles`` and ``experiments/smiles`` both
build through here.

**Models** (``model``, `MODELS`): ``"vae"``, the SMILES VAE, and ``"charrnn"``, its baseline
(issue 24): the same decoder with no latent code, a character-level language model
([`CharRNN`][pyrovae.models.char_rnn.CharRNN]), trained on the same molecules, vocabulary and
bucketed batches, evaluated on the same sample metrics and by its exact test NLL. The options of
`VAE_ONLY` (the code, the encoder, the KL) do not apply to it: a value other than the default
is a `RunError`. ``cpu_minutes`` stops either model once its training has used that much CPU
time (`pyrovae.runs.cpu_budget`), so the baseline can be given the VAE's CPU time; every epoch's
row records ``cpu_seconds`` so far.

A run's options are a dict (the command line's ``options.json``, or a script's ``vars(args)``)
holding the names of `DEFAULTS`. An "epoch" is one pass over a chunk of ``epoch_size``
molecules of the ``train_limit`` drawn from MOSES's training split (with ``seed``); successive
epochs walk through the chunks in turn, so that the checkpoints and the KL schedule (which act
at epoch ends) come every few minutes on a CPU while training still sees every molecule once
before any is repeated.

**KL scale.** Our loss is per molecule: the token log-likelihoods *summed* over the molecule
plus ``kl_weight`` times its KL (weight 1: the negative ELBO). MOSES's CharVAE averages the
token cross-entropy over tokens, so its weight ``w`` is ``w * L`` here, with L the mean number
of predicted tokens per molecule (``kl_cap_per_token`` converts with the subset's L).
"""

from __future__ import annotations

import logging
import time
from typing import Any, NamedTuple

import pyro
import torch
from pyro import poutine

from pyrovae.data.buckets import bucketed_batches
from pyrovae.data.smiles import SmilesVocabulary, load_smiles
from pyrovae.infer import KLAnnealing, TimeBudget, fit
from pyrovae.infer.collapse import CollapseMonitor
from pyrovae.models.char_rnn import CharRNN
from pyrovae.models.free_bits import KL_FLOOR_SITE
from pyrovae.models.smiles_vae import SMILESVAE
from pyrovae.runs.cpu_budget import CpuBudget
from pyrovae.runs.launch import RunError

logger = logging.getLogger(__name__)

#: The options a run reads, with their defaults.
DEFAULTS: dict[str, Any] = {
    "train_limit": 100_000, "epoch_size": 10_000, "batch_size": 128, "lr": 1e-3,
    "clip_norm": 50.0, "latent_dim": 64, "embedding_dim": 32, "decoder_size": 256,
    "encoder_size": 128, "layers": 1, "kl_start": 0.1, "kl_epochs": 5, "kl_cap": 1.0,
    "kl_cap_per_token": None, "bucket_pool": 50, "monitor_size": 1000, "word_dropout": 0.0,
    "kl_floor": 0.0, "checkpoint_every": 100, "seed": 0, "model": "vae", "cpu_minutes": None,
}

#: The classes ``model`` names.
MODELS: dict[str, type] = {"vae": SMILESVAE, "charrnn": CharRNN}

#: The options only the VAE reads: its code, its encoder and its KL term.
VAE_ONLY = ("latent_dim", "encoder_size", "kl_start", "kl_epochs", "kl_cap", "kl_cap_per_token",
            "word_dropout", "kl_floor")


def option(options: dict[str, Any], name: str) -> Any:
    """``options[name]``, else its default."""
    return options.get(name, DEFAULTS[name])


def check_options(options: dict[str, Any]) -> str:
    """The run's ``model`` (a key of `MODELS`), after checking that a ``"charrnn"`` run sets
    none of `VAE_ONLY` to another value than its default; a `RunError` names the option."""
    name = option(options, "model")
    if name not in MODELS:
        raise RunError(f"--model {name} is not one of {sorted(MODELS)}")
    if name == "charrnn":
        given = [key for key in VAE_ONLY if option(options, key) != DEFAULTS[key]]
        if given:
            flags = ", ".join("--" + key.replace("_", "-") for key in given)
            verb = "does" if len(given) == 1 else "do"
            raise RunError(f"{flags} {verb} not apply to --model charrnn (it has no latent code "
                           "or encoder): leave them out")
    return name


class SmilesChunks:
    """Epoch ``e`` is chunk ``e mod C`` of the encoded subset (``for_epoch`` for ``fit``)."""

    def __init__(self, tokens: torch.Tensor, lengths: torch.Tensor, chunk: int) -> None:
        self.tokens, self.lengths = tokens, lengths
        self.chunk = min(chunk, tokens.shape[0])
        self.count = tokens.shape[0] // self.chunk

    def __len__(self) -> int:
        return self.chunk

    def _rows(self, epoch: int) -> slice:
        start = (epoch % self.count) * self.chunk
        return slice(start, start + self.chunk)

    def for_epoch(self, epoch: int) -> tuple[torch.Tensor, torch.Tensor]:
        rows = self._rows(epoch)
        return self.tokens[rows], self.lengths[rows]


class BucketedChunks(SmilesChunks):
    """`SmilesChunks` whose batches (``fit`` uses ``batches``) hold molecules of similar
    length: `pyrovae.data.buckets.bucketed_batches` within each epoch's chunk."""

    def __init__(self, tokens, lengths, chunk: int, batch_size: int, pool: int = 50) -> None:
        super().__init__(tokens, lengths, chunk)
        self.batch_size, self.pool = batch_size, pool

    def batches(self, seed: int, epoch: int) -> list[torch.Tensor]:
        return bucketed_batches(self.lengths[self._rows(epoch)], self.batch_size, seed, epoch,
                                self.pool)


class Molecules(NamedTuple):
    smiles: list[str]
    vocab: SmilesVocabulary
    tokens: torch.Tensor
    lengths: torch.Tensor

    @property
    def mean_tokens(self) -> float:
        """Predicted tokens per molecule, with ``<eos>``."""
        return float(self.lengths.float().mean())


def data(options: dict[str, Any], *, root=None, download: bool = True) -> Molecules:
    """The run's training molecules (``train_limit`` drawn with ``seed``), the vocabulary
    built from them and their token ids (on the CPU; ``fit`` moves each batch)."""
    smiles = load_smiles("train", size=option(options, "train_limit"),
                         seed=option(options, "seed"), root=root, download=download)
    vocab = SmilesVocabulary.build(smiles)
    tokens, lengths = vocab.encode(smiles)
    return Molecules(smiles, vocab, tokens, lengths)


def kl_cap(options: dict[str, Any], molecules: Molecules) -> float:
    """The KL weight's final value on our per-molecule loss (see the module docstring)."""
    per_token = options.get("kl_cap_per_token")
    if per_token is None:
        return option(options, "kl_cap")
    return per_token * molecules.mean_tokens


def build(options: dict[str, Any], molecules: Molecules) -> SMILESVAE | CharRNN:
    """The model of a run (the one call of its constructor in both front ends): the SMILES VAE,
    its KL weight at the schedule's start, or with ``model="charrnn"`` its decoder alone; the
    decoder options are shared, the initial weights drawn with ``seed``."""
    name = check_options(options)
    decoder = dict(embedding_dim=option(options, "embedding_dim"),
                   hidden_size=option(options, "decoder_size"),
                   num_layers=option(options, "layers"))
    pyro.set_rng_seed(option(options, "seed"))
    if name == "charrnn":
        return CharRNN(molecules.vocab.tokens, **decoder)
    return SMILESVAE(
        molecules.vocab.tokens, latent_dim=option(options, "latent_dim"),
        encoder_hidden_size=option(options, "encoder_size"),
        kl_weight=min(option(options, "kl_start"), kl_cap(options, molecules)),
        word_dropout=option(options, "word_dropout"), kl_floor=option(options, "kl_floor"),
        **decoder,
    )


def fit_options(options: dict[str, Any], molecules: Molecules, *, device=None,
                root=None, download: bool = True) -> dict[str, Any]:
    """``fit``'s keyword arguments for the run (all but the model, the checkpoint folder and
    the seed, epochs, lr, device): the chunked stream (length-bucketed unless ``bucket_pool``
    is 0), the batch size, the clipping, and the callbacks. The VAE's: the KL weight rising
    linearly from ``kl_start`` to the cap over ``kl_epochs`` epochs, then held; the collapse
    monitor on ``monitor_size`` held-out molecules (MOSES test split) unless it is 0. The
    ``charrnn``'s: the exact NLL per molecule of the same held-out molecules."""
    vae = check_options(options) == "vae"
    callbacks: list = []
    if vae:
        cap = kl_cap(options, molecules)
        start = min(option(options, "kl_start"), cap)
        callbacks.append(KLAnnealing(start / cap, epochs=option(options, "kl_epochs"),
                                     weight=cap))
    monitor = option(options, "monitor_size")
    if monitor > 0:
        vocab = molecules.vocab
        held_out = [s for s in load_smiles("test", size=monitor, seed=option(options, "seed"),
                                           root=root, download=download) if vocab.covers(s)]
        held = tuple(t.to(device) for t in vocab.encode(held_out))
        callbacks.append(CollapseMonitor(lambda m: m.encode(held)) if vae
                         else held_out_nll(*held))
    batch_size, pool = option(options, "batch_size"), option(options, "bucket_pool")
    chunk = option(options, "epoch_size")
    if pool > 0:
        stream = BucketedChunks(molecules.tokens, molecules.lengths, chunk, batch_size, pool)
    else:
        stream = SmilesChunks(molecules.tokens, molecules.lengths, chunk)
    return dict(data=stream, batch_size=batch_size, clip_norm=option(options, "clip_norm"),
                checkpoint_every=option(options, "checkpoint_every"), callbacks=callbacks)


def train(model: SMILESVAE | CharRNN, molecules: Molecules, options: dict[str, Any], *,
          device: torch.device, out=None, resume: bool = False, minutes: float | None = None,
          root=None, download: bool = True, **fit_extra: Any):
    """The one training loop of a SMILES run, VAE or CharRNN (``pyrovae smiles train`` and
    ``resume``, ``experiments.smiles.train``): ``fit`` with the stream and callbacks of
    `fit_options`, ``options``' ``epochs``, ``lr``, ``seed``, ``devices`` and ``num_nodes``,
    stopped by ``TimeBudget(minutes)`` (wall time) and ``CpuBudget`` of ``options``'
    ``cpu_minutes`` (CPU time of the whole run; it records ``cpu_seconds`` in every row);
    checkpoints in ``out`` (continued from ``out/last.pt`` with ``resume``);
    ``root``/``download``: where the held-out molecules lie; ``fit_extra``: ``fit``'s other
    arguments (``config``, ``progress``). Returns the ``History`` (earlier invocations' epochs
    included) and this invocation's seconds."""
    started = time.perf_counter()
    training = fit_options(options, molecules, device=device, root=root, download=download)
    training["callbacks"] += [TimeBudget(minutes), CpuBudget(option(options, "cpu_minutes"))]
    history = fit(
        model, epochs=options["epochs"], lr=option(options, "lr"), seed=option(options, "seed"),
        device=device, devices=options.get("devices") or 1,
        num_nodes=options.get("num_nodes") or 1, checkpoint_dir=out, resume=resume,
        **training, **fit_extra,
    )
    return history, time.perf_counter() - started


def held_out_nll(tokens: torch.Tensor, lengths: torch.Tensor):
    """A ``fit`` callback: ``{"held_out_nll_per_molecule": -mean log p(x)}`` of a `CharRNN` on
    the encoded molecules ``(tokens, lengths)``, exact (`CharRNN.log_marginal`)."""
    def callback(info) -> dict[str, float]:
        log_p = info.module.log_marginal(tokens, lengths)
        return {"held_out_nll_per_molecule": -float(log_p.mean())}

    return callback


# ------------------------------------------------------------------------ a trained model
def _device(model) -> torch.device:
    return next(model.parameters()).device


def sample_molecules(model: SMILESVAE | CharRNN, n: int, temperature: float, batch_size: int,
                     seed: int) -> list[str]:
    """``n`` molecules from the model's ``sample`` (the decoder's sampler: tokens drawn at
    ``temperature`` after ``z ~ N(0, I)``, or with no code for a `CharRNN`), in batches."""
    generator = torch.Generator(device=_device(model)).manual_seed(seed)
    out: list[str] = []
    while len(out) < n:
        out += model.sample(min(batch_size, n - len(out)), temperature=temperature,
                            generator=generator)
    return out


def in_batches(fn, items, batch_size: int) -> list:
    out = []
    for start in range(0, len(items), batch_size):
        out += fn(items[start:start + batch_size])
    return out


def sample_metrics(samples: list[str], train: list[str]) -> dict[str, Any]:
    """Validity, unique@10k, novelty against ``train`` and internal diversity of ``samples``
    (`pyrovae.metrics.molecules`, which needs RDKit)."""
    from pyrovae.metrics import molecules as chem

    valid = [s for s in samples if chem.to_molecule(s) is not None]
    return {
        "validity": chem.validity(samples),
        "unique@10k": chem.uniqueness(samples, k=10_000) if valid else None,
        "novelty": chem.novelty(samples, train) if valid else None,
        "internal_diversity": chem.internal_diversity(valid) if len(valid) > 1 else None,
        "valid_samples": len(valid),
    }


def covered_molecules(model: SMILESVAE | CharRNN, pool: list[str]) -> list[str]:
    """The molecules of ``pool`` the model's vocabulary and length can encode."""
    vocab = model.vocab
    return [s for s in pool if vocab.covers(s)
            and len(vocab.encode([s])[0][0]) - 2 <= model.max_length]


def test_metrics(model: SMILESVAE, targets: list[str], batch_size: int) -> dict[str, Any]:
    """On the test molecules ``targets``: the one-sample ELBO per molecule of the model as
    written (KL weight 1, the free-bits factor hidden, no word dropout in eval mode), the
    guide's KL to the prior and its active units (latent dimensions whose guide mean varies
    across molecules, variance > 0.01: Burda et al. 2016), and the greedy reconstruction
    accuracy from the guide's mean when RDKit is installed. For a `CharRNN`,
    `language_model_metrics` instead."""
    if isinstance(model, CharRNN):
        return language_model_metrics(model, targets, batch_size)
    tokens, lengths = (t.to(_device(model)) for t in model.vocab.encode(targets))
    was_training = model.training
    model.eval()
    with torch.no_grad(), pyro.validation_enabled(False):
        weight = float(model.kl_weight)
        model.kl_weight.fill_(1.0)
        guide = poutine.block(model.guide, hide=[KL_FLOOR_SITE])
        elbo = -pyro.infer.Trace_ELBO().loss(model.model, guide, tokens, lengths)
        model.kl_weight.fill_(weight)
        loc, scale = model.encode((tokens, lengths))
    kl = torch.distributions.kl_divergence(
        torch.distributions.Normal(loc, scale), torch.distributions.Normal(0.0, 1.0)
    ).sum(-1)
    result = {
        "test_elbo_per_molecule_one_sample": elbo / len(targets),
        "test_kl_per_molecule": float(kl.mean()),
        "active_units": int((loc.var(dim=0) > 0.01).sum()),
        "latent_dim": model.latent_dim,
        "reconstructed_molecules": len(targets),
    }
    try:
        from pyrovae.metrics import molecules as chem

        decoded = in_batches(model.reconstruct, targets, batch_size)
        result["reconstruction_accuracy"] = chem.reconstruction_accuracy(targets, decoded)
    except ImportError:  # RDKit is optional: the accuracy compares canonical SMILES
        logger.info("RDKit is not installed: no reconstruction accuracy")
    model.train(was_training)
    return result


def language_model_metrics(model: CharRNN, targets: list[str], batch_size: int) -> dict[str, Any]:
    """On the test molecules ``targets``: the exact negative log-likelihood per molecule and per
    predicted token (``<eos>`` included) of a `CharRNN`, computed ``batch_size`` at a time."""
    total, tokens_seen = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(targets), batch_size):
            tokens, lengths = (t.to(_device(model)) for t in
                               model.vocab.encode(targets[start:start + batch_size]))
            total -= float(model.log_marginal(tokens, lengths).sum())
            tokens_seen += int(lengths.sum())
    return {"test_nll_per_molecule": total / len(targets),
            "test_nll_per_token": total / tokens_seen, "test_molecules": len(targets)}


def save_molecule_grid(path, smiles: list[str], legends: list[str]) -> None:
    """The molecules drawn by RDKit in a grid five wide, each with its legend; an invalid
    string is shown as one dummy atom "*" (RDKit draws no legend under an empty molecule)."""
    from pathlib import Path

    from rdkit import Chem
    from rdkit.Chem import Draw

    from pyrovae.metrics import molecules as chem

    molecules = [chem.to_molecule(s) or Chem.MolFromSmiles("*") for s in smiles]
    image = Draw.MolsToGridImage(
        molecules, molsPerRow=min(len(molecules), 5), subImgSize=(260, 220), legends=legends
    )
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    image.save(path)


def latent_search(model: SMILESVAE, pool: list[str], prop: str, *, subset: int, starts: int,
                  steps: int, record_every: int, lr: float, prior_weight: float,
                  predictor_epochs: int, seed: int = 0) -> dict[str, Any]:
    """Optimisation in the latent space (Gómez-Bombarelli et al. 2018): encode ``subset``
    molecules of ``pool`` (guide means), score them with RDKit (``prop``), fit a property
    predictor on the codes, climb it from the ``starts`` best codes for ``steps`` steps (a
    pull ``prior_weight`` towards the prior), decoding greedily every ``record_every`` steps;
    against as many greedy decodes of prior draws. Returns the summaries (``predictor``,
    ``training_subset``, ``latent_search``, ``random_prior_same_decodes``,
    ``beats_training_best``) and ``top``: the 8 best (molecule, score) found."""
    import numpy as np

    from pyrovae.infer.latent_optimization import (
        LatentSearch,
        fit_property_predictor,
        optimize_latent,
        random_search,
    )
    from pyrovae.metrics import molecules as chem

    torch.manual_seed(seed)
    rows = np.random.default_rng(seed).choice(len(pool), min(subset, len(pool)), replace=False)
    chosen = [pool[i] for i in rows if model.vocab.covers(pool[i])]

    def score(smiles):
        return chem.molecule_property(smiles, prop)

    def decode(z):
        return model.generate_smiles(z, greedy=True)

    codes = torch.cat([model.encode(chosen[i:i + 500])[0] for i in range(0, len(chosen), 500)])
    values = score(chosen)
    training = LatentSearch(chosen, values, len(chosen))
    predictor, fit_metrics = fit_property_predictor(
        codes, torch.as_tensor(values, dtype=codes.dtype, device=codes.device),
        epochs=predictor_epochs, seed=seed,
    )
    finite = np.where(np.isfinite(values), values, -np.inf)
    first = torch.as_tensor(np.argsort(-finite)[:starts].copy(), device=codes.device)
    search = optimize_latent(decode, score, predictor, codes[first], steps, lr, prior_weight,
                             record_every)
    baseline = random_search(decode, score, model.latent_dim, search.decodes, seed=seed,
                             like=codes)
    known = {chem.canonical_smiles(s) for s in chosen}
    found = search.summary()
    found["new_in_top10"] = sum(chem.canonical_smiles(s) not in known for s, _ in found["top10"])
    return {
        "predictor": fit_metrics,
        "training_subset": training.summary(),
        "latent_search": found,
        "random_prior_same_decodes": baseline.summary(),
        "beats_training_best": (found["best"] is not None
                                and found["best"] > training.summary()["best"]),
        "top": search.top(8),
    }
