"""``python -m experiments.benchmarks.latents --quick``: the MNIST latent recipe's three commands (a toy autoencoder,
the encode, a toy latent DiT) and the same toy DiT on pixels; the report's table and its two checks are written.
Structure only: a toy run's FD says nothing. Four run.py launches: about 2 minutes on 2 busy cores."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from experiment_scripts import quick_report, table


@pytest.mark.slow
def test_latents_benchmark_quick(tmp_path: Path):
    text = quick_report("experiments.benchmarks.latents", tmp_path,
                        "Latent against pixel DiT on MNIST: the latent recipe", checks=2)
    rows = table(text)
    assert [row[0].split()[0] for row in rows] == ["latent", "pixel"]
    assert rows[0][1] == rows[1][1]  # equal optimizer steps
    for row in rows:
        assert re.fullmatch(r"[\d.e+]+ ± [\d.e+-]+", row[5]), row  # FD over the 3 seed sets
        assert float(row[2]) > 0 and float(row[4]) > 0, row  # samples/s, the command's wall time
    assert "to latents of shape (4, 7, 7)" in text and "The recipe's three commands" in text
