"""The ``pyrovae`` command, run as a user would."""

import json
import re
import shlex
import subprocess
import sys

import pytest


def run(*args, env=None):
    return subprocess.run(
        [sys.executable, "-m", "pyrovae.cli", *args], capture_output=True, text=True, env=env
    )


@pytest.mark.parametrize("args", [["--help"], ["ppca", "--help"]])
def test_help(args):
    result = run(*args)
    assert result.returncode == 0 and "usage: pyrovae" in result.stdout


@pytest.mark.parametrize("args", [["vae", "train", "--help"], ["m2", "sample", "--help"],
                                  ["vae", "resume", "--help"], ["m2", "evaluate", "--help"],
                                  ["sketch", "complete", "--help"], ["smiles", "train", "--help"],
                                  ["smiles", "optimize", "--help"]])
def test_help_of_every_subcommand(args, capsys):
    from pyrovae.cli import main

    with pytest.raises(SystemExit) as stop:
        main(args)
    assert stop.value.code == 0 and capsys.readouterr().out.startswith("usage: pyrovae")


@pytest.mark.parametrize("flag", ["-v", "-q"])
@pytest.mark.parametrize("before", [True, False])
def test_verbosity_before_or_after_the_subcommand(flag, before):
    import logging

    from pyrovae.cli import build_parser

    argv = [flag, "ppca"] if before else ["ppca", flag]
    args = build_parser().parse_args(argv)
    assert args.log_level == (logging.DEBUG if flag == "-v" else logging.ERROR)
    assert build_parser().parse_args(["ppca"]).log_level == logging.INFO  # progress by default
    nested = ["vae", "train", flag] if not before else [flag, "vae", "train"]
    assert build_parser().parse_args(nested).log_level == args.log_level


def test_ppca_digits_smoke(tmp_path):
    result = run(
        "ppca", "--epochs", "30", "--lr", "0.05", "--latent-dim", "3", "--out", str(tmp_path)
    )
    assert result.returncode == 0, result.stderr
    assert "closed form" in result.stdout and "SVI" in result.stdout
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["dataset"] == "digits" and report["n"] == 1437 and report["latent_dim"] == 3
    assert report["svi"]["log_likelihood"] <= report["closed_form"]["log_likelihood"]
    assert report["svi"]["elbo"] <= report["svi"]["log_likelihood"]  # exact: no noise
    for name in report["figures"]:
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert report["command"].startswith("pyrovae ppca")


def test_missing_data_is_a_clear_error(tmp_path):
    result = run("ppca", "--dataset", "mnist", "--data-root", str(tmp_path), "--no-download")
    assert result.returncode == 2
    assert "train-images-idx3-ubyte.gz" in result.stderr and str(tmp_path) in result.stderr


@pytest.mark.parametrize("family, missing", [("sketch", "sketch-rnn-datasets"),
                                             ("smiles", "moses")])
def test_missing_sequence_data_is_one_line(family, missing, tmp_path, capsys):
    from pyrovae.cli import main

    status = main([family, "train", "--data-root", str(tmp_path), "--no-download",
                   "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert status == 2 and len(err.strip().splitlines()) == 1
    assert err.startswith("pyrovae: error: ") and str(tmp_path / missing) in err


def doc_commands(section: str = "## Examples") -> list[str]:
    """The commands of docs/cli.md's ``section`` (a heading), in order."""
    from conftest import REPO

    text = (REPO / "docs" / "cli.md").read_text()
    examples = text.split(section + "\n", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```bash\n(.*?)```", examples, flags=re.S)
    return [line for block in blocks for line in block.splitlines() if line.startswith("pyrovae")]


def run_in_process(command: str, capsys) -> str:
    from pyrovae.cli import main

    status = main(shlex.split(command)[1:])
    out = capsys.readouterr()
    assert status == 0, out.err
    return out.out


def test_documented_examples_run(tmp_path, monkeypatch, capsys):
    """Every example of docs/cli.md, as written, at its smoke size (seconds on digits)."""
    monkeypatch.chdir(tmp_path)
    commands = doc_commands()
    assert [c.split()[1:3] for c in commands] == [
        ["ppca", "--epochs"], ["vae", "train"], ["vae", "resume"], ["vae", "evaluate"],
        ["vae", "sample"], ["impute", "--checkpoint"], ["m2", "train"], ["m2", "resume"],
        ["m2", "evaluate"], ["m2", "sample"],
    ]
    outputs = [run_in_process(c, capsys) for c in commands]
    assert "closed form" in outputs[0]

    for family, total in [("vae", 3), ("m2", 3)]:
        run = tmp_path / "runs" / f"{family}_smoke"
        record = json.loads((run / "train.json").read_text())
        # train ran 2 epochs, resume went on to 3: one history, epochs 0, 1, 2 in order
        assert [row["epoch"] for row in record["history"]] == list(range(total))
        assert record["options"]["epochs"] == total and record["command"].startswith("pyrovae")
        assert {"last.pt", "previous.pt", "options.json"} <= {p.name for p in run.iterdir()}
    assert (tmp_path / "runs" / "m2_smoke" / "best.pt").exists()

    # evaluate: the K-sample importance estimate of -log p(x) lies below -ELBO (IWAE bound);
    # printed as "test NLL 33.0 ± 0.2 nats/image" beside "test ELBO -34.1 nats/image".
    vae_eval = outputs[3]
    elbo = float(re.search(r"test ELBO (-?[\d.]+)", vae_eval).group(1))
    nll = float(re.search(r"test NLL ([\d.]+)", vae_eval).group(1))
    assert 0 < nll < -elbo + 0.5  # different images (360 vs first 50): a 0.5-nat margin
    m2_eval = outputs[8]
    error = float(re.search(r"test error ([\d.]+) %", m2_eval).group(1))
    bound = float(re.search(r"bound U\(x\) (-?[\d.]+)", m2_eval).group(1))
    m2_nll = float(re.search(r"test NLL ([\d.]+)", m2_eval).group(1))
    assert 0 <= error <= 100 and 0 < m2_nll < -bound + 0.5

    # impute: the log-likelihood of the hidden top halves, printed and in the report
    report = json.loads((tmp_path / "runs" / "impute_smoke" / "report.json").read_text())
    assert f"{report['missing_log_likelihood']:.3f} ±" in outputs[5]
    assert report["mask"] == "top" and report["num_images"] == 5

    import matplotlib.image

    # 16 images of 8x8 in 4 columns with 2-pixel lines; M2: 10 classes x 4 per class; each
    # image pixel drawn at least 3x3 (issue 25), plus the title and labels around the grid
    vae_grid = matplotlib.image.imread(tmp_path / "runs" / "vae_smoke" / "samples.png")
    m2_grid = matplotlib.image.imread(tmp_path / "runs" / "m2_smoke" / "samples.png")
    assert vae_grid.shape[0] > 3 * (4 * 10 + 2) and vae_grid.shape[1] > 3 * (4 * 10 + 2)
    assert m2_grid.shape[0] > 3 * (10 * 10 + 2) and m2_grid.shape[1] > 3 * (4 * 10 + 2)

    # every train writes its curve and one CSV row per epoch of the whole run (issue 25)
    for family in ("vae", "m2"):
        run = tmp_path / "runs" / f"{family}_smoke"
        assert_curves(run, json.loads((run / "train.json").read_text())["history"])


def assert_curves(run, history) -> None:
    """``run``'s metrics.csv holds ``history`` row for row; curve.png is a PNG."""
    import csv

    with (run / "metrics.csv").open() as file:
        rows = list(csv.DictReader(file))
    assert [int(r["epoch"]) for r in rows] == [h["epoch"] for h in history]
    for row, epoch in zip(rows, history, strict=True):
        assert float(row["loss_per_example"]) == pytest.approx(epoch["loss_per_example"])
    assert (run / "curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_resume_evaluate_sample_default_to_trains_run_folder(tmp_path, monkeypatch, capsys):
    """``train`` puts a run in runs/FAMILY by default; ``resume``, ``evaluate`` and ``sample``
    find it there with no --out or --checkpoint (issue 25), and say in one line when it is
    not there."""
    from pyrovae.cli import main

    def call(args):
        try:
            return main(args)
        except SystemExit as stop:
            return stop.code

    monkeypatch.chdir(tmp_path)
    assert call(["vae", "sample"]) == 2
    assert capsys.readouterr().err.strip() == "pyrovae: error: no checkpoint at runs/vae/last.pt"
    assert call(["vae", "resume"]) == 2
    assert capsys.readouterr().err.count("\n") == 1
    tiny = ["--dataset", "digits", "--latent-dim", "2", "--hidden-sizes", "16", "--epochs", "1"]
    assert call(["-q", "vae", "train", *tiny]) == 0
    assert call(["-q", "vae", "resume", "--epochs", "2"]) == 0
    record = json.loads((tmp_path / "runs" / "vae" / "train.json").read_text())
    assert [row["epoch"] for row in record["history"]] == [0, 1]
    assert call(["-q", "vae", "evaluate", "--num-samples", "0"]) == 0
    assert "test ELBO" in capsys.readouterr().out
    assert call(["-q", "vae", "sample", "--num", "4", "--columns", "2"]) == 0
    assert (tmp_path / "samples.png").is_file()
    assert call(["-q", "m2", "train", *tiny]) == 0
    assert call(["-q", "m2", "sample", "--per-class", "1"]) == 0  # reads runs/m2/best.pt
    assert (tmp_path / "m2_samples.png").is_file()


SEQUENCE_EXAMPLES = "## Sequence models: `sketch` and `smiles`"


def test_documented_sequence_examples_run(tmp_path, monkeypatch, capsys):
    """docs/cli.md's sketch and smiles examples, as written (seconds; they need the data)."""
    from test_sketch_rnn import sheep_root
    from test_smiles_vae import moses_root

    sheep_root(), moses_root()
    pytest.importorskip("rdkit")
    monkeypatch.chdir(tmp_path)
    commands = doc_commands(SEQUENCE_EXAMPLES)
    assert [c.split()[1:3] for c in commands] == [
        ["sketch", action] for action in ("train", "resume", "evaluate", "sample", "complete")
    ] + [["smiles", action] for action in ("train", "resume", "evaluate", "sample", "optimize")
         ] + [["smiles", action] for action in ("train", "resume", "evaluate", "sample")]
    outputs = [run_in_process(c, capsys) for c in commands]

    for family in ("sketch", "smiles"):
        run = tmp_path / "runs" / f"{family}_smoke"
        record = json.loads((run / "train.json").read_text())
        # train ran 1 epoch, resume went on to 2: one history, epochs 0 and 1 in order
        assert [row["epoch"] for row in record["history"]] == [0, 1]
        assert record["command"].startswith("pyrovae") and record["options"]["epochs"] == 2
        assert_curves(run, record["history"])
    sketch_run = tmp_path / "runs" / "sketch_smoke"
    for name in ("samples.png", "reconstructions.png", "interpolation.png", "prior.png"):
        assert (sketch_run / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # evaluate prints the mean test reconstruction loss of the 8 test sketches; train's last
    # row measured the same checkpoint on the same sketches with the same seed
    recon = float(re.search(r"test reconstruction ([\d.]+) nats/sketch", outputs[2]).group(1))
    final = json.loads((sketch_run / "train.json").read_text())["history"][-1]
    assert recon == pytest.approx(final["test_recon"], abs=1e-3)
    completions = json.loads((tmp_path / "runs" / "sketch_complete" / "completions.json")
                             .read_text())["completions"]
    assert set(completions) == {"encode/tau=0.5", "prior/tau=0.5"}
    assert all(v["n"] == 4 for v in completions.values())  # 2 sketches x 2 samples

    assert "active units" in outputs[7] and "validity" in outputs[7]
    samples = (tmp_path / "runs" / "smiles_smoke" / "samples.smi").read_text().splitlines()
    assert len(samples) == 10
    result = json.loads((tmp_path / "runs" / "smiles_optimize" / "metrics.json").read_text())
    assert result["latent_search"]["decodes"] == 3 * 2  # 3 paths, a decode every 10 of 20

    # the CharRNN baseline: the same run folder files, the CPU time summed over invocations,
    # and evaluate's exact NLL of the same 50 held-out molecules as train's last row
    lm_run = tmp_path / "runs" / "charrnn_smoke"
    record = json.loads((lm_run / "train.json").read_text())
    assert record["options"]["model"] == "charrnn" and "latent_dim" not in record["options"]
    assert record["options"]["cpu_minutes"] == 20  # resume --cpu-minutes raised the budget of 10
    history = record["history"]
    assert [row["epoch"] for row in history] == [0, 1]
    assert 0 < history[0]["cpu_seconds"] < history[1]["cpu_seconds"]
    assert_curves(lm_run, history)
    assert "test NLL" in outputs[12] and "validity" in outputs[12]
    test = json.loads((lm_run / "test.json").read_text())
    assert test["test_molecules"] == 50
    assert test["test_nll_per_molecule"] == pytest.approx(
        history[-1]["held_out_nll_per_molecule"], rel=1e-5)  # float32 sums, another order
    assert len((lm_run / "samples.smi").read_text().splitlines()) == 10


def test_progress_lines_by_default_and_quiet_with_q(tmp_path, capsys, caplog):
    import logging

    from pyrovae.cli import main

    base = ["vae", "train", "--dataset", "digits", "--train-size", "200", "--test-size", "50",
            "--latent-dim", "2", "--hidden-sizes", "16", "--epochs", "2"]
    with caplog.at_level(logging.INFO):
        assert main([*base, "--out", str(tmp_path / "a")]) == 0
    epoch_lines = [r.message for r in caplog.records if r.message.startswith("epoch ")]
    assert len(epoch_lines) == 2 and all("test_elbo" in line for line in epoch_lines)
    args = __import__("pyrovae.cli", fromlist=["build_parser"]).build_parser().parse_args(
        [*base, "-q"])
    assert args.log_level == logging.ERROR
    from pyrovae.cli._common import progress_enabled

    assert progress_enabled(args) is False


def test_impute_smoke(tmp_path):
    """``pyrovae impute`` on a VAE just trained: the report's fields, a finite negative
    log-likelihood of the missing pixels (a log-probability of binary pixels is <= 0, and the
    top half of a digit is never all certain), the grid of observed / imputed / truth."""
    run_dir, out = tmp_path / "vae", tmp_path / "impute"
    trained = run("-q", "vae", "train", "--dataset", "digits", "--train-size", "200",
                  "--test-size", "50", "--latent-dim", "2", "--hidden-sizes", "16",
                  "--epochs", "1", "--out", str(run_dir))
    assert trained.returncode == 0, trained.stderr
    result = run("impute", "--checkpoint", str(run_dir / "last.pt"), "--dataset", "digits",
                 "--mask", "top", "--method", "importance", "--num-images", "5",
                 "--num-samples", "10", "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert "log-likelihood of the missing pixels" in result.stdout
    report = json.loads((out / "report.json").read_text())
    assert report["command"].startswith("pyrovae impute")
    assert (report["dataset"], report["mask"], report["method"]) == ("digits", "top", "importance")
    assert (report["num_images"], report["num_samples"]) == (5, 10)
    assert report["missing_fraction"] == 0.5  # 4 of the 8 rows of an 8x8 digit
    value = report["missing_log_likelihood"]
    assert value == value and -float("inf") < value < 0
    assert 1 <= report["median_effective_sample_size"] <= 10
    import matplotlib.image

    grid = matplotlib.image.imread(out / report["grid"])
    # one row of 5 images x (observed, imputed, truth), 8x8 pixels each drawn at least 3x3
    assert grid.shape[0] > 3 * (10 + 2) and grid.shape[1] > 3 * (15 * 10 + 2)


def test_impute_any_vae_checkpoint(tmp_path):
    """A VAE saved by ``pyrovae.save_checkpoint`` (not by the CLI) is imputed given --dataset,
    and without it refused in one line naming the option."""
    from pyrovae import save_checkpoint
    from pyrovae.models.vae import VAE

    bare = tmp_path / "bare.pt"
    save_checkpoint(bare, VAE(data_dim=64, latent_dim=2, hidden_sizes=[8]))
    result = run("impute", "--checkpoint", str(bare), "--out", str(tmp_path / "a"))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"pyrovae: error: --checkpoint {bare} holds a VAE not trained by 'pyrovae vae train': "
        "name its test images with --dataset"]
    result = run("impute", "--checkpoint", str(bare), "--dataset", "digits", "--mask",
                 "random50", "--method", "metropolis_gibbs", "--num-images", "3",
                 "--num-sweeps", "4", "--out", str(tmp_path / "b"))
    assert result.returncode == 0, result.stderr
    report = json.loads((tmp_path / "b" / "report.json").read_text())
    assert 0 <= report["acceptance_rate"] <= 1 and report["missing_log_likelihood"] < 0


def write_svhn_files(root, sizes=(("train", 40), ("test", 20))):
    """Small SVHN files in the official format (``X`` [32, 32, 3, N] uint8, ``y`` in 1..10)."""
    import numpy as np

    scipy_io = pytest.importorskip("scipy.io")
    rng = np.random.default_rng(0)
    (root / "SVHN").mkdir(parents=True)
    for split, n in sizes:
        images = rng.integers(0, 256, size=(32, 32, 3, n), dtype=np.uint8)
        labels = (np.arange(n) % 10 + 1).reshape(n, 1).astype(np.uint8)
        scipy_io.savemat(root / "SVHN" / f"{split}_32x32.mat", {"X": images, "y": labels})


def test_colour_svhn_conv_vae_and_m2_smoke(tmp_path, capsys):
    """``--dataset svhn --arch conv``: the image shape comes from the data (3x32x32), the grey
    levels are not binarised, and ``sample`` writes an RGB grid whose tiles are the model's
    colour images (channel c of a tile = channel c of the image)."""
    import numpy as np
    from PIL import Image

    from pyrovae import load_checkpoint
    from pyrovae.cli import main

    root, run_dir = tmp_path / "data", tmp_path / "vae"
    write_svhn_files(root)
    data = ["--dataset", "svhn", "--data-root", str(root), "--no-download", "--device", "cpu"]
    assert main(["-q", "vae", "train", *data, "--arch", "conv", "--latent-dim", "2",
                 "--hidden-sizes", "16", "--epochs", "1", "--batch-size", "20",
                 "--out", str(run_dir)]) == 0
    options = json.loads((run_dir / "options.json").read_text())
    assert options["image_shape"] == [3, 32, 32]
    model = load_checkpoint(run_dir / "last.pt")
    assert model.config["image_shape"] == [3, 32, 32] and model.likelihood.allow_continuous
    report = json.loads((run_dir / "train.json").read_text())
    assert np.isfinite(report["test_elbo"])

    png = tmp_path / "samples.png"
    assert main(["vae", "sample", "--checkpoint", str(run_dir / "last.pt"), "--num", "4",
                 "--columns", "2", "--seed", "3", "--out", str(png)]) == 0
    with Image.open(png) as image:
        grid = np.asarray(image.convert("RGB")).astype(int)
    # 2 x 2 tiles of 32 + 2-pixel lines, each pixel drawn 3 x 3 (32 px images: 96 px tiles)
    assert grid.shape[0] > 3 * (2 * 34 + 2) and grid.shape[1] > 3 * (2 * 34 + 2)
    expected = model.sample(4, generator=torch_generator(3)).reshape(4, 3, 32, 32)
    # Image 1 (row 0, column 1) is in the PNG, upscaled: find its top-left 3 x 3 block, then
    # compare the whole tile (8-bit colours: within 1 of the model's value times 255).
    tile = np.round(expected[1].numpy().transpose(1, 2, 0) * 255).repeat(3, 0).repeat(3, 1)
    candidates = zip(*np.nonzero((np.abs(grid - tile[0, 0]) <= 1).all(-1)), strict=True)
    assert any(
        np.abs(grid[y : y + 96, x : x + 96] - tile).max() <= 1
        for y, x in candidates if y + 96 <= grid.shape[0] and x + 96 <= grid.shape[1]
    )

    m2_dir = tmp_path / "m2"
    assert main(["-q", "m2", "train", *data, "--arch", "conv", "--classifier-arch", "conv",
                 "--n-labelled", "10", "--n-validation", "10", "--latent-dim", "2",
                 "--hidden-sizes", "16", "--epochs", "1", "--batch-size", "10",
                 "--labelled-batch-size", "10", "--out", str(m2_dir)]) == 0
    m2 = load_checkpoint(m2_dir / "best.pt")
    assert m2.config["image_shape"] == [3, 32, 32] and m2.config["arch"] == "conv"
    assert main(["m2", "sample", "--checkpoint", str(m2_dir / "best.pt"), "--per-class", "2",
                 "--out", str(tmp_path / "m2.png")]) == 0
    with Image.open(tmp_path / "m2.png") as image:
        height, width = image.size[1], image.size[0]
    assert height > 3 * (10 * 34 + 2) and width > 3 * (2 * 34 + 2)
    capsys.readouterr()


def torch_generator(seed):
    import torch

    return torch.Generator().manual_seed(seed)
