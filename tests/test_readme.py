"""The README's research snippets run as written, in order, in one namespace."""

import pathlib
import re

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def test_readme_snippet_runs():
  text = README.read_text()
  blocks = re.findall(r"<!-- snippet -->\n```python\n(.*?)```", text, re.S)
  assert len(blocks) == 3
  namespace = {}
  for block in blocks:
    exec(compile(block, "README.md", "exec"), namespace)  # pylint: disable=exec-used
  assert namespace["iwae_B"].shape == (16,)
  assert float(namespace["iwae_B"].mean()) >= float(namespace["terms"].elbo.mean()) - 1.0
  assert namespace["images_TxD"].shape == (10, 784) and namespace["filled_BxD"].shape == (16, 784)
  observed, filled, x = namespace["observed_BxD"], namespace["filled_BxD"], namespace["x_BxD"]
  assert (filled[observed] == x[observed]).all()
  assert set(namespace["scores"]) == {"reconstruction", "neg_elbo", "iwae_nll"}
  assert namespace["cond"].elbo.shape == (16,) and namespace["sevens_8xD"].shape == (8, 784)
  assert set(namespace["parts"]) == {"neg_unlabelled_bound", "neg_labelled_bound", "cross_entropy"}
