"""Masking precision and recall over the seeded corpus (tests/unit/corpus/).

A leaf counts as *flagged* when masking changed it or reported a finding at its path.
Recall: seeded leaves flagged with their value gone. Precision: flagged leaves that were
seeded. The corpus is regenerated with ``python tests/unit/corpus/build_masking_corpus.py``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from keyturn.masking import ParameterMasker
from keyturn.masking.masker import format_path

CORPUS = json.loads((Path(__file__).parent / "corpus" / "masking_corpus.json").read_text())


@pytest.fixture(scope="module")
def masker() -> ParameterMasker:
    return ParameterMasker()


def _at(document, path):
    for segment in path:
        document = document[segment]
    return document


def _score(masker: ParameterMasker) -> dict:
    seeded = missed = false_positives = wrong_type = flagged_seeded = 0
    misses = []
    for document in CORPUS["documents"]:
        masked = masker.mask(document["payload"])
        found: dict[str, set[str]] = {}
        for finding in masked.findings:
            found.setdefault(finding.path, set()).add(finding.entity_type)
        for label in document["labels"]:
            before = _at(document["payload"], label["path"])
            after = _at(masked.parameters, label["path"])
            path = format_path(tuple(label["path"]))
            flagged = after != before or path in found
            if label["entity_type"] is None:
                false_positives += flagged
                continue
            seeded += 1
            if flagged and label["value"] not in after:
                flagged_seeded += 1
                wrong_type += label["entity_type"] not in found.get(path, set())
            else:
                missed += 1
                misses.append((label["entity_type"], path))
    return {
        "seeded": seeded,
        "recall": flagged_seeded / seeded,
        "precision": flagged_seeded / (flagged_seeded + false_positives),
        "false_positives": false_positives,
        "wrong_type": wrong_type,
        "misses": misses,
    }


def test_corpus_covers_every_seeded_kind():
    assert {
        "EMAIL_ADDRESS", "PHONE_NUMBER", "CREDIT_CARD", "IBAN_CODE", "US_SSN",
        "AWS_ACCESS_KEY", "SLACK_TOKEN", "JWT", "PRIVATE_KEY",
    } <= set(CORPUS["sensitive"])  # fmt: skip
    labelled = {
        label["value"] for document in CORPUS["documents"] for label in document["labels"] if label["entity_type"]
    }
    assert labelled == {v for values in CORPUS["sensitive"].values() for v in values}


def test_masking_finds_every_seeded_value_and_few_decoys(masker, capsys):
    score = _score(masker)
    with capsys.disabled():
        print(
            f"\nmasking corpus: {score['seeded']} seeded values, "
            f"recall {score['recall']:.3f}, precision {score['precision']:.3f} "
            f"({score['false_positives']} decoys flagged), "
            f"{score['wrong_type']} reported under another type"
        )
    assert score["misses"] == []
    assert score["recall"] == 1.0
    assert score["precision"] >= 0.95
    assert score["wrong_type"] == 0
