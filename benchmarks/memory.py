"""Peak memory of M2's enumerated training step and of the K = 5000 importance-sampled NLL.

Each measurement runs in a fresh child process, so the peak is its own: on CPU the growth of
the resident set (``ru_maxrss``) over the baseline taken once the data and model are loaded; on
CUDA ``torch.cuda.max_memory_allocated``.

    python benchmarks/memory.py --out results/benchmarks/cpu
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
from pathlib import Path

import torch


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def _child(what: str, device: str, root: str | None) -> dict:
    import pyro

    from pyrovae.data import binarize, load_dataset
    from pyrovae.infer import importance_log_likelihood, make_objective, param_scope
    from pyrovae.models import M2
    from pyrovae.models.vae import VAE

    pyro.enable_validation(False)
    dev = torch.device(device)
    test = load_dataset("mnist", "test", root=root, device=dev)
    x = binarize(test.x, seed=0)
    torch.manual_seed(0)
    if what == "m2_step":
        model = M2(784, 10, 50, hidden_sizes=(500,), num_train=60000).to(dev)
        settings = {"unlabelled batch": 200, "labelled batch": 100, "classes": 10}
    else:
        model = VAE(784, 20, hidden_sizes=(400,)).to(dev)
        settings = {"images": 500, "K": 5000, "sample_chunk": 100}
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated() / 2**20
    else:
        base = _rss_mib()
    with param_scope(model):
        if what == "m2_step":
            enum = make_objective("enum")
            idx_u, idx_l = torch.arange(200, device=dev), torch.arange(100, device=dev)
            loss = enum.differentiable_loss(model.model, model.guide, x, subsample=idx_u)
            loss = loss + enum.differentiable_loss(
                model.model, model.guide, x[:1000], test.y[:1000], subsample=idx_l
            )
            loss.backward()
        else:
            importance_log_likelihood(
                model.model,
                model.guide,
                x[:500],
                num_samples=5000,
                sample_chunk=100,
                batch_size=500,
            )
    peak = torch.cuda.max_memory_allocated() / 2**20 if dev.type == "cuda" else _rss_mib()
    return {
        "what": what,
        "device": device,
        "baseline_mib": base,
        "peak_mib": peak,
        "increase_mib": peak - base,
        "settings": settings,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--data-root", default=None)
    parser.add_argument("--out", default="results/benchmarks/cpu")
    parser.add_argument("--child", choices=["m2_step", "nll"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(_child(args.child, args.device, args.data_root)))
        return 0
    results = []
    for what in ("m2_step", "nll"):
        command = [sys.executable, __file__, "--child", what, "--device", args.device]
        if args.data_root:
            command += ["--data-root", args.data_root]
        done = subprocess.run(command, capture_output=True, text=True, check=True)
        results.append(json.loads(done.stdout.strip().splitlines()[-1]))
        print(results[-1])
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "memory.json").write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
