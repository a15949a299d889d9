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
from pyrovae.infer import KLAnnealing
from pyrovae.infer.evaluation import elbo_terms
from pyrovae.models.free_bits import KL_FLOOR_SITE, standard_normal_kl
from pyrovae.models.sequence import reverse_within_length
from pyrovae.models.smiles_vae import SMILESVAE

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
    annealing = KLAnnealing(0.2, epochs=4)

    class Info:
        epoch, module = 1, model

    assert annealing(Info)["kl_weight_next"] == pytest.approx(0.6)
    assert float(model.kl_weight) == pytest.approx(0.6)


def test_elbo_terms_take_tokens_and_lengths_and_match_the_training_elbo():
    torch.set_default_dtype(torch.float64)
    vocab = SmilesVocabulary.build(MOLECULES)
    model = tiny_model(vocab).double()
    tokens, lengths = vocab.encode(MOLECULES)
    pyro.set_rng_seed(3)
    terms = elbo_terms(model, tokens, lengths, analytic_kl=True)
    pyro.set_rng_seed(3)  # the same z draws as the objective's
    loss = pyro.infer.TraceMeanField_ELBO().loss(model.model, model.guide, tokens, lengths)
    assert float(terms.elbo.sum()) == pytest.approx(-loss, rel=1e-10)  # float64 sums
    assert torch.equal(terms.reconstruction, terms.sites["x"])
    assert torch.equal(terms.kl, terms.sites["z"])
    loc, scale = model.encode((tokens, lengths))
    torch.testing.assert_close(terms.kl, standard_normal_kl(loc, scale))
    in_twos = elbo_terms(model, tokens, lengths, analytic_kl=True, batch_size=2)
    torch.testing.assert_close(in_twos.kl, terms.kl)  # rows batched apart, the same KL


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
    assert model.generate_smiles(z, greedy=True) == vocab.decode(generated)
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


# ------------------------------------------------------------ word dropout and free bits


def _tiny_pair(**options):
    """A float64 tiny model (seeded by the fixture) and the hand-made molecules, encoded."""
    torch.set_default_dtype(torch.float64)
    vocab = SmilesVocabulary.build(MOLECULES)
    tokens, lengths = vocab.encode(MOLECULES)
    settings = dict(latent_dim=3, embedding_dim=5, hidden_size=7, encoder_hidden_size=4,
                    kl_weight=0.5)
    return SMILESVAE(vocab.tokens, **(settings | options)).double(), tokens, lengths


def _loss(model, tokens, lengths, seed=1, guide=None, **kwargs):
    pyro.set_rng_seed(seed)
    return pyro.infer.Trace_ELBO().loss(model.model, guide or model.guide, tokens, lengths,
                                        **kwargs)


def test_default_options_leave_the_loss_as_it_was():
    # Reference values measured at the branch point (commit 1c0abe5, before word dropout and
    # free bits existed) with this same construction and seeds, torch 2.13.0+cpu, 1 thread.
    model, tokens, lengths = _tiny_pair()
    explicit, _, _ = _tiny_pair(word_dropout=0.0, kl_floor=0.0)
    explicit.load_state_dict(model.state_dict())
    assert _loss(model, tokens, lengths) == _loss(explicit, tokens, lengths)  # bit-identical
    # float64; the tolerance only allows for another CPU's kernels (summation order).
    assert _loss(model, tokens, lengths) == pytest.approx(298.85061841354735, rel=1e-12)
    torch.set_default_dtype(torch.float32)
    pyro.set_rng_seed(0)
    model = SMILESVAE(SmilesVocabulary.build(MOLECULES).tokens, latent_dim=3, embedding_dim=5,
                      hidden_size=7, encoder_hidden_size=4, kl_weight=0.5)
    history = fit(model, (tokens, lengths), epochs=3, batch_size=4, lr=1e-2, seed=0,
                  progress=False)
    # float32 training: the same values, to float32 rounding on another machine.
    reference = [323.7765808105469, 296.5228271484375, 297.46142578125]
    assert history.losses == pytest.approx(reference, rel=1e-6)


def _decoder_and_encoder_inputs(model, tokens, lengths):
    """The token ids the decoder's and the encoder's embeddings read in one model/guide run."""
    seen = {"decoder": [], "encoder": []}
    hooks = [
        model.embedding.register_forward_hook(
            lambda m, args, out: seen["decoder"].append(args[0].clone())),
        model.encoder_embedding.register_forward_hook(
            lambda m, args, out: seen["encoder"].append(args[0].clone())),
    ]
    try:
        guide_trace = poutine.trace(model.guide).get_trace(tokens, lengths)
        model_trace = poutine.trace(poutine.replay(model.model, trace=guide_trace)).get_trace(
            tokens, lengths)
    finally:
        for hook in hooks:
            hook.remove()
    return seen, model_trace


def test_word_dropout_replaces_only_decoder_inputs_and_only_in_training():
    model, tokens, lengths = _tiny_pair(word_dropout=1.0)
    vocab = model.vocab
    model.train()
    seen, trace = _decoder_and_encoder_inputs(model, tokens, lengths)
    (decoder_inputs,) = seen["decoder"]
    assert (decoder_inputs[:, 0] == vocab.bos).all()
    assert (decoder_inputs[:, 1:] == vocab.pad).all()  # every word after <bos> dropped
    assert torch.equal(trace.nodes["x"]["value"], tokens[:, 1:])  # targets untouched
    assert all(torch.equal(e, b) for e, b in zip(
        seen["encoder"], [tokens[:, 1:], reverse_within_length(tokens[:, 1:], lengths)],
        strict=True))
    model.eval()
    seen, _ = _decoder_and_encoder_inputs(model, tokens, lengths)
    assert torch.equal(seen["decoder"][0], tokens[:, :-1])
    # In eval mode the objective is the plain model's, with the same weights and draws.
    plain, _, _ = _tiny_pair()
    plain.load_state_dict(model.state_dict())
    assert _loss(model, tokens, lengths) == _loss(plain.eval(), tokens, lengths)
    # Generation never drops words, whatever the mode.
    model.train()
    z = torch.randn(4, 3)
    assert torch.equal(model.generate(z, greedy=True), plain.generate(z, greedy=True))
    gen = torch.Generator().manual_seed(2)
    drawn = model.sample(4, generator=gen)
    assert drawn == plain.sample(4, generator=torch.Generator().manual_seed(2))


def test_word_dropout_rate_and_seeding():
    model, _, _ = _tiny_pair(word_dropout=0.3)
    inputs = torch.full((1000, 50), 5)
    inputs[:, 0] = model.vocab.bos
    pyro.set_rng_seed(4)
    first = model.drop_words(inputs)
    pyro.set_rng_seed(4)
    assert torch.equal(first, model.drop_words(inputs))  # pyro's seed fixes the draws
    assert not torch.equal(first, model.drop_words(inputs))
    assert (first[:, 0] == model.vocab.bos).all()
    assert set(first[:, 1:].unique().tolist()) == {model.vocab.pad, 5}
    dropped = float((first[:, 1:] == model.vocab.pad).double().mean())
    # 49 000 Bernoulli(0.3) draws: standard error 0.0021; 0.01 is 4.8 of them (seeded anyway).
    assert dropped == pytest.approx(0.3, abs=0.01)
    with pytest.raises(ValueError, match="word_dropout"):
        _tiny_pair(word_dropout=1.5)


@pytest.mark.parametrize("floor", [0.0, 0.1, 40.0])
def test_free_bits_make_the_kl_term_max_of_kl_and_the_floor(floor):
    model, tokens, lengths = _tiny_pair(kl_floor=floor)
    plain, _, _ = _tiny_pair()
    plain.load_state_dict(model.state_dict())
    subsample = torch.tensor([0, 3, 5])
    with torch.no_grad():
        loc, scale = model.encode((tokens[subsample], lengths[subsample]))
        kl = torch.distributions.kl_divergence(
            torch.distributions.Normal(loc, scale), torch.distributions.Normal(0.0, 1.0)
        ).sum(-1)
    torch.testing.assert_close(standard_normal_kl(loc, scale), kl, rtol=1e-12, atol=1e-12)
    mean_kl = float(kl.mean())
    assert 0.1 < mean_kl < 40.0  # the floors cover both sides of this batch's KL
    # Same z draws: the floor adds N * beta * (max(mean KL, floor) - mean KL), N = 7 molecules
    # in the plate, beta = kl_weight = 0.5; Trace_ELBO's own KL term is the one-sample one.
    difference = (_loss(model, tokens, lengths, subsample=subsample)
                  - _loss(plain, tokens, lengths, subsample=subsample))
    expected = len(MOLECULES) * 0.5 * (max(mean_kl, floor) - mean_kl)
    assert difference == pytest.approx(expected, rel=1e-10, abs=1e-10)
    # Evaluation hides the site (experiments/smiles/evaluate.py): the plain model's ELBO.
    hidden = poutine.block(model.guide, hide=[KL_FLOOR_SITE])
    assert _loss(model, tokens, lengths, guide=hidden) == _loss(plain, tokens, lengths)
    # Padding invariance holds with both options on (the floor reads the guide only).
    model.word_dropout = 0.5
    long, _ = model.vocab.encode(MOLECULES, max_length=60)
    assert _loss(model.eval(), long, lengths) == pytest.approx(
        _loss(model, tokens, lengths), rel=1e-12)


def test_new_options_keep_old_checkpoints_loadable():
    model, _, _ = _tiny_pair()
    config = dict(model.config)
    del config["word_dropout"], config["kl_floor"]  # a config saved before the options
    rebuilt = SMILESVAE.from_config(config).double()
    rebuilt.load_state_dict(model.state_dict(), strict=True)
    assert (rebuilt.word_dropout, rebuilt.kl_floor) == (0.0, 0.0)
    with_options, _, _ = _tiny_pair(word_dropout=0.5, kl_floor=3.0)
    with_options.load_state_dict(model.state_dict(), strict=True)  # no new parameters


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
    train = [sys.executable, "-m", "experiments.smiles.train", "--train-limit", "120",
             "--epoch-size", "60", "--batch-size", "30", "--latent-dim", "3", "--decoder-size", "8",
             "--encoder-size", "4", "--embedding-dim", "4", "--kl-epochs", "2",
             "--word-dropout", "0.25", "--free-bits", "2", "--monitor-size", "50",
             "--device", "cpu", "--out", str(out)]
    for epochs in ("1", "2"):
        subprocess.run([*train, "--epochs", epochs], check=True, cwd=REPO, env=env,
                       capture_output=True, timeout=300)
    summary = json.loads((out / "train.json").read_text())
    assert [row["epoch"] for row in summary["history"]] == [0, 1]
    assert len(summary["invocations"]) == 2
    assert summary["history"][1]["kl_weight_next"] == 1.0
    for row in summary["history"]:  # the collapse watch on held-out molecules, every epoch
        assert 0 <= row["active_units"] <= 3 and row["kl_per_example"] >= 0
        assert row["collapsed"] == (row["active_units"] < 2 or row["kl_per_example"] < 1)
    assert summary["invocations"][0]["cpu_seconds"] > 0
    # --seed fixes the initial weights too: a fresh run repeats the first epoch exactly.
    again = [*train[:-1], str(tmp_path / "again"), "--epochs", "1"]
    subprocess.run(again, check=True, cwd=REPO, env=env, capture_output=True, timeout=300)
    repeat = json.loads((tmp_path / "again" / "train.json").read_text())
    assert repeat["history"][0]["loss"] == summary["history"][0]["loss"]
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
    assert result["model_config"]["word_dropout"] == 0.25
    assert result["model_config"]["kl_floor"] == 2.0
    assert 0 <= result["metrics"]["active_units"] <= 3
    assert result["metrics"]["test_kl_per_molecule"] >= 0
    for name in ("interpolation.png", "latent_pca_logp.png", "samples.txt"):
        assert (evaluation / name).stat().st_size > 0


def test_cli_evaluate_measures_novelty_against_every_moses_training_molecule(
        tmp_path, monkeypatch):
    """As ``experiments.smiles.evaluate`` does, not against the run's ``--train-limit``."""
    pytest.importorskip("rdkit")
    root = moses_root()
    from pyrovae.cli import main
    from pyrovae.runs import smiles as family

    run, report = tmp_path / "run", tmp_path / "report.json"
    assert main(["-q", "smiles", "train", "--train-limit", "100", "--epoch-size", "50",
                 "--batch-size", "50", "--latent-dim", "2", "--embedding-dim", "4",
                 "--encoder-size", "4", "--decoder-size", "8", "--monitor-size", "0",
                 "--epochs", "1", "--data-root", root, "--device", "cpu",
                 "--out", str(run)]) == 0
    references = []

    def recording(samples, train):
        references.append(train)
        return measure(samples, train)

    measure = family.sample_metrics
    monkeypatch.setattr(family, "sample_metrics", recording)
    assert main(["-q", "smiles", "evaluate", "--checkpoint", str(run / "last.pt"),
                 "--test-limit", "10", "--samples", "10", "--data-root", root,
                 "--device", "cpu", "--out", str(report)]) == 0
    everything = load_smiles("train", root=root)
    assert len(references) == 1 and references[0] == everything
    assert json.loads(report.read_text())["novelty_reference_size"] == len(everything)
