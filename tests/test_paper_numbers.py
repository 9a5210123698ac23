"""The papers' own evidence (reporting/paper_numbers.py): one entry or more for every claim, rendered as one cell."""
import subprocess
import sys

from pftlab.reporting import claims
from pftlab.reporting.paper_numbers import PAPER_EVIDENCE, paper_evidence_markdown

FIELDS = ("paper", "where", "setting", "reading")


def test_every_claim_has_evidence_with_the_four_fields():
    assert set(PAPER_EVIDENCE) == set(claims.CLAIM_TEXT)
    for key, entries in PAPER_EVIDENCE.items():
        assert entries, key
        for e in entries:
            assert set(e) == set(FIELDS), (key, e)
            assert all(isinstance(e[f], str) and e[f].strip() for f in FIELDS), (key, e)
            assert e["paper"] in ("Tajwar et al. 2024", "Song et al. 2024"), (key, e)


def test_markdown_renders_every_claim_as_one_cell():
    for key, entries in PAPER_EVIDENCE.items():
        cell = paper_evidence_markdown(key)
        assert cell.count("<br>") == len(entries) - 1
        assert "\n" not in cell and "|" not in cell.replace("\\|", "")
        for e in entries:
            assert f"*{e['paper']}, {e['where']}*: " in cell
    assert paper_evidence_markdown(8) == paper_evidence_markdown("8")
    assert paper_evidence_markdown("no such claim") == ""


def test_no_torch_import():
    code = "import sys, pftlab.reporting.paper_numbers; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
