"""Sentences as token arrays: corpora, a word-level vocabulary, a fixed split, checked inputs.

Two corpora:

* "wordnet": WordNet 3.0's quoted example sentences ("the team is a unit"), read
  from the glosses of the `data.{noun,verb,adj,adv}` files that Debian's
  `wordnet-base` package installs in /usr/share/wordnet (`apt-get install
  wordnet-base`). Lower-cased and split into words and punctuation by
  `tokenize`; duplicates dropped; the examples of more than `WORDNET_MAX_TOKENS`
  tokens (the longest 0.15%) are not part of the corpus.
* "lines": any UTF-8 text file with one sentence per line, tokens separated by
  spaces (the Penn Treebank's ptb.train.txt format, as Bowman et al. 2016 used);
  a token `<unk>` in the file is the vocabulary's UNK. Blank lines are skipped.

`split` cuts a corpus into train / valid / test by a seed; `Vocabulary.build`
keeps the most frequent words of the training split; `encode` turns sentences
into int32 arrays [N, T] of ids, each row the words, `EOS`, then `PAD`.
"""

import collections
import dataclasses
import os
import pathlib
import re

import numpy as np

from jaxvae import workdir as workdir_lib
from jaxvae.errors import ConfigError, DataError
from jaxvae.sequence import BOS, EOS, PAD, UNK

MAX_TEXT_BYTES = 1 << 30  # a corpus read whole into memory: larger files are refused, not read
SPECIALS = ("<pad>", "<s>", "</s>", "<unk>")  # ids PAD, BOS, EOS, UNK
WORDNET_DIR = pathlib.Path("/usr/share/wordnet")
WORDNET_FILES = ("data.noun", "data.verb", "data.adj", "data.adv")
WORDNET_MAX_TOKENS = 25
MAX_LENGTH = 4096  # the largest --max_length
CORPORA = ("wordnet", "lines")

_TOKEN = re.compile(r"[a-z0-9]+(?:['\-.][a-z0-9]+)*|'s|n't|[^\sa-z0-9]")
_EXAMPLE = re.compile(r'"([^"]+)"')


def tokenize(sentence: str) -> list[str]:
  """Lower-cased words (with inner apostrophes, hyphens and dots) and punctuation marks."""
  return _TOKEN.findall(sentence.lower())


def wordnet_examples(directory=WORDNET_DIR) -> list[list[str]]:
  """The tokenized WordNet corpus (see the module docstring), in file order."""
  directory = pathlib.Path(directory)
  missing = [name for name in WORDNET_FILES if not (directory / name).is_file()]
  if missing:
    raise DataError(f"WordNet's data files are not in {directory} (missing {', '.join(missing)}); install them "
                    "with `apt-get install wordnet-base`, or pass their directory as --text_path")
  seen, sentences = set(), []
  for name in WORDNET_FILES:
    data = workdir_lib.read_bytes(directory / name, "WordNet data file", MAX_TEXT_BYTES, error=DataError)
    for line in data.decode("latin-1").splitlines():
      if line.startswith("  ") or " | " not in line:  # the licence header; entries without a gloss
        continue
      for example in _EXAMPLE.findall(line.split(" | ", 1)[1]):
        tokens = tokenize(example)
        if tokens and len(tokens) <= WORDNET_MAX_TOKENS and tuple(tokens) not in seen:
          seen.add(tuple(tokens))
          sentences.append(tokens)
  if not sentences:
    raise DataError(f"no example sentences in {directory}: not WordNet 3.0's data files")
  return sentences


def read_lines(path) -> list[list[str]]:
  """The sentences of a one-sentence-per-line file, split on whitespace; blank lines skipped."""
  path = pathlib.Path(path)
  if not os.path.lexists(path):
    raise DataError(f"{path}: no such file")
  try:
    text = workdir_lib.read_bytes(path, "text file", MAX_TEXT_BYTES, error=DataError).decode("utf-8")
  except UnicodeDecodeError as e:
    raise DataError(f"{path}: not UTF-8 text (byte {e.start})") from None
  sentences = [line.split() for line in text.splitlines() if line.strip()]
  if not sentences:
    raise DataError(f"{path}: no sentences (the file is empty or blank)")
  return sentences


def load_corpus(corpus: str, path=None) -> list[list[str]]:
  """The tokenized sentences of `corpus` ("wordnet": `path` is its directory; "lines": the file)."""
  if corpus == "wordnet":
    return wordnet_examples(path or WORDNET_DIR)
  if corpus == "lines":
    if not path:
      raise ConfigError("corpus lines needs text_path, the file with one sentence per line")
    return read_lines(path)
  raise ConfigError(f"corpus must be one of {', '.join(CORPORA)}; got {corpus!r}")


def check_lengths(sentences, max_length: int, where: str) -> None:
  """`DataError` naming the first sentence longer than `max_length` tokens."""
  for number, sentence in enumerate(sentences, 1):
    if len(sentence) > max_length:
      longest = max(len(s) for s in sentences)
      remedy = f"pass --max_length={longest} or shorten" if longest <= MAX_LENGTH else f"shorten (at most {MAX_LENGTH:,})"
      raise DataError(f"{where}: sentence {number} has {len(sentence)} tokens, more than max_length={max_length} "
                      f"(the longest has {longest}); {remedy} the sentences")


@dataclasses.dataclass(frozen=True)
class Split:
  train: list
  valid: list
  test: list


def split(sentences, seed: int, valid_fraction: float, test_fraction: float) -> Split:
  """A fixed random split: the same (sentences, seed, fractions) give the same three lists."""
  order = np.random.default_rng(seed).permutation(len(sentences))
  num_valid, num_test = round(valid_fraction * len(sentences)), round(test_fraction * len(sentences))
  if len(sentences) - num_valid - num_test < 1 or (valid_fraction and not num_valid) or (test_fraction and not num_test):
    raise DataError(f"{len(sentences)} sentences are too few for a train / valid / test split with fractions "
                    f"{valid_fraction} / {test_fraction}")
  pick = lambda idx: [sentences[i] for i in idx]
  return Split(pick(order[num_valid + num_test:]), pick(order[:num_valid]), pick(order[num_valid:num_valid + num_test]))


@dataclasses.dataclass(frozen=True)
class Vocabulary:
  """Word <-> id: the specials (`SPECIALS`), then words by training frequency (ties alphabetical)."""

  words: tuple[str, ...]

  @classmethod
  def build(cls, sentences, size: int) -> "Vocabulary":
    """The `size` - 4 most frequent words of `sentences` (`ConfigError` if they have fewer)."""
    counts = collections.Counter(w for s in sentences for w in s if w not in SPECIALS)
    if size - len(SPECIALS) > len(counts):
      raise ConfigError(f"vocab_size {size:,} is larger than the training data's {len(counts):,} distinct words "
                        f"plus the {len(SPECIALS)} special tokens; pass --vocab_size={len(counts) + len(SPECIALS)} "
                        "or less")
    ranked = sorted(counts, key=lambda w: (-counts[w], w))[: size - len(SPECIALS)]
    return cls((*SPECIALS, *ranked))

  def __len__(self) -> int:
    return len(self.words)

  @property
  def ids(self) -> dict:
    return {w: i for i, w in enumerate(self.words)}

  @property
  def word_ids(self) -> dict:
    """Word -> id for the words a sentence may hold: `<pad>`, `<s>` and `</s>` in a text are
    unknown words like any other (only `<unk>` keeps its meaning)."""
    ids = self.ids
    for special in SPECIALS[:3]:
      ids.pop(special, None)
    return ids

  def encode(self, sentences, length: int) -> np.ndarray:
    """int32 [N, length]: each sentence's ids (unknown words UNK), EOS, then PAD."""
    ids = self.word_ids
    out = np.full((len(sentences), length), PAD, np.int32)
    for row, sentence in zip(out, sentences):
      tokens = [ids.get(w, UNK) for w in sentence] + [EOS]
      row[: len(tokens)] = tokens
    return out

  def decode(self, ids_T) -> str:
    """The words of one id sequence up to EOS (PAD and BOS dropped)."""
    words = []
    for i in np.asarray(ids_T).tolist():
      if i == EOS:
        break
      if i not in (PAD, BOS):
        words.append(self.words[i])
    return " ".join(words)

  def unknown_rate(self, sentences) -> float:
    """The share of the words of `sentences` (EOS not counted) that are UNK."""
    ids = self.word_ids
    tokens = [w for s in sentences for w in s]
    return sum(w not in ids or w == "<unk>" for w in tokens) / max(len(tokens), 1)
