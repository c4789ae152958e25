"""The README's research snippets run as written, in order, in one namespace."""

import pathlib
import re

import jax
import numpy as np

import jaxvae

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def test_readme_snippet_runs():
  text = README.read_text()
  blocks = re.findall(r"<!-- snippet -->\n```python\n(.*?)```", text, re.S)
  assert len(blocks) == 5
  namespace = {}
  for block in blocks:
    exec(compile(block, "README.md", "exec"), namespace)  # pylint: disable=exec-used
  assert namespace["iwae_B"].shape == (16,)
  assert float(namespace["iwae_B"].mean()) >= float(namespace["terms"].elbo.mean()) - 1.0
  assert namespace["log_px_B"].shape == (16,) and bool(np.all(np.isfinite(namespace["log_px_B"])))
  assert namespace["images_TxD"].shape == (10, 784) and namespace["filled_BxD"].shape == (16, 784)
  observed, filled, x = namespace["observed_BxD"], namespace["filled_BxD"], namespace["x_BxD"]
  assert (filled[observed] == x[observed]).all()
  sharp = namespace["sharp_BxD"]  # each block's ink where the counts say
  np.testing.assert_allclose(jaxvae.superres.block_counts(sharp, 4), namespace["counts_BxC"], atol=1e-3)
  assert set(namespace["scores"]) == {"reconstruction", "neg_elbo", "iwae_nll"}
  assert namespace["cond"].elbo.shape == (16,) and namespace["sevens_8xD"].shape == (8, 784)
  assert set(namespace["parts"]) == {"neg_unlabelled_bound", "neg_labelled_bound", "cross_entropy"}
  records = jaxvae.read_metrics(namespace["workdir"] / "metrics.jsonl")
  assert [r["epoch"] for r in records] == [1, 2, 2] and records[-1] == {**namespace["final"]}
  assert (namespace["workdir"] / "checkpoints" / "2").is_dir()
  for a, b in zip(jax.tree.leaves(namespace["trained_params"]), jax.tree.leaves(namespace["params"])):
    assert a.shape == b.shape and not np.array_equal(a, b)  # trained, from the first snippet's init
  seq_terms, seq_iwae_B = namespace["seq_terms"], namespace["seq_iwae_B"]
  assert seq_terms.elbo.shape == seq_iwae_B.shape == (2,) and bool((seq_iwae_B >= seq_terms.elbo - 1.0).all())
  assert isinstance(namespace["sampled"], str)
