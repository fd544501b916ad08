"""Keeps the results shown in ``benchmarks/README.md`` the ones the commands produced.

A benchmark writes its summary between ``<!-- results:NAME:begin -->`` and ``<!-- results:NAME:end -->``
in the README, so the tables there are never typed in by hand.
"""

from __future__ import annotations

from pathlib import Path

README = Path(__file__).parent / "README.md"
RESULTS = Path(__file__).parent / "results"


def update_section(name: str, text: str, readme: Path | None = None) -> bool:
    """Replace section ``name`` of ``readme`` (default: the benchmarks README) with ``text``; False
    (nothing written) without its markers."""
    readme = readme or README
    begin, end = f"<!-- results:{name}:begin -->", f"<!-- results:{name}:end -->"
    content = readme.read_text()
    start, stop = content.find(begin), content.find(end)
    if start < 0 or stop < start:
        return False
    readme.write_text(content[: start + len(begin)] + "\n" + text.strip() + "\n" + content[stop:])
    return True


def publish(name: str, out: Path, lines: list[str]) -> str:
    """Write ``lines`` to ``out``.md; a standard run (``out`` is ``results/<name>``) also updates the
    README's section ``name``. Returns the text."""
    text = "\n".join(lines)
    out.with_suffix(".md").write_text(text + "\n")
    if out == RESULTS / name:
        update_section(name, text)
    return text
