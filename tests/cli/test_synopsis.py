"""docs/cli.md's synopsis is the command line's own: written from typer's command tree.

It once missed every group option, the simulator's modes and the ``group`` command; comparing
the page with what the CLI accepts makes an option added without the page a failing test.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from flowcollect._synopsis import BEGIN, END, replaced, synopsis
from tests.cli.conftest import REPO

PAGE = REPO / "docs" / "cli.md"


def test_the_synopsis_in_docs_cli_md_is_the_clis_own() -> None:
    page = PAGE.read_text(encoding="utf-8")
    assert replaced(page, synopsis()) == page, (
        "docs/cli.md's synopsis is stale: run python -m flowcollect._synopsis --write docs/cli.md"
    )


def test_the_synopsis_names_every_command_and_option() -> None:
    text = synopsis()
    for command in ("run", "check", "plan", "simulate", "group status", "group pause", "group resume"):
        assert re.search(rf"^flowcollect {command} ", text, re.MULTILINE), command
    for option in ("--group", "--member", "--label", "--pin", "--group-ttl", "--opcua", "--serial", "--rtu"):
        assert f"[{option}" in text or f" {option} " in text, option
    # A required option is shown without brackets; repeatable ones say so.
    assert re.search(r"^flowcollect group status +--group etcd://", text, re.MULTILINE)
    assert "[--context CONTEXT ...]" in text
    assert all(len(line) <= 110 for line in text.splitlines())


def test_a_stale_page_is_reported_and_rewritten(tmp_path: Path) -> None:
    page = tmp_path / "cli.md"
    page.write_text(f"# cli\n\n{BEGIN}\n```sh\nflowcollect run PIPELINE\n```\n{END}\n\nmore\n")

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "flowcollect._synopsis", *args]
        return subprocess.run(command, capture_output=True, text=True, check=False, cwd=REPO, timeout=60)

    stale = run("--check", str(page))
    assert stale.returncode == 1
    assert "the synopsis is stale" in stale.stderr
    written = run("--write", str(page))
    assert written.returncode == 0, written.stderr
    text = page.read_text(encoding="utf-8")
    assert "--group-ttl" in text and text.endswith(f"{END}\n\nmore\n")
    fresh = run("--check", str(page))
    assert fresh.returncode == 0, fresh.stderr
