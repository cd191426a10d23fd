"""Bring another collector's configuration over: ``import_telegraf`` (``flowcollect import telegraf``).

See docs/importing.md.
"""

from __future__ import annotations

from flowcollect.importers._cli import import_app
from flowcollect.importers._telegraf import ImportResult, import_telegraf

__all__ = ["ImportResult", "import_app", "import_telegraf"]
