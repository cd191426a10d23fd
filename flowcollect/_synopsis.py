"""The command line's synopsis, written from the CLI itself (typer's command tree).

docs/cli.md carries it between two marker lines; ``tests/cli/test_synopsis.py`` fails when the
two differ, so an option added to a command without the page is caught. Regenerate with::

    python -m flowcollect._synopsis --write docs/cli.md

(no argument prints it; ``--check FILE`` exits 1 when FILE's copy is stale).
"""

from __future__ import annotations

import enum
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

__all__ = ["BEGIN", "END", "replaced", "synopsis"]

BEGIN = "<!-- synopsis: generated from the CLI by `python -m flowcollect._synopsis --write docs/cli.md` -->"
END = "<!-- end of synopsis -->"
_WIDTH = 110
_MODULE = "python -m flowcollect._synopsis"


def _value_metavar(param: Any) -> str:
    if param.metavar:
        return str(param.metavar)
    annotation = param.type_descriptor.annotation
    inner = getattr(annotation, "__args__", None)
    kind = inner[0] if inner else annotation
    if isinstance(kind, type) and issubclass(kind, enum.Enum):
        return "|".join(str(member.value) for member in kind)
    return str(param.name).upper()


def _piece(param: Any) -> str | None:
    if param.hidden:
        return None
    if param.param_type_name == "argument":
        text = str(param.metavar or param.name.upper())
        return f"{text} ..." if param.multiple or param.nargs == -1 else text
    longs = [o for o in param.opts if o.startswith("--")]
    name = longs[0] if longs else param.opts[0]
    text = name if param.is_flag else f"{name} {_value_metavar(param)}"
    if param.multiple:
        text += " ..."
    return text if param.required else f"[{text}]"


def _commands(command: Any, path: tuple[str, ...]) -> Iterator[tuple[tuple[str, ...], Any]]:
    sub = getattr(command, "commands", None)
    if sub is None:
        yield path, command
        return
    for name, child in sub.items():  # in the order they were added: the order of --help
        if not child.hidden:
            yield from _commands(child, (*path, name))


def synopsis() -> str:
    """One entry per command (sub-commands of ``group`` included), wrapped under its first
    option: every argument and option the CLI accepts except ``--help``."""
    import typer.main

    from flowcollect.cli import app

    root = typer.main.get_command(app)
    entries = list(_commands(root, ()))
    width = max(len(" ".join(path)) for path, _ in entries)
    lines: list[str] = []
    for path, command in entries:
        head = f"flowcollect {' '.join(path).ljust(width)} "
        pieces = [p for p in (_piece(param) for param in command.params) if p]
        # Wrap between pieces only, never inside one ("[--context CONTEXT ...]" stays whole).
        rows: list[str] = []
        for piece in pieces:
            if rows and len(head) + len(rows[-1]) + 1 + len(piece) <= _WIDTH:
                rows[-1] += " " + piece
            else:
                rows.append(piece)
        lines.append((head + (rows[0] if rows else "")).rstrip())
        lines.extend(" " * len(head) + row for row in rows[1:])
    return "\n".join(lines) + "\n"


def replaced(page: str, text: str) -> str:
    """``page`` with the block between the markers set to ``text`` (in a ``sh`` fence)."""
    try:
        start = page.index(BEGIN) + len(BEGIN)
        end = page.index(END, start)
    except ValueError:
        raise ValueError(f"the page has no synopsis markers ({BEGIN!r} ... {END!r})") from None
    return page[:start] + "\n```sh\n" + text + "```\n" + page[end:]


def main(argv: Sequence[str]) -> int:
    if not argv:
        sys.stdout.write(synopsis())
        return 0
    if len(argv) == 2 and argv[0] in ("--write", "--check"):
        path = Path(argv[1])
        page = path.read_text(encoding="utf-8")
        fresh = replaced(page, synopsis())
        if argv[0] == "--check":
            if fresh != page:
                sys.stderr.write(f"{path}: the synopsis is stale; run {_MODULE} --write {path}\n")
                return 1
            return 0
        path.write_text(fresh, encoding="utf-8")
        return 0
    sys.stderr.write("usage: python -m flowcollect._synopsis [--write FILE | --check FILE]\n")
    return 2


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
