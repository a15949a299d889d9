"""Time per training epoch through ``pyrovae.fit`` against plain PyTorch, on the same device.

For each model (VAE 784-400-20, M2 with 100 labels, M2 with 3000 labels as the ``cpu_fast``
preset, PPCA) the pyrovae run and the plain-PyTorch run use the same network, batch size, data
(resident on the device) and starting weights, and the same loss (except that the ``cpu_fast``
rows time pyrovae's cheaper estimates, bf16 and sum-and-sample, against plain float32 exact
enumeration: the comparison issue 26 asks for). They are interleaved: after every pyrovae epoch
a callback runs one plain epoch, so both see the same machine state; each time is the median
over the epochs after the first (the first pays for warm-up and JIT compilation). Pyro's
validation is off for both (it checks arguments every step).

Usage::

    python benchmarks/run_benchmarks.py --out results/benchmarks/cpu      # ~15 min on 2 cores
    python benchmarks/run_benchmarks.py --quick --out /tmp/bench          # a smoke run
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import time
from pathlib import Path

import pyro
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parents[1]))  # the repository root

from plain_models import PlainM2, PlainPPCA, PlainVAE  # noqa: E402

from pyrovae import fit  # noqa: E402
from pyrovae.data import binarize, labelled_split, load_dataset  # noqa: E402
from pyrovae.infer import make_objective, param_scope  # noqa: E402
from pyrovae.models import M2, PPCA  # noqa: E402
from pyrovae.models.vae import VAE  # noqa: E402
from pyrovae.runs.m2_presets import m2_preset  # noqa: E402
from pyrovae.runs.provenance import command_line, machine  # noqa: E402


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def plain_epoch(loss_of, params, streams, batch_sizes, lr, state, device) -> float:
    """One epoch of plain PyTorch: the largest stream sets the steps, others cycle."""
    if "optim" not in state:
        state["optim"] = torch.optim.Adam(params, lr=lr, fused=True)  # as fit's "adam"
    optim = state["optim"]
    sizes = [s[0].shape[0] for s in streams]
    main = max(range(len(streams)), key=sizes.__getitem__)
    steps = -(-sizes[main] // batch_sizes[main])
    perms = [
        torch.cat([torch.randperm(n, device=device) for _ in range(-(-steps * min(b, n) // n))])
        for n, b in zip(sizes, batch_sizes, strict=True)
    ]
    _sync(device)
    started = time.perf_counter()
    for k in range(steps):
        batches = []
        for i, (n, b) in enumerate(zip(sizes, batch_sizes, strict=True)):
            b = min(b, n)
            idx = (
                perms[i][k * b : (k + 1) * b]
                if i != main
                else perms[i][k * b : min((k + 1) * b, n)]
            )
            batches.append((idx, n / len(idx)))
        loss = loss_of(batches)
        optim.zero_grad(set_to_none=True)
        loss.backward()
        optim.step()
    _sync(device)
    return time.perf_counter() - started


def compare(name, module, plain, plain_loss, data, batch_size, epochs, lr, objective, jit, device,
            precision="fp32"):
    """Run ``fit`` for ``epochs`` with a plain epoch after each; return both time lists.

    The plain run is always float32 with the exact sum over M2's labels; ``objective`` and
    ``precision`` are pyrovae's.
    """
    streams = list(data.values()) if isinstance(data, dict) else [data]
    streams = [s if isinstance(s, tuple) else (s,) for s in streams]
    sizes = list(batch_size.values()) if isinstance(batch_size, dict) else [batch_size]
    state: dict = {}
    plain_times: list[float] = []

    def run_plain(_end) -> dict:
        seconds = plain_epoch(
            lambda b: plain_loss(plain, streams, b),
            plain.parameters(),
            streams,
            sizes,
            lr,
            state,
            device,
        )
        plain_times.append(seconds)
        return {"plain_seconds": seconds}

    history = fit(
        module,
        data,
        objective=objective,
        jit=jit,
        precision=precision,
        lr=lr,
        epochs=epochs,
        batch_size=batch_size,
        device=device,
        callbacks=[run_plain],
        sync_every=10**9,
        progress=False,
    )
    pyro_times = history.column("seconds")
    pyro_median = statistics.median(pyro_times[1:])
    plain_median = statistics.median(plain_times[1:])
    result = {
        "model": name,
        "objective": objective + (" (jit)" if jit else "") + (
            f", {precision}" if precision != "fp32" else ""
        ),
        "batch_size": batch_size,
        "epochs_timed": epochs - 1,
        "pyrovae_epoch_seconds": pyro_median,
        "plain_epoch_seconds": plain_median,
        "ratio": pyro_median / plain_median,
        "pyrovae_all": pyro_times,
        "plain_all": plain_times,
        "final_loss_per_example": history.epochs[-1]["loss_per_example"],
    }
    logging.info(
        "%s %s: pyrovae %.3fs, plain %.3fs, ratio %.2f",
        name,
        result["objective"],
        pyro_median,
        plain_median,
        result["ratio"],
    )
    return result


def time_to_elbo(x, x_test, target, max_epochs, device) -> dict:
    """Training wall time (evaluation excluded) until the test ELBO per image reaches ``target``.

    Both runs: the VAE 784-400-20 from the same initial weights, batch 128, Adam 1e-3; pyrovae
    with ``jit=True``; the test ELBO is the single-sample estimate on every test image.
    """
    torch.manual_seed(0)
    vae = VAE(784, 20, hidden_sizes=(400,)).to(device)
    plain = PlainVAE(vae).to(device)
    elbo = make_objective("elbo")

    def pyro_test_elbo(end) -> dict:
        with torch.no_grad(), param_scope(vae):
            value = -float(elbo.differentiable_loss(vae.model, vae.guide, x_test)) / len(x_test)
        return {"test_elbo": value, "stop": value >= target}

    history = fit(
        vae,
        x,
        jit=True,
        lr=1e-3,
        epochs=max_epochs,
        batch_size=128,
        device=device,
        callbacks=[pyro_test_elbo],
        sync_every=10**9,
        progress=False,
    )
    state: dict = {}
    plain_seconds, plain_curve = 0.0, []
    for _ in range(max_epochs):
        plain_seconds += plain_epoch(
            lambda b: single_stream_loss(plain, [(x,)], b),
            plain.parameters(),
            [(x,)],
            [128],
            1e-3,
            state,
            device,
        )
        with torch.no_grad():
            plain_curve.append(-float(plain.loss(x_test, 1.0)) / len(x_test))
        if plain_curve[-1] >= target:
            break
    reached = history.epochs[-1]["test_elbo"] >= target
    return {
        "target_test_elbo": target,
        "pyrovae": {
            "epochs": len(history.epochs),
            "seconds": sum(history.column("seconds")),
            "reached": reached,
            "curve": history.column("test_elbo"),
        },
        "plain": {
            "epochs": len(plain_curve),
            "seconds": plain_seconds,
            "reached": plain_curve[-1] >= target,
            "curve": plain_curve,
        },
    }


def single_stream_loss(plain, streams, batches):
    [(x,)], [(idx, scale)] = streams, batches
    return plain.loss(x.index_select(0, idx), scale)


def m2_loss(plain, streams, batches):
    (xu,), (xl, yl) = streams
    (iu, su), (il, sl) = batches
    return plain.loss(
        xu.index_select(0, iu), su, xl.index_select(0, il), yl.index_select(0, il), sl, xl.shape[0]
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--epochs", type=int, default=6, help="epochs per run (first untimed)")
    parser.add_argument(
        "--m2-unlabelled",
        type=int,
        default=10000,
        help="unlabelled images per M2 epoch (default 10000; 49900 for all)",
    )
    parser.add_argument("--quick", action="store_true", help="tiny data, 3 epochs: a smoke run")
    parser.add_argument(
        "--models", nargs="+", default=["vae", "m2", "m2_cpu", "ppca", "vae_to_elbo"]
    )
    parser.add_argument(
        "--target-elbo",
        type=float,
        default=-105.0,
        help="test ELBO per image for the time-to-target run (default -105)",
    )
    parser.add_argument("--data-root", default=None)
    parser.add_argument("--out", default="results/benchmarks/cpu")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    pyro.enable_validation(False)
    device = torch.device(args.device)
    epochs = 3 if args.quick else args.epochs
    train = load_dataset("mnist", "train", root=args.data_root, device=device)
    x = binarize(train.x, seed=0)
    if args.quick:
        x, y = x[:1024], train.y[:1024]
    else:
        y = train.y
    results = []
    if "vae" in args.models:
        for jit in (False, True):
            torch.manual_seed(0)
            vae = VAE(784, 20, hidden_sizes=(400,)).to(device)
            results.append(
                compare(
                    "VAE 784-400-20",
                    vae,
                    PlainVAE(vae).to(device),
                    single_stream_loss,
                    x,
                    128,
                    epochs,
                    1e-3,
                    "elbo",
                    jit,
                    device,
                )
            )
    if "m2" in args.models:
        split = labelled_split(y, 100, 100 if args.quick else 10000, seed=0)
        n_u = 512 if args.quick else args.m2_unlabelled
        xu = x[split.unlabelled[:n_u]]
        data = {"unlabelled": (xu,), "labelled": (x[split.labelled], y[split.labelled])}
        for jit in (False, True):
            torch.manual_seed(0)
            m2 = M2(784, 10, 50, hidden_sizes=(500,), num_train=x.shape[0]).to(device)
            try:
                results.append(
                    compare(
                        "M2 (100 labels)",
                        m2,
                        PlainM2(m2).to(device),
                        m2_loss,
                        data,
                        {"unlabelled": 200, "labelled": 100},
                        epochs,
                        3e-4,
                        "enum",
                        jit,
                        device,
                    )
                )
            except Exception as err:  # JIT of enumeration can fail: record it, keep going
                results.append(
                    {
                        "model": "M2 (100 labels)",
                        "objective": "enum (jit)",
                        "error": f"{type(err).__name__}: {err}"[:500],
                    }
                )
    if "m2_cpu" in args.models:
        results += m2_cpu_rows(x, y, args.quick, args.m2_unlabelled, epochs, device)
    if "ppca" in args.models:
        xc = train.x[:1024] if args.quick else train.x
        for jit in (False, True):
            torch.manual_seed(0)
            ppca = PPCA(784, 10).to(device)
            results.append(
                compare(
                    "PPCA K=10",
                    ppca,
                    PlainPPCA(ppca).to(device),
                    single_stream_loss,
                    xc,
                    1000,
                    epochs,
                    1e-2,
                    "elbo",
                    jit,
                    device,
                )
            )
    to_target = None
    if "vae_to_elbo" in args.models:
        x_test = binarize(load_dataset("mnist", "test", root=args.data_root, device=device).x, 1)
        to_target = time_to_elbo(
            x,
            x_test[:1000] if args.quick else x_test,
            -200.0 if args.quick else args.target_elbo,
            2 if args.quick else 40,
            device,
        )
    report = {
        "results": results,
        "time_to_test_elbo": to_target,
        "machine": machine(device),
        "device": str(device),
        "command": command_line(),
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "benchmarks.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "table.md").write_text(format_table(report) + "\n")
    print(format_table(report))
    return 0


def m2_cpu_rows(x, y, quick, n_unlabelled, epochs, device) -> list[dict]:
    """M2 at 3000 labels, the ``cpu_fast`` preset's networks: its cheaper steps (bf16 autocast,
    sum-and-sample, both) against plain PyTorch's float32 exact enumeration."""
    preset = m2_preset("cpu_fast")
    n_labels = 100 if quick else 3000
    split = labelled_split(y, n_labels, 100 if quick else 10000, seed=0)
    xu = x[split.unlabelled[: 512 if quick else n_unlabelled]]
    data = {"unlabelled": (xu,), "labelled": (x[split.labelled], y[split.labelled])}
    batch = dict(zip(("unlabelled", "labelled"), preset.batch_sizes(len(xu), n_labels),
                     strict=True))
    rows = []
    for objective, precision in [("enum", "bf16"), ("sum_and_sample", "fp32"),
                                 (preset.objective, preset.precision)]:
        torch.manual_seed(0)
        m2 = preset.build(x.shape[0], n_labels).to(device)
        name = f"M2 ({n_labels} labels, cpu_fast networks)"
        rows.append(compare(name, m2, PlainM2(m2).to(device), m2_loss, data, batch, epochs,
                            preset.lr, objective, False, device, precision=precision))
    return rows


def format_table(report: dict) -> str:
    lines = [
        "| model | objective | batch | pyrovae s/epoch | plain PyTorch s/epoch | ratio |",
        "|---|---|---|---|---|---|",
    ]
    for r in report["results"]:
        if "error" in r:
            lines.append(f"| {r['model']} | {r['objective']} | | failed: {r['error'][:80]} | | |")
            continue
        lines.append(
            f"| {r['model']} | {r['objective']} | {r['batch_size']} | "
            f"{r['pyrovae_epoch_seconds']:.3f} | {r['plain_epoch_seconds']:.3f} | "
            f"{r['ratio']:.2f}x |"
        )
    t = report.get("time_to_test_elbo")
    if t:
        lines.append("")
        lines.append(
            f"VAE 784-400-20 to a test ELBO of {t['target_test_elbo']} nats/image: "
            f"pyrovae (jit) {t['pyrovae']['seconds']:.1f} s in {t['pyrovae']['epochs']} "
            f"epochs, plain PyTorch {t['plain']['seconds']:.1f} s in "
            f"{t['plain']['epochs']} epochs (training time only; reached: "
            f"{t['pyrovae']['reached']}, {t['plain']['reached']})."
        )
    lines.append("")
    lines.append(f"Device {report['device']}; {report['machine']}.")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
