"""``python -m flowcollect``: the same as the ``flowcollect`` command."""

from __future__ import annotations

from flowcollect.cli import main

if __name__ == "__main__":
    main()
