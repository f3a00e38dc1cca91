"""Running an experiments script as a user does (``python -m experiments.<script> --quick``) and reading the
checks report it prints; shared by the slow script tests."""

from __future__ import annotations

import os
import re
import subprocess
import sys

from runs import ROOT

MACHINE = re.compile(r"\d{4}-\d{2}-\d{2} \d{2}:\d{2} UTC · .+, \d+ cores \(AVX-512 BF16: (yes|no), AMX: (yes|no).*"
                     r"torch \S+ \(1 threads\).* · commit ")


def run_quick(module: str, *options: str) -> subprocess.CompletedProcess:
    """``python -m <module> --quick --threads 1 <options>`` from the repository root; asserts it exits 0."""
    command = [sys.executable, "-m", module, "--quick", "--threads", "1", *options]
    result = subprocess.run(command, cwd=ROOT, env=dict(os.environ, OMP_NUM_THREADS="1"), capture_output=True,
                            text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    return result


def table(text: str) -> list[list[str]]:
    """Cells of every markdown table row of ``text`` (headers and separators left out)."""
    rows = [[cell.strip() for cell in line.strip().strip("|").split("|")] for line in text.splitlines()
            if line.startswith("| ")]
    return [row for row in rows[1:] if row != rows[0]]


def assert_checks_report(text: str, title: str, module: str, checks: int) -> None:
    """The shape every checks report shares (``experiments.lib.checks_report``)."""
    lines = text.splitlines()
    assert lines[0] == f"# {title}"
    assert MACHINE.match(lines[2]), lines[2]
    assert len(re.findall(r"^- \*\*(PASS|FAIL)\*\* ", text, re.M)) == checks
    assert re.search(rf"^Benchmark wall time \d+\.\d min\. Reproduce: `python -m {module} --quick ", text, re.M)


def quick_report(module: str, tmp_path, title: str, checks: int) -> str:
    """Run ``module --quick`` into ``tmp_path`` (runs under ``runs/``, the report ``results/<name>.md``), check that it
    printed the report and that the report has the shape of a checks report with ``checks`` checks; return its text."""
    out = tmp_path / "results" / f"{module.rpartition('.')[2]}.md"
    result = run_quick(module, "--work-dir", str(tmp_path / "runs"), "--out", str(out))
    text = out.read_text()
    assert text.strip() in result.stdout
    assert_checks_report(text, title, module, checks=checks)
    return text
