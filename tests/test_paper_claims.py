"""Config comments claim only what the papers say: every "paper" claim cites a listed sentence.

The rule (docs/paper-sentences.yaml, DEVELOPERS.md): a comment line of a shipped config that
mentions a paper either cites a sentence of docs/paper-sentences.yaml as ``[@key]`` or says in
words that the paper does not give the value (``our choice``, ``not in the paper``, ...). Quotes
of a paper whose text is readable here are checked word for word against it.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).parents[1]
SENTENCES = REPO / "docs" / "paper-sentences.yaml"
PAPER_TEXTS = Path(os.environ.get("METRICATTACK_PAPER_TEXTS", "/work/shared/paper"))

# the word "paper(s)", not inside a path or a name (configs/paper/..., paper-market1501)
MENTION = re.compile(r"(?<![/\w-])papers?(?![/\w-])", re.IGNORECASE)
CITATION = re.compile(r"\[@([a-z0-9-]+)\]")
# a line that says what a paper does NOT give needs no citation (it claims nothing of the paper)
DISCLAIMERS = ("our choice", "not in the", "does not", "names no", "gives none", "names neither", "not taken from", "beyond the paper")


def _sentences() -> dict:
    return yaml.safe_load(SENTENCES.read_text(encoding="utf-8"))


def _comment_lines() -> list[tuple[str, int, str]]:
    """(file, line number, comment text) of every comment in the shipped configs."""
    found = []
    for path in sorted(REPO.glob("configs/**/*.yaml")):
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if "#" in line:
                found.append((str(path.relative_to(REPO)), number, line[line.index("#") :]))
    return found


def _normalise(text: str) -> str:
    """Whitespace collapsed and Markdown emphasis dropped (the paper's text marks B1 as **B1**)."""
    return " ".join(text.replace("*", "").split())


def test_every_paper_claim_in_a_config_cites_a_sentence_or_disclaims() -> None:
    unsupported = [
        f"{file}:{number}: {comment}"
        for file, number, comment in _comment_lines()
        if MENTION.search(comment) and not CITATION.search(comment) and not any(d in comment.lower() for d in DISCLAIMERS)
    ]
    assert not unsupported, "comments that attribute something to a paper without [@key] (docs/paper-sentences.yaml):\n" + "\n".join(
        unsupported
    )


def test_every_citation_names_a_listed_sentence() -> None:
    keys = set(_sentences()["sentences"])
    cited = {(file, number, key) for file, number, comment in _comment_lines() for key in CITATION.findall(comment)}
    assert cited, "no config cites a sentence"
    unknown = sorted(f"{file}:{number}: [@{key}]" for file, number, key in cited if key not in keys)
    assert not unknown, f"citations of sentences not in {SENTENCES.name}: {unknown}"


def test_sentences_are_quotes_of_readable_texts_or_declared_paraphrases() -> None:
    data = _sentences()
    for key, entry in data["sentences"].items():
        paper = data["papers"][entry["paper"]]
        assert entry.get("where"), f"{key}: say where in the paper (section, table or figure)"
        assert ("quote" in entry) != ("paraphrase" in entry), f"{key}: exactly one of quote / paraphrase"
        # a paper with a text file is quoted (it can be checked); one without can only be paraphrased
        assert ("quote" in entry) == ("text" in paper), f"{key}: {'quote' if 'text' in paper else 'paraphrase'} expected"


def test_quotes_are_found_word_for_word_in_the_paper() -> None:
    data = _sentences()
    checked = 0
    for key, entry in data["sentences"].items():
        if "quote" not in entry:
            continue
        text_file = PAPER_TEXTS / data["papers"][entry["paper"]]["text"]
        if not text_file.is_file():
            continue
        assert _normalise(entry["quote"]) in _normalise(text_file.read_text(encoding="utf-8")), f"{key}: not found in {text_file}"
        checked += 1
    if not checked:
        pytest.skip(f"no paper text under {PAPER_TEXTS} (set METRICATTACK_PAPER_TEXTS to the folder holding it)")


def test_the_rule_catches_an_unsupported_claim() -> None:
    """The check itself: a bare claim fails, a citation or a disclaimer passes, paths do not count."""

    def flagged(comment: str) -> bool:
        return bool(MENTION.search(comment)) and not CITATION.search(comment) and not any(d in comment.lower() for d in DISCLAIMERS)

    assert flagged("# input 256x128 (paper)") and flagged("# the Mancs paper's network") and flagged("# their papers' recipes")
    assert not flagged("# 60 epochs [@bai-training] (the paper)") and not flagged("# 256x128 (the paper gives none)")
    assert not flagged("# Run: metricattack train --config configs/paper/market1501-b1.yaml") and not flagged("name: paper-market1501")
