"""SMILES VAE: data loader, vocabulary, masked likelihood, decoding, metrics and the scripts."""

import gzip
import json
import os
import subprocess
import sys

import pyro
import pytest
import torch
from conftest import REPO
from pyro import poutine

from pyrovae import fit
from pyrovae.data import ChecksumError, DatasetNotFoundError
from pyrovae.data.smiles import (
    MOSES_URL,
    SmilesVocabulary,
    ensure_moses,
    load_smiles,
    tokenize,
)
from pyrovae.models.sequence import reverse_within_length
from pyrovae.models.smiles_vae import SMILESVAE, KLAnnealing

# Hand-made molecules covering every kind of token: bracket atoms, Cl/Br, rings, bonds, charges.
MOLECULES = [
    "CCO",
    "c1ccc2[nH]ccc2c1",
    "CC(=O)Oc1ccccc1C(=O)O",
    "ClC(Br)=C/C=C\\F",
    "C[N+](C)(C)CC#N",
    "O=C1CC%10CC1",
    "[H]C([H])([H])[C@@H](N)S",
]


def moses_root():
    root = os.environ.get("PYROVAE_DATA")
    if not root or not (os.path.isfile(os.path.join(root, "moses", "test.csv.gz"))):
        pytest.skip("MOSES not found: set PYROVAE_DATA to a folder with moses/*.csv.gz")
    return root


def tiny_model(vocab, **options):
    settings = dict(latent_dim=3, embedding_dim=5, hidden_size=7, encoder_hidden_size=4)
    return SMILESVAE(vocab.tokens, **(settings | options))


# ----------------------------------------------------------------------------- data


def test_tokenize_keeps_bracket_atoms_and_two_letter_halogens_whole():
    assert tokenize("ClC(Br)[nH]%10") == ["Cl", "C", "(", "Br", ")", "[nH]", "%10"]
    with pytest.raises(ValueError, match="cannot tokenize"):
        tokenize("CC O")
    with pytest.raises(ValueError, match="cannot tokenize"):
        tokenize("C[nH")


def test_vocabulary_round_trip():
    vocab = SmilesVocabulary.build(MOLECULES)
    tokens, lengths = vocab.encode(MOLECULES, max_length=40)
    assert tokens.shape == (len(MOLECULES), 42)
    assert vocab.decode(tokens) == MOLECULES
    assert lengths.tolist() == [len(tokenize(s)) + 1 for s in MOLECULES]
    rows = torch.arange(len(MOLECULES))
    assert (tokens[:, 0] == vocab.bos).all() and (tokens[rows, lengths] == vocab.eos).all()
    assert vocab.tokens[:3] == ["<pad>", "<bos>", "<eos>"]
    with pytest.raises(ValueError, match="outside the vocabulary"):
        vocab.encode(["CI"])
    with pytest.raises(ValueError, match="max_length"):
        vocab.encode(MOLECULES, max_length=3)


def test_vocabulary_round_trip_on_moses_test_molecules():
    root = moses_root()
    smiles = load_smiles("test", size=500, seed=0, root=root)
    vocab = SmilesVocabulary.build(smiles)
    assert vocab.decode(vocab.encode(smiles)[0]) == smiles
    assert len(smiles) == len(set(smiles)) == 500  # drawn without replacement


def test_loader_rejects_a_corrupt_file(tmp_path):
    path = tmp_path / "moses" / "test.csv.gz"
    path.parent.mkdir()
    path.write_bytes(gzip.compress(b"SMILES\nCCO\n"))
    with pytest.raises(ChecksumError, match="md5"):
        ensure_moses("test", root=tmp_path, download=False)
    with pytest.raises(ChecksumError):
        load_smiles("test", root=tmp_path, download=False)


def test_loader_names_the_file_and_url_when_offline(tmp_path):
    with pytest.raises(DatasetNotFoundError, match="train.csv.gz") as info:
        ensure_moses("train", root=tmp_path, download=False)
    assert MOSES_URL in str(info.value)
    with pytest.raises(ValueError, match="unknown split"):
        ensure_moses("valid", root=tmp_path)


# ----------------------------------------------------------------------------- model


def test_reverse_within_length_leaves_padding_in_place():
    tokens = torch.tensor([[1, 2, 3, 0], [4, 5, 0, 0]])
    out = reverse_within_length(tokens, torch.tensor([3, 2]))
    assert out.tolist() == [[3, 2, 1, 0], [5, 4, 0, 0]]


def _log_likelihood(model, tokens, lengths, z):
    conditioned = poutine.condition(model.model, data={"z": z})
    trace = poutine.trace(conditioned).get_trace(tokens, lengths)
    trace.compute_log_prob()
    return trace.nodes["x"]["log_prob"]


def test_masked_log_likelihood_is_the_per_sequence_sum_over_valid_steps():
    torch.set_default_dtype(torch.float64)
    vocab = SmilesVocabulary.build(MOLECULES)
    model = tiny_model(vocab).double()
    tokens, lengths = vocab.encode(MOLECULES)
    z = torch.randn(len(MOLECULES), 3)
    batched = _log_likelihood(model, tokens, lengths, z)
    explicit = []
    for n, smiles in enumerate(MOLECULES):
        ids = [vocab.bos, *(vocab.index[t] for t in tokenize(smiles)), vocab.eos]
        row = torch.tensor([ids])  # unpadded: exactly this molecule's steps
        log_p = torch.log_softmax(model.decoder_logits(z[n : n + 1], row)[0], dim=-1)
        explicit.append(sum(log_p[t, ids[t + 1]] for t in range(len(ids) - 1)))
    # float64; one padded batch and N separate runs differ only by summation order (< 1e-12).
    torch.testing.assert_close(batched, torch.stack(explicit), rtol=1e-12, atol=1e-12)


def test_padding_never_changes_a_log_probability_or_the_code():
    torch.set_default_dtype(torch.float64)
    vocab = SmilesVocabulary.build(MOLECULES)
    model = tiny_model(vocab).double()
    z = torch.randn(len(MOLECULES), 3)
    short, lengths = vocab.encode(MOLECULES)
    long, lengths_long = vocab.encode(MOLECULES, max_length=60)
    assert torch.equal(lengths, lengths_long)
    torch.testing.assert_close(
        _log_likelihood(model, short, lengths, z),
        _log_likelihood(model, long, lengths, z),
        rtol=1e-12, atol=1e-12,
    )
    for a, b in zip(model.encode((short, lengths)), model.encode((long, lengths)), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    # Garbage in the padding is ignored too: the mask, not the pad value, does the work.
    noisy = long.clone()
    pad = long == vocab.pad
    noisy[pad] = torch.randint(3, len(vocab), (int(pad.sum()),))
    torch.testing.assert_close(
        _log_likelihood(model, noisy, lengths, z),
        _log_likelihood(model, long, lengths, z),
        rtol=1e-12, atol=1e-12,
    )


def test_kl_weight_scales_exactly_the_kl_term():
    torch.set_default_dtype(torch.float64)
    vocab = SmilesVocabulary.build(MOLECULES)
    model = tiny_model(vocab).double()
    tokens, lengths = vocab.encode(MOLECULES)
    elbo = pyro.infer.TraceMeanField_ELBO()  # analytic KL; same seed, same z draws

    def loss(weight):
        model.kl_weight.fill_(weight)
        pyro.set_rng_seed(3)
        return elbo.loss(model.model, model.guide, tokens, lengths)

    loc, scale = model.encode((tokens, lengths))
    kl = torch.distributions.kl_divergence(
        torch.distributions.Normal(loc, scale), torch.distributions.Normal(0.0, 1.0)
    ).sum()
    assert loss(1.0) - loss(0.25) == pytest.approx(0.75 * float(kl), rel=1e-10)
    annealing = KLAnnealing(epochs=4, start=0.2)

    class Info:
        epoch, module = 1, model

    assert annealing(Info)["kl_weight_next"] == pytest.approx(0.6)
    assert float(model.kl_weight) == pytest.approx(0.6)


def test_greedy_decoding_agrees_with_the_teacher_forced_decoder():
    vocab = SmilesVocabulary.build(MOLECULES)
    model = tiny_model(vocab, max_length=12)
    z = torch.randn(6, 3)
    generated = model.generate(z, greedy=True)
    inputs = torch.cat([torch.full((6, 1), vocab.bos), generated], dim=1)
    argmax = model.decoder_logits(z, inputs).argmax(-1)
    ended = torch.cumsum(generated == vocab.eos, dim=1) - (generated == vocab.eos).long()
    live = ended == 0  # steps up to and including each row's first <eos>
    assert torch.equal(argmax[live], generated[live])
    assert (generated[~live] == vocab.pad).all()
    assert model.decode(z, greedy=True) == vocab.decode(generated)
    first = model.sample(5, generator=torch.Generator().manual_seed(1))
    assert first == model.sample(5, generator=torch.Generator().manual_seed(1))


def test_tiny_model_overfits_a_handful_of_molecules():
    molecules = MOLECULES[:5]
    vocab = SmilesVocabulary.build(molecules)
    tokens, lengths = vocab.encode(molecules)
    model = SMILESVAE(vocab.tokens, latent_dim=4, embedding_dim=16, hidden_size=64,
                      encoder_hidden_size=16, max_length=30, kl_weight=0.1)
    history = fit(model, (tokens, lengths), epochs=150, batch_size=5, lr=1e-2, seed=0,
                  progress=False)
    # Threshold: all five reconstructed exactly (greedy, from the guide's mean), and the loss
    # below a tenth of its first epoch's. Seeded; this setting reaches both by epoch ~100.
    assert model.reconstruct(molecules) == molecules
    assert history.losses[-1] < 0.1 * history.losses[0]


# ----------------------------------------------------------------------------- metrics


def test_molecule_metrics_on_hand_made_lists():
    pytest.importorskip("rdkit")
    from pyrovae.metrics import molecules as chem

    generated = ["CCO", "OCC", "c1ccccc1", "C1CC", "", "CC(=O)O"]  # C1CC: unclosed ring
    assert chem.validity(generated) == 4 / 6
    assert chem.uniqueness(generated) == 3 / 4  # CCO and OCC are one molecule
    assert chem.uniqueness(generated, k=2) == 1 / 2
    assert chem.novelty(generated, ["CCO", "CCN"]) == 2 / 3
    assert chem.novelty(generated, ["OCC"]) == 1.0  # reference taken as given (MOSES)
    assert chem.novelty(generated, ["OCC"], canonicalize=True) == 2 / 3
    assert chem.reconstruction_accuracy(["CCO", "c1ccccc1", "CCN"],
                                        ["OCC", "C1=CC=CC=C1", "C1CC"]) == 2 / 3
    assert chem.internal_diversity(["CCO", "OCC"]) == 0.0
    a, b, c = (set(f.GetOnBits()) for f in chem.fingerprints(["CCO", "c1ccccc1", "CC(=O)O"]))
    tanimoto = [len(x & y) / len(x | y) for x, y in [(a, b), (a, c), (b, c)]]
    expected = 1 - sum(tanimoto) / 3
    assert chem.internal_diversity(["CCO", "c1ccccc1", "CC(=O)O"]) == pytest.approx(
        expected, rel=1e-12
    )
    values = chem.molecule_property(["CCO", "C1CC"], "logp")
    assert values[0] == pytest.approx(-0.0014, abs=1e-4)  # Crippen logP of ethanol
    assert values[1] != values[1]  # NaN for the invalid string


# ----------------------------------------------------------------------------- scripts


def test_train_and_evaluate_scripts_run_and_resume(tmp_path):
    pytest.importorskip("rdkit")
    root = moses_root()
    env = dict(os.environ, PYTHONPATH=str(REPO), PYROVAE_DATA=root, MPLBACKEND="Agg",
               OMP_NUM_THREADS="1")
    out = tmp_path / "train"
    train = [sys.executable, "-m", "experiments.smiles.train", "--train-size", "120",
             "--epoch-size", "60", "--batch-size", "30", "--latent", "3", "--hidden", "8",
             "--encoder-hidden", "4", "--embedding", "4", "--kl-epochs", "2",
             "--device", "cpu", "--out", str(out)]
    for epochs in ("1", "2"):
        subprocess.run([*train, "--epochs", epochs], check=True, cwd=REPO, env=env,
                       capture_output=True, timeout=300)
    summary = json.loads((out / "train.json").read_text())
    assert [row["epoch"] for row in summary["history"]] == [0, 1]
    assert len(summary["invocations"]) == 2
    assert summary["history"][1]["kl_weight_next"] == 1.0
    evaluation = tmp_path / "eval"
    subprocess.run(
        [sys.executable, "-m", "experiments.smiles.evaluate", "--checkpoint",
         str(out / "last.pt"), "--samples", "20", "--reconstruct", "10", "--projection", "20",
         "--novelty-size", "100", "--steps", "3", "--device", "cpu", "--out", str(evaluation)],
        check=True, cwd=REPO, env=env, capture_output=True, timeout=300,
    )
    result = json.loads((evaluation / "metrics.json").read_text())
    assert result["metrics"]["reconstructed_molecules"] == 10
    assert 0.0 <= result["metrics"]["validity"] <= 1.0
    assert result["checkpoint_epoch"] == 2
    assert 0 <= result["metrics"]["active_units"] <= 3
    assert result["metrics"]["test_kl_per_molecule"] >= 0
    for name in ("interpolation.png", "latent_pca_logp.png", "samples.txt"):
        assert (evaluation / name).stat().st_size > 0
