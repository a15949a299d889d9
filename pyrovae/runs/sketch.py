"""The SketchRNN family of a run: its sketches, its model built from the run's options, the
paper's training recipe (optimiser, learning-rate decay, KL annealing) as ``fit`` options, the
per-epoch test metrics and the figures. ``pyrovae sketch`` and ``experiments/sketch_rnn`` both
build through here.

A run's options are a dict (the command line's ``options.json``, or a script's ``vars(args)``)
holding the names of `DEFAULTS`. The recipe is sketch-rnn's (Ha & Eck 2018): Adam at ``lr``
decaying by ``lr_decay`` per step to ``min_lr``, every gradient value clipped at ``clip_value``
on the *mean* loss (``fit``'s loss is summed over the data set, so
`pyrovae.infer.clipping.MeanLossAdam` divides by N * N_max before clipping), the KL
weight ``w_kl`` annealed as ``w_kl (1 - (1 - kl_eta_min) kl_rate^step)``, a KL floor of
``kl_min`` nats per latent dimension; batches of sketches of similar length; every epoch, each
training sketch's offsets scaled by two factors uniform in ``[1 - random_scale, 1 + random_scale)``
(the paper's data augmentation) and, with ``dequantize``, moved by uniform noise of one pixel's
width (`pyrovae.data.sketch_augment`), so that narrow mixture components on the integer pixel
lattice no longer pay. The test metrics are given on the raw offsets and on dequantised ones.
"""

from __future__ import annotations

import contextlib
import math
import time
from typing import Any, NamedTuple

import torch

from pyrovae.data.buckets import LengthBuckets, bucketed_batches
from pyrovae.data.sketch_augment import AugmentedSketches, dequantized
from pyrovae.data.sketches import load_sketches
from pyrovae.infer import KLAnnealing, TimeBudget, fit
from pyrovae.infer.clipping import MeanLossAdam
from pyrovae.models.sketch_rnn import SketchRNN
from pyrovae.runs import sketch_figures
from pyrovae.runs.launch import RunError

#: The options a run reads, with their defaults (the paper's, at a CPU-sized network).
DEFAULTS: dict[str, Any] = {
    "dataset": "aaron_sheep", "max_length": 250, "latent_dim": 128, "encoder_size": 256,
    "decoder_size": 512, "num_mixtures": 20, "pen_loss": "sketch", "w_kl": 0.5,
    "kl_eta_min": 0.01, "kl_rate": 0.99995, "kl_min": 0.2, "train_limit": None,
    "test_limit": None, "batch_size": 100, "bucket_pool": 50, "lr": 1e-3, "lr_decay": 0.9999,
    "min_lr": 1e-5, "clip_value": 1.0, "clip_norm": None, "seed": 0, "random_scale": 0.15,
    "dequantize": True,
}
#: What the noise options meant before they existed (a run that predates them had neither).
BEFORE_NOISE_OPTIONS: dict[str, Any] = {"random_scale": 0.0, "dequantize": False}

#: Temperatures of the sample and reconstruction figures.
TEMPERATURES = (0.1, 0.5, 1.0)


def option(options: dict[str, Any], name: str) -> Any:
    """``options[name]``, else its default."""
    return options.get(name, DEFAULTS[name])


def check_same_noise(stored: dict[str, Any], options: dict[str, Any]) -> None:
    """Refuse (``RunError``) to resume a run whose stored options ``stored`` trained with other
    noise options than ``options``: its data would change in mid-run. A run that predates the
    options had no noise (`BEFORE_NOISE_OPTIONS`)."""
    was = {name: stored.get(name, before) for name, before in BEFORE_NOISE_OPTIONS.items()}
    now = {name: option(options, name) for name in BEFORE_NOISE_OPTIONS}
    if was != now:
        flags = (f"--random-scale {was['random_scale']} "
                 f"--{'' if was['dequantize'] else 'no-'}dequantize")
        raise RunError(f"the run being resumed was trained with {was}, not {now}: continue it "
                       f"with {flags}, or start a new run in another folder")


class Sketches(NamedTuple):
    train_x: torch.Tensor
    train_lengths: torch.Tensor
    test_x: torch.Tensor
    test_lengths: torch.Tensor
    scale: float


def data(options: dict[str, Any], *, root=None, download: bool = True, device=None,
         train: bool = True) -> Sketches:
    """The run's sketches in stroke-5 (the first ``train_limit``/``test_limit`` of each
    split, sketches longer than ``max_length`` dropped); ``train=False`` loads the test split
    only (its training tensors are empty)."""
    steps = option(options, "max_length")
    load = dict(max_length=steps, num_steps=steps + 1, device=device, root=root,
                download=download)
    test = load_sketches(option(options, "dataset"), "test", **load)
    test_x, test_lengths = (t[: options.get("test_limit")] for t in (test.x, test.lengths))
    if not train:
        return Sketches(test_x[:0], test_lengths[:0], test_x, test_lengths, test.scale)
    every = load_sketches(option(options, "dataset"), "train", **load)
    limit = options.get("train_limit")
    return Sketches(every.x[:limit], every.lengths[:limit], test_x, test_lengths, every.scale)


def kl_weight(options: dict[str, Any]) -> float:
    """The final KL weight on our per-sketch loss: the paper's loss per sketch is ours / N_max
    when ``kl_weight = w_kl * N_max / K`` (see SketchRNN's docstring)."""
    return option(options, "w_kl") * option(options, "max_length") / option(options,
                                                                             "latent_dim")


def build(options: dict[str, Any], device=None) -> SketchRNN:
    """The SketchRNN of a run (the one call of its constructor in both front ends), its KL
    weight at the annealing's start."""
    sizes = ("latent_dim", "encoder_size", "decoder_size", "num_mixtures", "max_length")
    return SketchRNN(
        **{name: option(options, name) for name in (*sizes, "pen_loss")},
        kl_weight=kl_weight(options) * option(options, "kl_eta_min"),
        kl_floor=option(options, "kl_min") * option(options, "latent_dim"),
    ).to(device)


class StepDecay:
    """``fit``'s ``lr_schedule``: the factor ``max(floor, decay ** (epoch * steps_per_epoch))``
    for a whole epoch (the paper decays per step; an epoch here is ~74 steps)."""

    def __init__(self, decay: float, steps_per_epoch: int, floor: float) -> None:
        self.decay, self.steps_per_epoch, self.floor = decay, steps_per_epoch, floor

    def __call__(self, epoch: int) -> float:
        return max(self.floor, self.decay ** (epoch * self.steps_per_epoch))

    def __repr__(self) -> str:  # the name a resumed run compares
        return f"StepDecay({self.decay!r}, {self.steps_per_epoch!r}, {self.floor!r})"


class CpuClock:
    """A callback adding the CPU-seconds of every invocation so far (this process's, all
    threads) to each epoch's row, continuing a resumed run's count; it stops the run once they
    reach ``limit`` seconds (default: never)."""

    def __init__(self, limit: float | None = None) -> None:
        self.mark, self.limit = time.process_time(), limit

    def __call__(self, info) -> dict[str, float]:
        before = info.history.epochs[-1].get("cpu_seconds", 0.0) if info.history.epochs else 0.0
        now = time.process_time()
        total, self.mark = before + now - self.mark, now
        row = {"cpu_seconds": total}
        if self.limit is not None and total >= self.limit:
            row["stop"] = True
        return row


def fit_options(options: dict[str, Any], sketches: Sketches, *, minutes: float | None = None,
                cpu_minutes: float | None = None) -> dict[str, Any]:
    """``fit``'s keyword arguments for the run (all but the model, the checkpoint folder and
    the seed, epochs, lr, device): the training stream (length buckets unless ``bucket_pool``
    is 0), the objective, the clipping optimiser, the decay, the callbacks (KL annealing, the
    test metrics, CPU clock, wall-time budget)."""
    x, lengths = sketches.train_x, sketches.train_lengths
    batch_size, pool = option(options, "batch_size"), option(options, "bucket_pool")
    seed = option(options, "seed")
    random_scale, dequantize = option(options, "random_scale"), option(options, "dequantize")
    source = (x, lengths)
    if random_scale > 0 or dequantize:
        source = AugmentedSketches(x, lengths, sketches.scale, random_scale=random_scale,
                                   dequantize=dequantize, seed=seed)
    if pool > 0:
        stream = LengthBuckets(source, lengths, batch_size, pool=pool)
        steps_per_epoch = len(bucketed_batches(lengths, batch_size, 0, 0, pool))
    else:
        stream = source
        steps_per_epoch = -(-len(x) // batch_size)
    # fit's loss is the data set's total; the paper's is the mean per sketch over N_max steps
    loss_scale = len(x) * option(options, "max_length")

    def test_metrics(info):
        return evaluate(info.module, sketches.test_x, sketches.test_lengths, batch_size, seed,
                        scale=sketches.scale)

    return dict(
        data=stream, objective="elbo", batch_size=batch_size,
        optimizer=MeanLossAdam.factory(loss_scale, option(options, "clip_value") or None),
        lr_schedule=StepDecay(option(options, "lr_decay"), steps_per_epoch,
                              option(options, "min_lr") / option(options, "lr")),
        clip_norm=options.get("clip_norm"),
        callbacks=[
            KLAnnealing(option(options, "kl_eta_min"), rate=option(options, "kl_rate"),
                        weight=kl_weight(options)),
            test_metrics,
            CpuClock(None if cpu_minutes is None else 60 * cpu_minutes),
            TimeBudget(minutes),
        ],
    )


def train(model: SketchRNN, sketches: Sketches, options: dict[str, Any], *,
          device: torch.device, out=None, resume: bool = False, minutes: float | None = None,
          cpu_minutes: float | None = None, **fit_extra: Any):
    """The one training loop of a SketchRNN run (``pyrovae sketch train``/``resume`` and
    ``experiments.sketch_rnn.train``): ``fit`` with the recipe of `fit_options` and
    ``options``' ``epochs``, ``lr``, ``seed``, ``devices`` and ``num_nodes``; checkpoints in
    ``out`` (continued from ``out/last.pt`` with ``resume``); ``fit_extra``: ``fit``'s other
    arguments (``config``, ``progress``). Returns the ``History`` (earlier invocations'
    epochs included) and this invocation's seconds."""
    started = time.perf_counter()
    history = fit(
        model, epochs=options["epochs"], lr=option(options, "lr"), seed=option(options, "seed"),
        device=device, devices=options.get("devices") or 1,
        num_nodes=options.get("num_nodes") or 1, checkpoint_dir=out, resume=resume,
        **fit_options(options, sketches, minutes=minutes, cpu_minutes=cpu_minutes),
        **fit_extra,
    )
    return history, time.perf_counter() - started


@contextlib.contextmanager
def scoring_pen_states(model: SketchRNN, pen_loss: str):
    """``model`` with its pen states scored as ``pen_loss`` says, for the block's duration."""
    kept = model.pen_loss
    model.pen_loss = pen_loss
    try:
        yield model
    finally:
        model.pen_loss = kept


def evaluate(model: SketchRNN, x, lengths, batch_size: int, seed: int = 0,
             scale: float | None = None) -> dict[str, float]:
    """Mean per-sketch test reconstruction loss and KL (one ``z ~ q`` per sketch, fixed seed).

    ``recon`` = -(log p(offsets | z) + log p(pen | z)) in nats per sketch with the pen states
    scored up to each sketch's end row (``pen_loss="sketch"``); ``recon_per_step`` divides it
    by N_max (the project's L_R). ``paper_recon_per_step`` scores the pen states over all N_max
    steps (``pen_loss="padded"``, the paper's L_R, which also counts predicting "ended" over
    the padding), with the same ``z``. The KL is also given per latent dimension (L_KL).
    Sketches are evaluated in order of length, so that each batch is cut short.

    With ``scale`` (the ``s`` the integer pixel offsets were divided by), the same terms on the
    test sketches dequantised with the noise of ``seed`` (`pyrovae.data.sketch_augment`) are
    added as ``test_dq_*``: their offset NLL is that of a continuous density on continuous data,
    which narrow components on the pixel lattice cannot make arbitrarily good;
    ``test_dq_offsets_nll_pixels`` adds ``2 log s`` per point (the density in pixel units), an
    upper bound on ``-log P(integer offsets | z)`` and so never negative. The ``z`` of each
    batch is drawn with the same seed in every pass.
    """
    was_training = model.training
    model.eval()
    passes = [("", x, "sketch"), ("paper_", x, "padded")]
    if scale is not None:
        passes.append(("dq_", dequantized(x, lengths, scale, seed), "sketch"))
    totals = {key + name: 0.0 for key, _, _ in passes for name in ("offsets", "pen", "kl")}
    order = torch.argsort(lengths)
    with torch.random.fork_rng(devices=[x.device] if x.device.type == "cuda" else []):
        for start in range(0, len(x), batch_size):
            rows = order[start:start + batch_size]
            for key, sketches, pen_loss in passes:
                torch.manual_seed(seed + start)  # the same z draws in every pass
                with scoring_pen_states(model, pen_loss):
                    terms = model.loss_terms(sketches[rows], lengths[rows])
                for name in ("offsets", "pen", "kl"):
                    totals[key + name] += float(terms[name].sum())
    model.train(was_training)
    n = len(x)
    recon = -(totals["offsets"] + totals["pen"]) / n
    paper = -(totals["offsets"] + totals["paper_pen"]) / n
    metrics = {
        "test_recon": recon,
        "test_offsets_nll": -totals["offsets"] / n,
        "test_pen_nll": -totals["pen"] / n,
        "test_kl": totals["kl"] / n,
        "test_recon_per_step": recon / model.max_length,
        "test_paper_recon_per_step": paper / model.max_length,
        "test_kl_per_dim": totals["kl"] / n / model.latent_dim,
    }
    if scale is not None:
        dq_recon = -(totals["dq_offsets"] + totals["dq_pen"]) / n
        points = float(lengths.sum()) / n
        metrics.update({
            "test_dq_recon": dq_recon,
            "test_dq_offsets_nll": -totals["dq_offsets"] / n,
            "test_dq_pen_nll": -totals["dq_pen"] / n,
            "test_dq_kl": totals["dq_kl"] / n,
            "test_dq_recon_per_step": dq_recon / model.max_length,
            "test_dq_offsets_nll_pixels": -totals["dq_offsets"] / n + 2 * math.log(scale) * points,
        })
    return metrics


def save_figures(model: SketchRNN, sketches: Sketches, out, dataset: str, seed: int,
                 samples: int = 8) -> list:
    """``samples.png`` (the prior at each of `TEMPERATURES`), ``reconstructions.png`` (test
    sketches and their reconstructions) and ``interpolation.png`` (decoding the line between
    two test sketches' codes) in ``out``; returns the paths written."""
    model.eval()
    device = sketches.test_x.device
    gen = torch.Generator(device=device).manual_seed(seed)
    x, lengths = sketches.test_x, sketches.test_lengths
    n = min(samples, len(x))
    rows = [model.sample(samples, temperature=tau, generator=gen) for tau in TEMPERATURES]
    paths = [sketch_figures.save_sketch_grid(
        out / "samples.png", rows, [f"prior, tau={tau}" for tau in TEMPERATURES],
        f"{dataset}: samples from the prior")]
    rows, titles = [(x[:n], lengths[:n])], ["test sketch"]
    for tau in TEMPERATURES:
        rows.append(model.reconstruct(x[:n], lengths[:n], tau, generator=gen))
        titles.append(f"reconstruction, tau={tau}")
    paths.append(sketch_figures.save_sketch_grid(
        out / "reconstructions.png", rows, titles,
        f"{dataset}: test sketches and reconstructions"))
    if len(x) >= 2:
        loc = model.encode(x[:2], lengths[:2])[0]
        weights = torch.linspace(0, 1, 8, device=device, dtype=loc.dtype).unsqueeze(-1)
        decoded = model.generate((1 - weights) * loc[0] + weights * loc[1], temperature=0.1,
                                 generator=gen)
        paths.append(sketch_figures.save_interpolation(
            out / "interpolation.png", (x[:2], lengths[:2]), decoded,
            f"{dataset}: decoding z on the line between two test sketches"))
    return paths


def complete(model: SketchRNN, x: torch.Tensor, lengths: torch.Tensor, out, dataset: str, *,
             strokes: int, samples: int, temperatures, seed: int = 0) -> dict[str, dict]:
    """Finish the sketches ``x`` [n, T, 5] from their first ``strokes`` strokes
    (`pyrovae.infer.sketch_completion.complete_sketch`), ``samples`` times at each of
    ``temperatures``, with the latent code from the partial sketch (``encode``) and from the
    prior (``prior``). Writes ``completion_encode.png`` and ``completion_prior.png`` in
    ``out`` (given strokes black, drawn ones blue) and returns, per ``"latent/tau=T"``, the
    mean drawn rows, the fraction of completions that ended before N_max and their number."""
    from pyrovae.infer.sketch_completion import complete_sketch, first_strokes

    generator = torch.Generator(device=x.device).manual_seed(seed)
    summary: dict[str, dict] = {}
    for latent in ("encode", "prior"):
        rows, titles, kept = [], [], []
        for i in range(len(x)):
            length = int(lengths[i])
            prefix = first_strokes(x[i], length, strokes)
            rows += [(x[i:i + 1], lengths[i:i + 1]),
                     (prefix.unsqueeze(0), torch.tensor([len(prefix)], device=x.device))]
            titles += [f"test sketch {i}", f"its first {strokes} strokes"]
            kept += [length, len(prefix)]
            for tau in temperatures:
                drawn, drawn_lengths = complete_sketch(model, prefix, latent, samples, tau,
                                                       generator=generator)
                rows.append((drawn, drawn_lengths))
                titles.append(f"z: {latent}, tau={tau}")
                kept.append(len(prefix))
                stats = summary.setdefault(f"{latent}/tau={tau}",
                                           {"drawn_rows": 0.0, "ended": 0.0, "n": 0})
                stats["drawn_rows"] += float((drawn_lengths - len(prefix)).sum())
                stats["ended"] += float((drawn_lengths < model.max_length).sum())
                stats["n"] += len(drawn_lengths)
        source = "the partial sketch" if latent == "encode" else "the prior"
        sketch_figures.save_sketch_grid(
            out / f"completion_{latent}.png", rows, titles,
            f"{dataset}: finishing test sketches (black: given, blue: drawn), z from {source}",
            prefix_rows=kept)
    for stats in summary.values():
        stats["mean_drawn_rows"] = stats.pop("drawn_rows") / stats["n"]
        stats["ended_fraction"] = stats.pop("ended") / stats["n"]
    return summary
