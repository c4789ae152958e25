"""Sequence VAEs: shapes, masking, the bounds against brute force, decoding, text data, the CLI."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.scipy import stats

import jaxvae
from jaxvae import objectives
from jaxvae import sequence
from jaxvae import seqvae
from jaxvae import text
from tests.test_reliability import assert_refused

PAD, BOS, EOS, UNK = sequence.PAD, sequence.BOS, sequence.EOS, sequence.UNK
TOKENS = sequence.SequenceVAE(latent_dim=3, hidden_dim=8, vocab_size=12, embed_dim=5)
ROWS = sequence.SequenceVAE(latent_dim=2, hidden_dim=8, row_dim=4)
SENTENCE = jnp.array([5, 6, 7, 8, EOS, PAD, PAD, PAD])  # four words, EOS, padding


def params_of(model, example, seed=0):
  return sequence.init_params(model, jax.random.key(seed), example)


def test_shapes_of_tokens_and_rows():
  p = params_of(TOKENS, SENTENCE)
  mean, logvar = TOKENS.apply(p, SENTENCE, method=TOKENS.encode)
  assert mean.shape == logvar.shape == (3,)
  assert TOKENS.apply(p, SENTENCE, mean, method=TOKENS.logits).shape == (8, 12)
  image = (jax.random.uniform(jax.random.key(1), (12,)) > 0.5).astype(jnp.float32)  # 3 rows of 4 pixels
  q = params_of(ROWS, image)
  assert ROWS.apply(q, image, jnp.zeros(2), method=ROWS.logits).shape == (3, 4)
  assert sequence.decode(TOKENS, p, mean, 10).shape == (10,)
  rows, probs = sequence.decode(ROWS, q, jnp.zeros(2), 3, jax.random.key(2))
  assert rows.shape == probs.shape == (12,) and set(np.unique(rows)) <= {0.0, 1.0}


def test_padding_changes_no_number():
  p = params_of(TOKENS, SENTENCE)
  longer = jnp.concatenate([SENTENCE, jnp.zeros(9, SENTENCE.dtype)])
  key = jax.random.key(3)
  # The encoder's state is exactly that of the real tokens; the bounds sum log-probabilities over
  # 8 or 17 positions (9 of them masked to 0), which a vectorized sum may round apart by an ulp or two.
  for x, y in zip(TOKENS.apply(p, SENTENCE, method=TOKENS.encode), TOKENS.apply(p, longer, method=TOKENS.encode)):
    np.testing.assert_array_equal(x, y)
  for a, b in [(objectives.elbo(TOKENS, p, key, SENTENCE), objectives.elbo(TOKENS, p, key, longer)),
               (objectives.iwae_bound(TOKENS, p, key, SENTENCE, 50), objectives.iwae_bound(TOKENS, p, key, longer, 50))]:
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
      np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-6)
  # The encoder reads the real tokens only: its final state is that of the unpadded sentence.
  np.testing.assert_array_equal(TOKENS.apply(p, SENTENCE, method=TOKENS.encode)[0],
                                TOKENS.apply(p, SENTENCE[:5], method=TOKENS.encode)[0])
  assert int(TOKENS.apply(p, longer, method=TOKENS.length)) == 5


def brute_force_log_px(model, params, x, num=2001, span=8.0):
  """log p(x) = log of the integral of p(x | z) N(z; 0, 1) over a 1-D z, by a Riemann sum on a grid."""
  z = jnp.linspace(-span, span, num)
  log_px_given_z = jax.jit(jax.vmap(lambda z: model.apply(params, x, z[None], method=model.log_likelihood)))(z)
  return float(jax.nn.logsumexp(log_px_given_z + stats.norm.logpdf(z)) + jnp.log(z[1] - z[0]))


@pytest.mark.parametrize("kind", ["tokens", "rows"])
def test_the_bounds_of_the_shared_objectives_against_brute_force(kind):
  if kind == "tokens":
    model, x = sequence.SequenceVAE(latent_dim=1, hidden_dim=6, vocab_size=9, embed_dim=4), SENTENCE
  else:
    model = sequence.SequenceVAE(latent_dim=1, hidden_dim=6, row_dim=4)
    x = jnp.array([1, 0, 0, 1, 1, 1, 0, 0, 0, 1, 1, 0], jnp.float32)
  p = params_of(model, x, seed=4)
  # Make z matter: sharpen the map from z to the decoder's first state and the output layer.
  p = jax.tree_util.tree_map_with_path(
      lambda path, a: a * 3 if any(n in jax.tree_util.keystr(path) for n in ("initial_state", "out")) else a, p)
  log_px = brute_force_log_px(model, p, x)
  key = jax.random.key(5)
  elbo = float(jax.jit(lambda p: jnp.mean(objectives.batch_elbo(model, p, key, jnp.stack([x] * 4000)).elbo))(p))
  iwae = float(jax.jit(lambda p: objectives.iwae_bound(model, p, key, x, 5000))(p))
  assert elbo < log_px - 0.1  # a real gap between the ELBO and log p(x) ...
  assert abs(iwae - log_px) < 0.03, (iwae, log_px)  # ... which the k = 5000 bound closes


def test_the_language_model_has_no_z_and_an_exact_likelihood():
  lm = sequence.SequenceVAE(latent_dim=0, hidden_dim=8, vocab_size=12, embed_dim=5)
  p = params_of(lm, SENTENCE)
  assert "encoder" not in p["params"] and "posterior" not in p["params"]
  exact = lm.apply(p, SENTENCE, jnp.zeros(0), method=lm.log_likelihood)
  terms = objectives.elbo(lm, p, jax.random.key(0), SENTENCE)
  assert float(terms.kl) == 0.0 and float(terms.elbo) == float(exact)
  np.testing.assert_allclose(objectives.iwae_bound(lm, p, jax.random.key(1), SENTENCE, 7), exact, rtol=1e-6)


def test_word_dropout_replaces_inputs_by_unk_but_never_bos():
  p = params_of(TOKENS, SENTENCE)
  z = jnp.zeros(3)
  everything = jnp.ones(8, bool)
  np.testing.assert_array_equal(TOKENS.apply(p, SENTENCE, z, everything, method=TOKENS.logits),
                                TOKENS.apply(p, SENTENCE, z, method=TOKENS.logits))
  nothing = TOKENS.apply(p, SENTENCE, z, jnp.zeros(8, bool), method=TOKENS.logits)
  unks = jnp.full(8, UNK)  # as targets, makes the decoder read BOS, then UNK at every step
  manual = TOKENS.apply(p, unks, z, method=TOKENS.logits)
  np.testing.assert_allclose(nothing, manual, rtol=1e-6)


def test_greedy_decoding_is_deterministic_and_ends_with_padding():
  p = params_of(TOKENS, SENTENCE, seed=7)
  z = jax.random.normal(jax.random.key(0), (3,))
  greedy = np.asarray(sequence.decode(TOKENS, p, z, 30))
  np.testing.assert_array_equal(greedy, sequence.decode(TOKENS, p, z, 30))
  for tokens in [greedy, *[np.asarray(sequence.decode(TOKENS, p, z, 30, jax.random.key(s))) for s in range(5)]]:
    end = list(tokens).index(EOS) if EOS in tokens else len(tokens)
    assert not set(tokens[:end]) & {PAD, BOS, UNK} and set(tokens[end + 1:]) <= {PAD}
  path = sequence.homotopy(jnp.zeros(3), jnp.ones(3), 5)
  a, b = path[0], path[-1]
  np.testing.assert_array_equal(a, 0.0)
  np.testing.assert_array_equal(b, 1.0)


def test_tokenizer_vocabulary_and_split():
  assert text.tokenize("The dog's bone, isn't it? A well-known U.S. fact") == [
      "the", "dog's", "bone", ",", "isn't", "it", "?", "a", "well-known", "u.s", ".", "fact"]
  sentences = [s.split() for s in ["a b c", "a b", "a", "d <unk> a"]]
  vocab = text.Vocabulary.build(sentences, 6)
  assert vocab.words == ("<pad>", "<s>", "</s>", "<unk>", "a", "b")
  ids = vocab.encode([["a", "c", "<unk>"]], 5)
  np.testing.assert_array_equal(ids, [[4, UNK, UNK, EOS, PAD]])
  assert vocab.decode(ids[0]) == "a <unk> <unk>"
  np.testing.assert_array_equal(vocab.encode([["a", "<pad>", "<s>", "</s>"]], 6), [[4, UNK, UNK, UNK, EOS, PAD]])
  with pytest.raises(jaxvae.ConfigError, match="larger than the training data's 4 distinct words"):
    text.Vocabulary.build(sentences, 9)
  many = [[str(i)] for i in range(100)]
  one, two = text.split(many, 3, 0.1, 0.2), text.split(many, 3, 0.1, 0.2)
  assert one == two and (len(one.train), len(one.valid), len(one.test)) == (70, 10, 20)
  assert sorted(map(tuple, one.train + one.valid + one.test)) == sorted(map(tuple, many))
  with pytest.raises(jaxvae.DataError, match="more than max_length=1"):
    text.check_lengths(sentences, 1, "corpus")


def test_wordnet_examples_are_read_from_the_glosses(tmp_path):
  header = "  1 This software and database is provided \"as is\"\n"
  entry = '00003553 03 n 02 whole 0 unit 0 015 @ 00002684 n 0000 | a thing; "the team is a unit"; "Unit, unit!"  \n'
  for name in text.WORDNET_FILES:
    (tmp_path / name).write_text(header + entry)
  assert text.wordnet_examples(tmp_path) == [["the", "team", "is", "a", "unit"], ["unit", ",", "unit", "!"]]
  (tmp_path / "data.adv").unlink()
  with pytest.raises(jaxvae.DataError, match="apt-get install wordnet-base"):
    text.wordnet_examples(tmp_path)


def sentences_args(tiny_text, workdir, *extra):
  return ["--corpus=lines", f"--text_path={tiny_text}", f"--workdir={workdir}", "--hidden_dim=16",
          "--latent_dim=4", "--embed_dim=8", "--vocab_size=20", "--max_length=12", "--batch_size=32",
          "--eval_iwae_samples=5", *extra]


def assert_sentence_report(workdir, word_dropout):
  """What a finished sentence run leaves: its results, lists, vocabulary and a model that loads
  (called by test_loop's kill-and-resume test of the family, on its resumed run)."""
  results = jaxvae.workdir.read_json_object(workdir / "results.json")
  assert results["iwae_samples"] == 5 and results["test_tokens"] > 0 and results["perplexity"] > 1
  assert results["sentences"] == {"train": 360, "valid": 20, "test": 20}
  assert (workdir / "homotopies.txt").read_text().count("\n") > seqvae.NUM_PATH
  model, params, settings = jaxvae.load_model(workdir)
  vocabulary = seqvae.load_vocabulary(workdir)
  assert isinstance(model, sequence.SequenceVAE) and model.vocab_size == len(vocabulary) == 20
  assert settings["word_dropout"] == word_dropout
  ids = vocabulary.encode([["the", "dog", "sat", "."]], 13)[0]
  assert np.isfinite(float(objectives.iwae_bound(model, params, jax.random.key(0), jnp.asarray(ids), 10)))


@pytest.mark.parametrize("problem, message", [
    ("empty", "no sentences"), ("missing", "no such file"), ("long", "sentence 2 has 13 tokens, more than "
                                                                     "max_length=12"),
    ("vocabulary", "vocab_size 500 is larger than the training data's")])
def test_bad_text_input_is_one_error_line(problem, message, tiny_text, tmp_path):
  corpus = tmp_path / "corpus.txt"
  lines = tiny_text.read_text().splitlines()
  corpus.write_text({"empty": "\n \n", "long": lines[0] + "\n" + " ".join(["w"] * 13) + "\n"}.get(
      problem, "\n".join(lines) + "\n"))
  if problem == "missing":
    corpus.unlink()
  extra = ["--vocab_size=500"] if problem == "vocabulary" else []
  flags = [f if not f.startswith("--text_path") else f"--text_path={corpus}"
           for f in sentences_args(tiny_text, tmp_path / "run", *extra)]
  assert_refused(flags, message, module="experiments.sentences")
  assert not (tmp_path / "run").exists()


def test_the_language_model_trains_and_reports_an_exact_nll(tiny_text, tmp_path):
  settings = dict(data="text", model="lm", corpus="lines", text_path=str(tiny_text), hidden_dim=16, embed_dim=8,
                  vocab_size=20, max_length=12, batch_size=32, num_epochs=1)
  final = seqvae.train_and_evaluate(seqvae.SequenceConfig(**settings), tmp_path / "lm")
  assert final["iwae_samples"] == 1 and final["test_kl"] == 0.0 and final["latent_dim"] == 0
  assert final["iwae_nll"] == pytest.approx(final["test_neg_elbo"], rel=1e-6)  # both the exact -log p(x)
  assert (tmp_path / "lm" / "samples.txt").is_file() and not (tmp_path / "lm" / "homotopies.txt").exists()


@pytest.mark.parametrize("field, value, message", [
    ("eval_iwae_samples", 0, "eval_iwae_samples must be positive"), ("word_dropout", 1.0, "below 1"),
    ("vocab_size", 4, "must exceed the 4 special tokens"), ("max_length", 5000, "at most 4,096"),
    ("free_bits", float("nan"), "finite number")])
def test_bad_settings_are_refused_before_anything_runs(field, value, message):
  with pytest.raises(jaxvae.ConfigError, match=message):
    seqvae.SequenceConfig(**{field: value}).validate()


def test_an_mnist_rows_run_writes_its_pictures_and_loads(tiny_npz, tmp_path):
  settings = dict(data="mnist_rows", data_source="npz", data_path=str(tiny_npz), hidden_dim=16, latent_dim=3,
                  batch_size=64, num_epochs=1, eval_iwae_samples=5, word_dropout=0.25, kl_warmup_epochs=1)
  final = seqvae.train_and_evaluate(seqvae.SequenceConfig(**settings), tmp_path / "rows")
  assert final["iwae_samples"] == 5 and np.isfinite(final["iwae_nll"]) and final["test_kl"] >= 0
  for name in ("samples.png", "reconstructions.png", "interpolations.png"):
    assert (tmp_path / "rows" / name).stat().st_size > 0
  model, params, _ = jaxvae.load_model(tmp_path / "rows")
  assert model.vocab_size == 0 and model.row_dim == 28
