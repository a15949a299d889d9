"""CharRNN, the SMILES VAE's baseline: its exact likelihood, its sampler, its run and CPU budget."""

import copy

import pyro
import pytest
import torch
from test_smiles_vae import MOLECULES
from torch import nn

from pyrovae import fit
from pyrovae.data.smiles import SmilesVocabulary
from pyrovae.infer import History, load_checkpoint
from pyrovae.infer.callbacks import EpochEnd
from pyrovae.models.char_rnn import CharRNN
from pyrovae.models.smiles_vae import SMILESVAE
from pyrovae.runs import smiles as family
from pyrovae.runs.cpu_budget import CpuBudget
from pyrovae.runs.launch import RunError

SIZES = dict(embedding_dim=5, hidden_size=7)


def _encoded():
    vocab = SmilesVocabulary.build(MOLECULES)
    return vocab, *vocab.encode(MOLECULES)


def plain_cross_entropy(state: dict, tokens, lengths) -> torch.Tensor:
    """-log p(x) per molecule [N] of a one-layer GRU language model with the weights ``state``,
    in plain PyTorch: embedding, ``nn.GRU`` from ``h_0 = tanh(b)``, a linear read-out and
    ``cross_entropy`` over each molecule's own steps (the padded tensor, no trimming)."""
    state = {key: value.detach() for key, value in state.items()}
    embedding = state["embedding.weight"]
    hidden = state["decoder.weight_hh_l0"].shape[1]
    gru = nn.GRU(embedding.shape[1], hidden, batch_first=True).double()
    gru.load_state_dict({k.removeprefix("decoder."): v for k, v in state.items()
                         if k.startswith("decoder.")})
    inputs, targets = tokens[:, :-1], tokens[:, 1:]
    h0 = torch.tanh(state["initial_state.bias"]).expand(1, tokens.shape[0], hidden).contiguous()
    with torch.no_grad():
        out, _ = gru(nn.functional.embedding(inputs, embedding), h0)
    logits = out @ state["output.weight"].T + state["output.bias"]
    per_step = nn.functional.cross_entropy(logits.transpose(1, 2), targets, reduction="none")
    inside = torch.arange(targets.shape[1]) < lengths.unsqueeze(-1)
    return (per_step * inside).sum(-1)


def test_fit_loss_is_the_exact_cross_entropy():
    torch.set_default_dtype(torch.float64)
    vocab, tokens, lengths = _encoded()
    model = CharRNN(vocab.tokens, **SIZES).double()
    with torch.no_grad():  # a learned initial state that is not zero, so that it is tested
        model.initial_state.bias.normal_()
    before = copy.deepcopy(model.state_dict())
    # one step on the whole batch: the epoch's loss is the loss at the initial weights
    history = fit(model, (tokens, lengths), epochs=1, batch_size=len(MOLECULES), lr=1e-2,
                  seed=0, progress=False)
    expected = plain_cross_entropy(before, tokens, lengths)
    # float64, the same operations in another order: equal to rounding (~1e-15 relative)
    assert history.epochs[0]["loss_per_example"] == pytest.approx(
        float(expected.mean()), rel=1e-12)
    assert history.epochs[0]["steps"] == 1
    rebuilt = CharRNN(vocab.tokens, **SIZES).double()
    rebuilt.load_state_dict(before)
    torch.testing.assert_close(-rebuilt.log_marginal(tokens, lengths), expected,
                               rtol=1e-12, atol=0)


def _vae_holding(lm: CharRNN, latent_dim: int = 3) -> SMILESVAE:
    """A SMILES VAE whose decoder is ``lm`` with the code's weights set to zero."""
    vae = SMILESVAE(lm.vocab.tokens, latent_dim=latent_dim, encoder_hidden_size=4,
                    **SIZES).double()
    state, embedding_dim = vae.state_dict(), lm.embedding.embedding_dim
    for key, value in lm.state_dict().items():
        if key == "decoder.weight_ih_l0":
            state[key][:, :embedding_dim].copy_(value)
            state[key][:, embedding_dim:].zero_()
        else:
            state[key].copy_(value)
    state["initial_state.weight"].zero_()
    vae.load_state_dict(state)
    return vae


def test_the_vae_decoder_without_its_code_is_the_language_model():
    torch.set_default_dtype(torch.float64)
    vocab, tokens, lengths = _encoded()
    lm = CharRNN(vocab.tokens, **SIZES).double()
    with torch.no_grad():
        lm.initial_state.bias.normal_()
    vae = _vae_holding(lm)
    z = torch.randn(len(MOLECULES), 3)
    trace = pyro.poutine.trace(pyro.poutine.condition(vae.model, {"z": z})).get_trace(
        tokens, lengths)
    x = trace.nodes["x"]
    torch.testing.assert_close(x["fn"].log_prob(x["value"]), lm.log_marginal(tokens, lengths),
                               rtol=1e-12, atol=0)
    # The same sampler and temperature: the VAE decoding any z draws the LM's molecules.
    for temperature in (0.5, 1.0):
        drawn = family.sample_molecules(lm, 30, temperature, batch_size=30, seed=4)
        generator = torch.Generator().manual_seed(4)
        assert drawn == vae.generate_smiles(torch.randn(30, 3), temperature=temperature,
                                            generator=generator)
    assert len(set(drawn)) > 1  # draws, not one string


def test_checkpoint_registry_rebuilds_it(tmp_path):
    vocab, tokens, lengths = _encoded()
    model = CharRNN(vocab.tokens, **SIZES)
    fit(model, (tokens, lengths), epochs=1, batch_size=4, checkpoint_dir=tmp_path,
        progress=False)
    other = CharRNN(vocab.tokens, **SIZES)  # another model in the process shares nothing
    other.log_marginal(tokens, lengths)
    loaded = load_checkpoint(tmp_path / "last.pt")
    assert type(loaded) is CharRNN and loaded.config == model.config
    torch.testing.assert_close(loaded.log_marginal(tokens, lengths),
                               model.log_marginal(tokens, lengths), rtol=0, atol=0)


def test_run_layer_builds_it_with_the_vae_decoder_options():
    vocab, tokens, lengths = _encoded()
    molecules = family.Molecules(MOLECULES, vocab, tokens, lengths)
    options = dict(model="charrnn", embedding_dim=6, decoder_size=9, layers=2, epoch_size=4,
                   batch_size=2, monitor_size=0)
    model = family.build(options, molecules)
    assert type(model) is CharRNN and model.config["hidden_size"] == 9
    assert model.decoder.num_layers == 2 and model.embedding.embedding_dim == 6
    vae = family.build({k: v for k, v in options.items() if k != "model"}, molecules)
    assert {k: v.shape for k, v in vae.state_dict().items() if k.startswith("decoder.")
            and "_ih_" not in k} == {k: v.shape for k, v in model.state_dict().items()
                                     if k.startswith("decoder.") and "_ih_" not in k}
    # the same bucketed batches; no KL schedule for a model without a KL
    training = family.fit_options(options, molecules)
    assert isinstance(training["data"], family.BucketedChunks) and training["callbacks"] == []
    with pytest.raises(RunError, match="--word-dropout, --kl-floor do not apply"):
        family.build(options | {"kl_floor": 2.0, "word_dropout": 0.1}, molecules)


def _epoch_end(epoch: int, history: History) -> EpochEnd:
    return EpochEnd(epoch, 0, 0.0, None, history)


def test_cpu_budget_counts_across_invocations_and_stops():
    clock = iter([10.0, 40.0, 70.0, 100.0, 500.0]).__next__
    history = History()
    budget = CpuBudget(minutes=1.0, clock=clock)  # made at 10 s
    for epoch, expected in enumerate([30.0, 60.0]):
        row = budget(_epoch_end(epoch, history))
        history.epochs.append(row)
        assert row["cpu_seconds"] == expected
    assert history.epochs[0].get("stop") is None and history.epochs[1]["stop"] is True
    resumed = CpuBudget(clock=clock)  # made at 100 s: no budget, records only
    assert resumed(_epoch_end(2, history)) == {"cpu_seconds": 60.0 + 400.0}
    with pytest.raises(ValueError, match="minutes must be positive"):
        CpuBudget(minutes=0)


def test_evaluate_script_gives_it_the_vaes_sample_metrics_and_its_exact_nll(tmp_path):
    """``experiments.smiles.evaluate`` on a CharRNN trained by ``pyrovae smiles train``."""
    import json
    import os
    import subprocess
    import sys

    from conftest import REPO
    from test_smiles_vae import moses_root

    from pyrovae.cli import main

    root = moses_root()
    pytest.importorskip("rdkit")
    run = tmp_path / "run"
    assert main(["-q", "smiles", "train", "--model", "charrnn", "--train-limit", "120",
                 "--epoch-size", "60", "--batch-size", "30", "--embedding-dim", "4",
                 "--decoder-size", "8", "--monitor-size", "0", "--epochs", "1",
                 "--data-root", root, "--out", str(run)]) == 0
    env = dict(os.environ, PYTHONPATH=str(REPO), MPLBACKEND="Agg", OMP_NUM_THREADS="1")
    subprocess.run(
        [sys.executable, "-m", "experiments.smiles.evaluate", "--checkpoint",
         str(run / "last.pt"), "--samples", "20", "--reconstruct", "10", "--projection", "20",
         "--novelty-size", "100", "--data-root", root, "--device", "cpu",
         "--out", str(tmp_path / "eval")],
        check=True, cwd=REPO, env=env, capture_output=True, timeout=300,
    )
    result = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    metrics = result["metrics"]
    assert result["model_class"].endswith("CharRNN") and "interpolation" not in result
    assert metrics["test_molecules"] == 10 and 0.0 <= metrics["validity"] <= 1.0
    # the exact NLL of the same 10 molecules, recomputed here from the checkpoint
    model = load_checkpoint(run / "last.pt")
    targets = family.covered_molecules(model, family.load_smiles("test", size=20, seed=0,
                                                                 root=root))[:10]
    log_p = model.log_marginal(*model.vocab.encode(targets))
    assert metrics["test_nll_per_molecule"] == pytest.approx(-float(log_p.mean()), rel=1e-6)


def test_resume_raises_the_cpu_budget(tmp_path):
    """``pyrovae smiles resume --cpu-minutes`` continues a run its budget stopped, as
    ``--epochs`` raises its total; without it the run stops again after one epoch."""
    import json

    from test_smiles_vae import moses_root

    from pyrovae.cli import main

    root = moses_root()
    run = tmp_path / "run"
    small = ["--data-root", root, "--out", str(run)]
    assert main(["-q", "smiles", "train", "--model", "charrnn", "--train-limit", "60",
                 "--epoch-size", "30", "--batch-size", "30", "--embedding-dim", "4",
                 "--decoder-size", "8", "--monitor-size", "0", "--epochs", "50",
                 "--cpu-minutes", "1e-6", *small]) == 0

    def epochs() -> list[dict]:
        return json.loads((run / "train.json").read_text())["history"]

    assert len(epochs()) == 1                     # the budget stops it after its first epoch
    assert main(["-q", "smiles", "resume", *small]) == 0
    assert len(epochs()) == 2                     # the stored budget: one more epoch, stopped
    assert main(["-q", "smiles", "resume", "--cpu-minutes", "10", "--epochs", "4",
                 *small]) == 0
    assert len(epochs()) == 4                     # the raised budget lets it reach --epochs
    assert json.loads((run / "options.json").read_text())["cpu_minutes"] == 10
