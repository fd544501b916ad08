"""Keeps the results shown in ``benchmarks/README.md`` the ones the commands produced.

A benchmark writes its summary between ``<!-- results:NAME:begin -->`` and ``<!-- results:NAME:end -->``
in the README, so the tables there are never typed in by hand.
"""

from __future__ import annotations

from pathlib import Path

README = Path(__file__).parent / "README.md"


def update_section(name: str, text: str, readme: Path = README) -> bool:
    """Replace section ``name`` of ``readme`` with ``text``; False (nothing written) without its markers."""
    begin, end = f"<!-- results:{name}:begin -->", f"<!-- results:{name}:end -->"
    content = readme.read_text()
    start, stop = content.find(begin), content.find(end)
    if start < 0 or stop < start:
        return False
    readme.write_text(content[: start + len(begin)] + "\n" + text.strip() + "\n" + content[stop:])
    return True
