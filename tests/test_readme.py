"""The README's research snippet runs as written."""

import pathlib
import re

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def test_readme_snippet_runs():
  text = README.read_text()
  blocks = re.findall(r"<!-- snippet -->\n```python\n(.*?)```", text, re.S)
  assert len(blocks) == 1
  namespace = {}
  exec(compile(blocks[0], "README.md", "exec"), namespace)  # pylint: disable=exec-used
  assert namespace["iwae_B"].shape == (16,)
  assert float(namespace["iwae_B"].mean()) >= float(namespace["terms"].elbo.mean()) - 1.0
