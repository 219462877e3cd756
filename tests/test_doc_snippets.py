"""Every shell and Python snippet of README.md and docs/ either runs here on the tests' tiny data or is
marked as something a test cannot run (the rules: DEVELOPERS.md, "Documentation").

A fenced block is a snippet when its info string is ``bash`` or ``python`` (``console``: a shell
transcript, ``$ `` lines are its commands); ``text``, ``yaml`` and ``json`` blocks are output, configs and schemas, and
a block without an info string is refused. A snippet is *run* unless the HTML comment on the line
before it marks it ``<!-- snippet: KIND note -->``, KIND one of ``MARKS``. A run snippet's paths of
the tiny data (``SUBSTITUTIONS``) become the session fixtures' and its outputs go to a temporary
folder; a shell snippet's commands must then all be ``metricattack`` commands (run in-process, exit
status 0); a Python snippet runs with ``images`` / ``references`` defined (4 gallery images of the
tiny set, each with its identity's probes). The output shown right after a snippet (a ``text``
block, or a Python snippet's trailing ``# ...`` comment lines) must match what it printed, line by
line, with every number a wildcard (lines naming a file are left out: the paths differ). A marked
snippet is still checked: every ``metricattack`` command in it parses with the real parser and
loads its ``--config`` with its overrides, and a Python snippet compiles and uses only public names
of ``ma``.
"""

from __future__ import annotations

import ast
import re
import shlex
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

import metricattack as ma
from metricattack.cli import build_parser, main

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]

MARKS = {
    "real-data": "needs a real dataset or another project's weights file",
    "gpu": "needs a GPU",
    "long": "minutes of CPU on synthetic data: the output shown was measured, the commands are parsed here",
    "module": "a module of the reader's own (its text, or commands that need one or a checkpoint made with one)",
    "install": "installs packages or runs make",
}
SNIPPET_LANGUAGES = {"bash", "console", "python"}
OTHER_LANGUAGES = {"text", "yaml", "json"}
MARKER = re.compile(r"^<!-- snippet: (?P<kind>[a-z-]+)(?P<note>.*?) -->$")


@dataclass(frozen=True)
class Snippet:
    page: Path
    line: int  # of the opening fence, 1-based
    language: str
    text: str
    mark: str | None
    output: str | None  # the text block right after it

    @property
    def where(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"


def fenced_blocks(page: Path) -> Iterator[tuple[int, str, str, str]]:
    """``(line, info string, text, the line before)`` of every fenced block of ``page``."""
    lines = page.read_text(encoding="utf-8").split("\n")
    i = 0
    while i < len(lines):
        opening = re.match(r"^```(\S*)\s*$", lines[i])
        if opening:
            end = next(j for j in range(i + 1, len(lines)) if lines[j].startswith("```"))
            before = next((lines[k] for k in range(i - 1, -1, -1) if lines[k].strip()), "")
            yield i + 1, opening.group(1), "\n".join(lines[i + 1 : end]), before
            i = end
        i += 1


def snippets() -> list[Snippet]:
    found = []
    for page in PAGES:
        blocks = list(fenced_blocks(page))
        for index, (line, info, text, before) in enumerate(blocks):
            if info not in SNIPPET_LANGUAGES:
                continue
            marker = MARKER.match(before.strip())
            after = blocks[index + 1] if index + 1 < len(blocks) else None
            lines_between = page.read_text(encoding="utf-8").split("\n")[line + text.count("\n") + 1 : after[0] - 1] if after else []
            output = after[2] if after and after[1] == "text" and not any(s.strip() for s in lines_between) else None
            found.append(Snippet(page, line, info, text, marker.group("kind") if marker else None, output))
    return found


SNIPPETS = snippets()


def shell_commands(snippet: Snippet) -> list[tuple[dict[str, str], list[str]]]:
    """``(environment, argv)`` of each command: continuation lines joined, comments dropped."""
    text = snippet.text
    if snippet.language == "console":
        text = "\n".join(line[2:] for line in text.split("\n") if line.startswith("$ "))
    commands = []
    for line in text.replace("\\\n", " ").split("\n"):
        words = shlex.split(line, comments=True)
        env = {}
        while words and re.fullmatch(r"[A-Z_]+=\S*", words[0]):
            key, value = words.pop(0).split("=", 1)
            env[key] = value
        if words:
            commands.append((env, words))
    return commands


def metricattack_argv(argv: list[str]) -> list[str] | None:
    """The arguments after ``metricattack`` (also ``python -m metricattack``, ``torchrun ... -m metricattack``), else None."""
    if argv[0] == "metricattack":
        return argv[1:]
    if "-m" in argv and argv[argv.index("-m") + 1 : argv.index("-m") + 2] == ["metricattack"]:
        return argv[argv.index("-m") + 2 :]
    return None


def check_config(args: object) -> None:
    """Load a command's ``--config`` with its overrides, as the command does (no work)."""
    from metricattack.benchmark.config import load_benchmark_config
    from metricattack.defense.config import load_defense_config
    from metricattack.training import load_train_config

    command, config = getattr(args, "command", None), getattr(args, "config", None)
    if config is None or not str(config).startswith("configs/"):  # a config of the reader's own (my.yaml) is not here
        return
    overrides = list(getattr(args, "overrides", []) or [])
    if command == "train":
        load_train_config(ROOT / config, overrides)
    elif command == "benchmark":
        only = [o for o in (args.only or "").split(",") if o]  # type: ignore[attr-defined]
        load_benchmark_config(ROOT / config, overrides, only)
    elif command == "defend":
        load_defense_config(ROOT / config, [*overrides, *([f"method={args.method}"] if args.method else [])])  # type: ignore[attr-defined]


def test_every_fenced_block_says_what_it_is() -> None:
    unknown = [
        f"{page.relative_to(ROOT)}:{line} ```{info}"
        for page in PAGES
        for line, info, _, _ in fenced_blocks(page)
        if info not in SNIPPET_LANGUAGES | OTHER_LANGUAGES
    ]
    assert unknown == [], f"give each block an info string of {sorted(SNIPPET_LANGUAGES | OTHER_LANGUAGES)}"
    bad_marks = [s.where for s in SNIPPETS if s.mark is not None and s.mark not in MARKS]
    assert bad_marks == [], f"unknown snippet marks (known: {sorted(MARKS)})"


@pytest.mark.parametrize("snippet", [s for s in SNIPPETS if s.mark is not None], ids=lambda s: s.where)
def test_marked_snippet_parses(snippet: Snippet, monkeypatch: pytest.MonkeyPatch) -> None:
    """A snippet no test runs still uses commands, options, config keys and public names that exist."""
    monkeypatch.chdir(ROOT)
    if snippet.language == "python":
        tree = ast.parse(snippet.text)
        used = {node.attr for node in ast.walk(tree) if isinstance(node, ast.Attribute) and getattr(node.value, "id", None) == "ma"}
        assert sorted(used - set(ma.__all__)) == [], f"{snippet.where}: not public names of metricattack"
        return
    parser = build_parser()
    for _, argv in shell_commands(snippet):
        args = metricattack_argv(argv)
        if args is None or "..." in args:
            continue
        args = [re.sub(r"\$\w+", "ifgsm", a) for a in args]  # the loop variable of a for loop over methods
        check_config(parser.parse_args(args))


# --- snippets that run -------------------------------------------------------------------------


def substitutions(dataset: Path, checkpoint: Path, folder: Path) -> list[tuple[re.Pattern[str], str]]:
    """The tiny data's paths in the docs -> the session fixtures (whole path components only); the
    checkpoint is copied into ``folder`` first, since a learned metric is written beside it."""
    folder.mkdir()
    for source in (checkpoint, checkpoint.with_suffix(".json")):
        shutil.copyfile(source, folder / source.name)
    checkpoint = folder / checkpoint.name
    table = {"data/tiny": dataset, "data/synth": dataset, "model/model.safetensors": checkpoint, "runs/r18/model.safetensors": checkpoint}
    return [(re.compile(rf"(?<![\w/.-]){re.escape(doc)}(?![\w/.-])"), str(real)) for doc, real in table.items()]


def substitute(text: str, table: list[tuple[re.Pattern[str], str]]) -> str:
    for pattern, real in table:
        text = pattern.sub(real, text)
    return text


NUMBER = re.compile(r"-?\d+(?:[.,]\d+)*")
PATH = re.compile(r"[A-Za-z_][\w.-]*/[\w.-]")


def expected_lines(snippet: Snippet) -> list[str]:
    """The output the page shows for ``snippet``, lines naming files left out."""
    if snippet.output is not None:
        shown = snippet.output.split("\n")
    elif snippet.language == "python":
        code = snippet.text.rstrip().split("\n")
        tail = []
        while code and code[-1].startswith("# "):
            tail.insert(0, code.pop()[2:])
        shown = tail
    else:
        shown = []
    return [line for line in shown if line.strip() and not PATH.search(NUMBER.sub("0", line)) and "..." not in line]


def check_output(snippet: Snippet, printed: str) -> None:
    masked = {NUMBER.sub("#", line).strip() for line in printed.split("\n")}
    missing = [line for line in expected_lines(snippet) if NUMBER.sub("#", line).strip() not in masked]
    assert missing == [], (
        f"{snippet.where}: the page shows lines the snippet did not print:\n" + "\n".join(missing) + f"\n--- printed:\n{printed}"
    )


@pytest.fixture(scope="module")
def tiny_batch(tiny_dataset_root: Path, tiny_model_checkpoint: Path) -> dict[str, object]:
    """``images`` (4 gallery images of the tiny set) and ``references`` (their identities' probes)."""
    model = ma.load_model(str(tiny_model_checkpoint))
    data = ma.load_dataset("folder", str(tiny_dataset_root))
    gallery = [r for r in data.gallery if r.pid > 0][:4]
    probes = ma.extract_features(model, data.query, progress=False)
    q_pids = torch.tensor([r.pid for r in data.query])
    return {"images": torch.stack([ma.read_image(r.path) for r in gallery]), "references": [probes[q_pids == r.pid] for r in gallery]}


RUN = [s for i, s in enumerate(SNIPPETS) if s.mark is None and all(s.text != t.text for t in SNIPPETS[:i])]  # once per text


@pytest.mark.parametrize("snippet", RUN, ids=lambda s: s.where)
def test_snippet_runs(
    snippet: Snippet,
    tiny_dataset_root: Path,
    tiny_model_checkpoint: Path,
    tiny_batch: dict[str, object],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    table = substitutions(tiny_dataset_root, tiny_model_checkpoint, tmp_path / "checkpoint")
    monkeypatch.chdir(tmp_path)
    if snippet.language == "python":
        namespace = dict(tiny_batch)
        exec(compile(substitute(snippet.text, table), snippet.where, "exec"), namespace)  # noqa: S102 - the docs' own example
        adv, images, eps = namespace.get("adv"), namespace.get("images"), re.search(r"MetricAttack\(model, eps=(\d+)\)", snippet.text)
        if isinstance(adv, torch.Tensor) and isinstance(images, torch.Tensor) and eps:  # MetricAttack's result: in [0,1], within eps
            assert adv.shape == images.shape and float((adv - images).abs().max()) <= int(eps.group(1)) / 255 + 1e-6
            assert 0 <= float(adv.min()) and float(adv.max()) <= 1
    else:
        for env, argv in shell_commands(snippet):
            args = metricattack_argv(argv)
            assert args is not None, f"{snippet.where}: {' '.join(argv)} is not a metricattack command: mark the snippet (MARKS)"
            for key, value in env.items():
                monkeypatch.setenv(key, value)
            code = main([substitute(a, table) for a in args])
            assert code == 0, f"{snippet.where}: metricattack {' '.join(args)} exited {code}"
    printed = capsys.readouterr().out
    assert printed.strip() or snippet.language == "python", f"{snippet.where}: the commands printed nothing"
    check_output(snippet, printed)
