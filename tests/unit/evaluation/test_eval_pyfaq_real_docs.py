"""pyfaq built from the real Debian documentation (installed by e2e/apt-install.sh when this user may): the
query and passage counts of shared/facts.md."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from agentfleet.evaluation import pyfaq

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def docs() -> Path:
    probe = pyfaq.DEFAULT_DOCS / "faq" / "general.rst.txt"
    res = subprocess.run(["bash", str(ROOT / "e2e" / "apt-install.sh"), pyfaq.DEBIAN_PACKAGE, str(probe)],
                         capture_output=True, text=True, timeout=600)
    if res.returncode != 0:
        pytest.skip(f"cannot install {pyfaq.DEBIAN_PACKAGE}: {res.stderr.strip()[-200:]}")
    return pyfaq.DEFAULT_DOCS


def test_pyfaq_2k_has_175_questions_and_2500_passages(docs):
    faq = pyfaq.build(docs)
    assert len(faq.queries) == 175
    assert faq.passages == 2500
    assert all(q.question.endswith("?") for q in faq.queries)
    assert all(len(q.gold.text.split()) >= 3 for q in faq.queries)
    assert all(12 <= len(p.text.split()) <= 160 for p in faq.distractors)
    assert len({p.path for p in faq.distractors} | {q.gold.path for q in faq.queries}) == 2500


def test_pyfaq_full_keeps_every_distractor(docs):
    faq = pyfaq.build(docs, size=None)
    # shared/facts.md counts 8,209 passages; this splitter finds 8,337 distractors (+175 gold) in 3.11.2's docs:
    # its heading detection or packing differs slightly from the measurement's, which does not change pyfaq-2k's
    # definition (175 gold + 2,325 distractors by sha1).
    assert len(faq.distractors) == faq.total_distractors
    assert 8000 <= faq.passages <= 8600
