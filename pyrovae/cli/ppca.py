"""``pyrovae ppca``: PPCA fitted twice, by the closed form and by SVI, and compared.

``compare_ppca`` returns a JSON-able report; ``save_figures`` draws the principal components of
both fits as images and the SVI log-likelihood curve against the closed-form line; ``run`` is
the subcommand (``add_parser`` declares its options).
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path
from typing import Any

import torch

from pyrovae.cli._common import add_data_options, add_device_seed, progress_enabled
from pyrovae.data import load_dataset
from pyrovae.infer import fit
from pyrovae.infer.distributed import global_rank, main_first
from pyrovae.models.pca import subspace_angle_degrees
from pyrovae.models.ppca import PPCA, PPCAParams, fit_closed_form, log_marginal
from pyrovae.runs.folder import check_writable_dir
from pyrovae.runs.launch import (
    add_parallel_options,
    positive_float,
    positive_int,
    resolve_device,
    start_processes,
)
from pyrovae.runs.provenance import command_line, machine_description

logger = logging.getLogger(__name__)


def principal_axes(W: torch.Tensor, reference: torch.Tensor | None = None) -> torch.Tensor:
    """Orthonormal principal directions [D, K] of the span of ``W`` [D, K], ordered by variance.

    ``W`` is identified only up to a rotation; its left singular vectors are not. With a
    ``reference`` (e.g. the closed-form axes) each column's sign is matched to it.
    """
    U, _, _ = torch.linalg.svd(W, full_matrices=False)
    if reference is not None:
        signs = torch.sign((U * reference).sum(0))
        U = U * torch.where(signs == 0, torch.ones_like(signs), signs)
    return U


def compare_ppca(
    dataset: str = "digits",
    latent_dim: int = 10,
    epochs: int = 3000,
    lr: float = 0.02,
    batch_size: int | None = None,
    seed: int = 0,
    num_particles: int = 4,
    root: str | None = None,
    download: bool = True,
    device: str | None = None,
    eval_every: int = 10,
    progress: bool | None = None,
    devices: int = 1,
    num_nodes: int = 1,
) -> tuple[dict[str, Any], PPCAParams, PPCA]:
    """Fit PPCA by the closed form and by SVI on the training split of ``dataset``.

    Args:
        dataset: ``"digits"`` (bundled, offline), ``"mnist"`` or ``"fashion-mnist"``.
        latent_dim: K (default 10).
        epochs: SVI epochs (default 3000), with a cosine-decayed Adam step from ``lr``.
        lr: initial learning rate (default 0.02).
        batch_size: minibatch size per process (default: the whole data set).
        seed: SVI seed (default 0).
        num_particles: vectorised ELBO samples per data point (default 4).
        root: data root for MNIST-format data (default: ``PYROVAE_DATA`` or ``~/.cache/pyrovae``).
        download: fetch missing MNIST-format files (default True).
        device: ``"cpu"``/``"cuda"`` (default cpu).
        eval_every: epochs between evaluations of the exact log-likelihood of the SVI
            parameters (default 10).
        devices: data-parallel processes per machine (default 1; see ``fit``).
        num_nodes: machines (default 1).
        progress: ``fit``'s progress bar (default: when stderr is a terminal).

    Returns:
        ``(report, closed_form_params, svi_model)``: the report holds both total log-likelihoods,
        per-example values, sigma2, the largest principal angle between the two subspaces, the
        curve of the SVI log-likelihood over epochs, timings and the machine.
    """
    if epochs < 1 or eval_every < 1:
        raise ValueError(f"epochs and eval_every must be >= 1, got {epochs} and {eval_every}")
    data = load_dataset(dataset, "train", root=root, download=download, device=device)
    x = data.x
    if batch_size is None:
        batch_size = x.shape[0]
    x64 = x.double()
    n, d = x.shape
    started = time.perf_counter()
    closed = fit_closed_form(x64, latent_dim)
    closed_seconds = time.perf_counter() - started
    exact = float(log_marginal(x64, closed).sum())
    logger.info("closed form: log p(x) = %.3f (%.4f per example)", exact, exact / n)

    curve: list[tuple[int, float]] = []

    def track(end) -> dict[str, float]:
        if end.epoch % eval_every and end.epoch != epochs - 1:
            return {}
        value = float(log_marginal(x64, _as_double(end.module.params())).sum())
        curve.append((end.epoch + 1, value))
        return {"log_likelihood": value}

    torch.manual_seed(seed)
    model = PPCA(d, latent_dim)
    started = time.perf_counter()
    history = fit(
        model,
        x,
        objective="meanfield",
        lr=lr,
        epochs=epochs,
        lr_schedule="cosine",
        batch_size=batch_size,
        seed=seed,
        callbacks=[track],
        device=device,
        num_particles=num_particles,
        progress=progress,
        devices=devices,
        num_nodes=num_nodes,
    )
    svi_seconds = time.perf_counter() - started
    learned = _as_double(model.params())
    svi = float(log_marginal(x64, learned).sum())
    report = {
        "dataset": data.name,
        "n": n,
        "data_dim": d,
        "latent_dim": latent_dim,
        "closed_form": {
            "log_likelihood": exact,
            "per_example": exact / n,
            "sigma2": float(closed.sigma2),
            "seconds": closed_seconds,
        },
        "svi": {
            "log_likelihood": svi,
            "per_example": svi / n,
            "sigma2": float(learned.sigma2),
            "final_elbo": -history.losses[-1],
            "epochs": epochs,
            "lr": lr,
            "batch_size": batch_size,
            "objective": "TraceMeanField_ELBO",
            "num_particles": num_particles,
            "seconds": svi_seconds,
        },
        "relative_difference": abs(svi - exact) / abs(exact),
        "sigma2_relative_difference": abs(float(learned.sigma2) / float(closed.sigma2) - 1),
        "subspace_angle_degrees": subspace_angle_degrees(learned.W, closed.W),
        "curve": curve,
        "machine": machine_description(x.device),
    }
    return report, closed, model


def _as_double(params: PPCAParams) -> PPCAParams:
    return PPCAParams(*(t.double() for t in params))


def save_figures(
    report: dict[str, Any],
    closed: PPCAParams,
    model: PPCA,
    image_shape: tuple[int, int],
    out: str | Path,
    max_components: int = 10,
) -> list[Path]:
    """Write ``components.png`` and ``log_likelihood.png`` under ``out``; return their paths."""
    import matplotlib

    matplotlib.use("Agg")  # a file, never a window
    import matplotlib.pyplot as plt

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    k = min(max_components, closed.W.shape[1])
    axes_cf = principal_axes(closed.W)[:, :k]
    axes_svi = principal_axes(model.params().W.double(), axes_cf)[:, :k]
    fig, grid = plt.subplots(2, k, figsize=(1.3 * k + 1, 3.0), squeeze=False)
    for row, (label, axes) in enumerate([("closed form", axes_cf), ("SVI", axes_svi)]):
        for j in range(k):
            ax = grid[row, j]
            img = axes[:, j].reshape(image_shape).cpu().numpy()
            lim = abs(img).max()
            ax.imshow(img, cmap="RdBu_r", vmin=-lim, vmax=lim)
            ax.set_xticks([])
            ax.set_yticks([])
            if j == 0:
                ax.set_ylabel(label)
            if row == 0:
                ax.set_title(f"PC {j + 1}", fontsize=8)
    fig.suptitle(
        f"PPCA principal axes, {report['dataset']} (K={report['latent_dim']}): "
        f"largest angle {report['subspace_angle_degrees']:.2f}°"
    )
    fig.tight_layout()
    components = out / "components.png"
    fig.savefig(components, dpi=120)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 4))
    n = report["n"]
    epochs, values = zip(*report["curve"], strict=True) if report["curve"] else ((), ())
    ax.plot(epochs, [v / n for v in values], label="SVI parameters (exact log p(x))")
    ax.axhline(report["closed_form"]["per_example"], color="k", ls="--", label="closed-form ML")
    final = report["closed_form"]["per_example"]
    spread = max(abs(final) * 0.02, 1e-3)
    ax.set_ylim(final - 10 * spread, final + spread)
    ax.set_xlabel("epoch")
    ax.set_ylabel("log p(x) per example (nats)")
    ax.set_title(f"PPCA on {report['dataset']}: SVI vs closed form")
    ax.legend(loc="lower right")
    fig.tight_layout()
    curve = out / "log_likelihood.png"
    fig.savefig(curve, dpi=120)
    plt.close(fig)
    return [components, curve]


def format_table(report: dict[str, Any]) -> str:
    """The two fits side by side, as a small text table."""
    cf, svi = report["closed_form"], report["svi"]
    rows = [
        ("", "closed form", "SVI"),
        ("log p(x), total", f"{cf['log_likelihood']:.2f}", f"{svi['log_likelihood']:.2f}"),
        ("log p(x), per example", f"{cf['per_example']:.4f}", f"{svi['per_example']:.4f}"),
        ("sigma2", f"{cf['sigma2']:.6g}", f"{svi['sigma2']:.6g}"),
        ("seconds", f"{cf['seconds']:.2f}", f"{svi['seconds']:.2f}"),
    ]
    width = [max(len(r[i]) for r in rows) for i in range(3)]
    lines = [
        "  ".join(
            c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, width, strict=True))
        )
        for r in rows
    ]
    lines.append(
        f"relative difference {report['relative_difference']:.2e}, sigma2 "
        f"{100 * report['sigma2_relative_difference']:.2f} %, largest subspace angle "
        f"{report['subspace_angle_degrees']:.3f} deg"
    )
    return "\n".join(lines)


#: Per data set: (epochs, lr, batch size (None: all the data), eval_every). Digits' are the
#: committed result's (results/ppca/digits); MNIST-sized sets use minibatches so that a run takes
#: minutes, not hours (the README's MNIST command).
DEFAULTS = {
    "digits": (3000, 0.02, None, 10),
    "mnist": (60, 0.01, 1000, 5),
    "fashion-mnist": (60, 0.01, 1000, 5),
}


def add_parser(sub) -> argparse.ArgumentParser:
    """The ``ppca`` subcommand's options, on the subparsers ``sub`` of the top-level parser."""
    ppca = sub.add_parser(
        "ppca",
        help="fit PPCA by the closed form and by SVI, and compare them",
        description="Fit probabilistic PCA by its closed-form maximum-likelihood solution and by "
        "SVI, print both log-likelihoods side by side, and write figures and a JSON report.",
    )
    ppca.add_argument(
        "--dataset",
        default="digits",
        choices=["digits", "mnist", "fashion-mnist"],
        help="data set (default: digits, bundled with scikit-learn, works offline)",
    )
    ppca.add_argument("--latent-dim", type=positive_int, default=10, help="K (default 10)")
    ppca.add_argument(
        "--epochs", type=positive_int, default=None,
        help="SVI epochs (default: 3000 for digits, 60 for mnist and fashion-mnist)",
    )
    ppca.add_argument(
        "--lr", type=positive_float, default=None,
        help="initial Adam step, cosine-decayed to 0 (default: 0.02 for digits, else 0.01)",
    )
    ppca.add_argument(
        "--num-particles", type=positive_int, default=4,
        help="vectorised ELBO samples per point (4)",
    )
    ppca.add_argument(
        "--batch-size", type=positive_int, default=None,
        help="minibatch size (default: all the data for digits, 1000 for mnist/fashion-mnist)",
    )
    ppca.add_argument(
        "--eval-every",
        type=positive_int,
        default=None,
        help="epochs between exact log-likelihood evaluations (default: 10 for digits, else 5)",
    )
    add_device_seed(ppca)
    add_parallel_options(ppca)
    add_data_options(ppca)
    ppca.add_argument("--out", default="runs/ppca", help="output folder (default runs/ppca)")
    ppca.set_defaults(run=run, memory_options=("--num-particles", "--batch-size"))
    return ppca


def run(args: argparse.Namespace) -> int:
    """Fit, print the table, write ``report.json`` and the figures under ``args.out``."""
    device = resolve_device(args.device)
    start_processes(args.devices, args.num_nodes, device)
    out = main_first(check_writable_dir, args.out)
    epochs, lr, batch_size, eval_every = DEFAULTS[args.dataset]
    for name, value in [("epochs", epochs), ("lr", lr), ("batch_size", batch_size),
                        ("eval_every", eval_every)]:
        if getattr(args, name) is None:
            setattr(args, name, value)
    report, closed, model = compare_ppca(
        dataset=args.dataset,
        latent_dim=args.latent_dim,
        epochs=args.epochs,
        lr=args.lr,
        batch_size=args.batch_size,
        seed=args.seed,
        num_particles=args.num_particles,
        root=args.data_root,
        download=not args.no_download,
        device=device,
        eval_every=args.eval_every,
        progress=progress_enabled(args),
        devices=args.devices,
        num_nodes=args.num_nodes,
    )
    if global_rank() != 0:  # rank 0 writes the report and figures
        return 0
    image_shape = load_dataset(
        args.dataset, "test", root=args.data_root, download=False
    ).image_shape
    figures = save_figures(report, closed, model, image_shape, out)
    report["command"] = command_line("pyrovae")
    report["figures"] = [f.name for f in figures]
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    print(
        f"PPCA on {report['dataset']} (N={report['n']}, D={report['data_dim']}, "
        f"K={report['latent_dim']})"
    )
    print(format_table(report))
    print(f"wrote {out / 'report.json'} and {', '.join(str(f) for f in figures)}")
    return 0
