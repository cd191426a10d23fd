"""``read_csv`` holds off the cyclic garbage collector while it builds, and only then.

The pause is the tag list's (its objects form no cycles, flowcollect/_bulk.py): after the call,
the collector is as the program left it, whether the list was read, refused or unreadable.
"""

from __future__ import annotations

import gc
from pathlib import Path

import pytest

from flowcollect import ConfigError
from flowcollect.readers import RandomDataReader
from flowcollect.tags import read_csv
from tests.conftest import set_gc


def _list(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "tags.csv"
    path.write_text("id,name,address,value_type,interval_ms\n" + body, encoding="utf-8")
    return path


@pytest.mark.usefixtures("gc_as_found")
@pytest.mark.parametrize("enabled", [True, False])
@pytest.mark.parametrize(
    ("body", "error"),
    [("1,a,sensor1,float,1000\n2,b,sensor2,int,500\n", False), ("1,a,sensor1,float,-5\n", True)],
    ids=["read", "refused"],
)
def test_the_collector_is_as_found_after_the_call(
    tmp_path: Path, enabled: bool, body: str, error: bool
) -> None:
    path = _list(tmp_path, body)
    seen: list[bool] = []

    class Watching(RandomDataReader):
        def validate(self, variable):  # type: ignore[no-untyped-def]
            seen.append(gc.isenabled())  # called while the rows are built
            super().validate(variable)

    set_gc(enabled)
    if error:
        with pytest.raises(ConfigError, match="row 2"):
            read_csv(path, reader=Watching())
    else:
        assert len(read_csv(path, reader=Watching())) == 2
        assert seen and not any(seen)  # paused while building
    assert gc.isenabled() is enabled


@pytest.mark.usefixtures("gc_as_found")
def test_an_unreadable_file_leaves_the_collector_on(tmp_path: Path) -> None:
    gc.enable()
    with pytest.raises(ConfigError, match="cannot be read"):
        read_csv(tmp_path / "missing.csv", reader="random")
    assert gc.isenabled()
