"""Every code block of README.md and docs/*.md runs, so the docs cannot drift from the code.

How blocks run (each Markdown file in a fresh temporary folder holding a link to sample_checkpoints/,
so relative sample paths work and every output lands in the temporary folder):
- ```python blocks: executed in order, in one namespace per file (a later block may use an earlier one's
  names or files);
- ```bash / sh / shell / console blocks: each command (`\\` continuations joined, `#` comments
  dropped, `a && b` split) is run: `deltaspec …` in-process through its click CLI, which must exit 0
  within LIMIT_S seconds; `pip install …` is taken as done (the test environment is installed). Any
  other command fails the test until the block is marked.
- other blocks (json, text, untagged) are listings, not run.
A block that cannot run in a test (long training, torchrun on many nodes, Hub downloads, a snippet
that needs your own model) is marked, visibly and deliberately, by an HTML comment on the line(s)
right before it:  <!-- docs-test: skip: <why> -->   (the reason is required).
New Markdown files in docs/ and new blocks are picked up without touching this file.
"""
from __future__ import annotations

import re
import shlex
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
RUN = {"python": "python", "py": "python", "bash": "bash", "sh": "bash", "shell": "bash", "console": "bash"}
SKIP = re.compile(r"<!--\s*docs-test:\s*skip\s*(?::\s*(?P<why>.*?))?\s*-->")


def blocks(path: Path) -> list[dict]:
    """Fenced code blocks: {lang, code, line, skip (the reason or None), marked (a skip marker without a reason)}."""
    lines = path.read_text().splitlines()
    out, i = [], 0
    while i < len(lines):
        m = re.match(r"^(\s*)(```+|~~~+)\s*([\w+-]*)", lines[i])
        if not m:
            i += 1
            continue
        fence, lang, start = m.group(2), m.group(3).lower(), i
        j = i + 1
        while j < len(lines) and not lines[j].strip().startswith(fence):
            j += 1
        skip, k = None, start - 1  # the HTML comments right before the fence (blank lines allowed)
        while k >= 0 and (not lines[k].strip() or lines[k].strip().startswith("<!--")):
            s = SKIP.search(lines[k])
            if s:
                skip = s.group("why") or ""
            k -= 1
        out.append({"lang": lang, "code": "\n".join(lines[start + 1: j]), "line": start + 1, "skip": skip})
        i = j + 1
    return out


def commands(code: str) -> list[list[str]]:
    """Shell commands of a bash block: continuations joined, comments dropped, `&&` split."""
    joined = re.sub(r"\\\n\s*", " ", code)
    out = []
    for line in joined.splitlines():
        line = line.strip()
        if line.startswith("$ "):
            line = line[2:]
        for part in re.split(r"\s&&\s", line):
            words = shlex.split(part, comments=True)
            if words:
                out.append(words)
    return out


LIMIT_S = 120  # per command: a block that takes longer belongs behind a skip marker


def _too_long(signum, frame):
    raise TimeoutError(f"a docs command ran longer than {LIMIT_S} s: mark its block with "
                       "<!-- docs-test: skip: <why> -->")


def run_command(words: list[str], where: str) -> None:
    import signal

    from click.testing import CliRunner

    from deltaspec_cli.main import cli

    if words[:2] == ["pip", "install"]:
        return  # the test environment is the installed one
    if words[0] != "deltaspec":
        pytest.fail(f"{where}: `{' '.join(words)}` cannot run in the docs test; only `deltaspec …` commands run. "
                    "Mark the block with <!-- docs-test: skip: <why> --> on the line before it.")
    timed = hasattr(signal, "SIGALRM")
    if timed:
        old = signal.signal(signal.SIGALRM, _too_long)
        signal.alarm(LIMIT_S)
    try:
        r = CliRunner().invoke(cli, words[1:], catch_exceptions=False)
    finally:
        if timed:
            signal.alarm(0)
            signal.signal(signal.SIGALRM, old)
    assert r.exit_code == 0, f"{where}: `{' '.join(words)}` exited {r.exit_code}:\n{r.output[-2000:]}"


@pytest.mark.parametrize("doc", DOCS, ids=[str(d.relative_to(ROOT)) for d in DOCS])
def test_code_blocks_run(doc, tmp_path, monkeypatch):
    import matplotlib

    matplotlib.use("Agg")
    (tmp_path / "sample_checkpoints").symlink_to(ROOT / "sample_checkpoints", target_is_directory=True)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["docs"])
    inputs = lambda: sorted((str(p), p.stat().st_mtime_ns) for p in (ROOT / "sample_checkpoints").rglob("*"))
    before = inputs()
    namespace: dict = {"__name__": "__docs__"}
    ran = 0
    for b in blocks(doc):
        where = f"{doc.relative_to(ROOT)}:{b['line']}"
        if b["skip"] is not None or b["lang"] not in RUN:
            continue
        if RUN[b["lang"]] == "python":
            exec(compile(b["code"], where, "exec"), namespace)
        else:
            for words in commands(b["code"]):
                run_command(words, where)
        ran += 1
    assert ran or not any(b["lang"] in RUN and b["skip"] is None for b in blocks(doc))
    assert inputs() == before  # nothing written into the inputs


def test_skip_markers_are_deliberate():
    """Every skip marker names its reason and sits right before a code block; every README run is real."""
    for doc in DOCS:
        text = doc.read_text()
        marked = [b for b in blocks(doc) if b["skip"] is not None]
        assert len(marked) == len(SKIP.findall(text)), f"{doc.name}: a docs-test marker is not right before a block"
        for b in marked:
            assert b["skip"].strip(), f"{doc.name}:{b['line']}: say why the block is skipped"
    readme = blocks(ROOT / "README.md")
    assert sum(b["lang"] in RUN and b["skip"] is None for b in readme) >= 4


def test_harness_parses_what_it_runs(tmp_path):
    code = "deltaspec compare a b \\\n    --base c   # a comment\npip install x && deltaspec info 'd e'\n"
    assert commands(code) == [["deltaspec", "compare", "a", "b", "--base", "c"], ["pip", "install", "x"],
                              ["deltaspec", "info", "d e"]]
    doc = tmp_path / "probe.md"
    doc.write_text("text\n<!-- docs-test: skip: long -->\n\n```bash\nx\n```\n```python\nprint(1)\n```\n")
    assert [(b["lang"], b["skip"], b["code"]) for b in blocks(doc)] == [("bash", "long", "x"),
                                                                       ("python", None, "print(1)")]
