"""Configuration reload: a valid file goes to the table source, an invalid one is logged and ignored,
the watcher reloads on a changed modification time or size, and reloads never overlap."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import structlog
from structlog.testing import capture_logs

from gateway import reloader as reloader_module
from gateway.config import OffloadConfig, load_config
from gateway.reloader import ConfigReloader

INVALID = "models: [ {name: chat, task: nope} ]\n"


def config_text(name: str) -> str:
    """A valid configuration with one chat model called ``name``."""
    return f"models:\n  - name: {name}\n    task: chat\n    engine: {{url: 'http://127.0.0.1:9001'}}\n"


class RecordingSource:
    """Stands in for the table source: records each configuration, optionally held until released."""

    def __init__(self) -> None:
        self.configs: list[OffloadConfig] = []
        self.active = 0
        self.most_active = 0
        self.hold: asyncio.Event | None = None

    async def rebuild(self, config: OffloadConfig) -> None:
        self.active += 1
        self.most_active = max(self.most_active, self.active)
        try:
            if self.hold is not None:
                await self.hold.wait()
            await asyncio.sleep(0)  # a real rebuild awaits (DNS, probes): let others run meanwhile
            self.configs.append(config)
        finally:
            self.active -= 1

    def names(self) -> list[list[str]]:
        return [[m.name for m in c.models] for c in self.configs]


async def until(predicate: Callable[[], bool], what: str, timeout: float = 5.0) -> None:
    """Poll ``predicate`` on the event loop until true; fail after ``timeout`` seconds."""
    try:
        async with asyncio.timeout(timeout):
            while not predicate():  # noqa: ASYNC110 - what is polled is plain state, not an event
                await asyncio.sleep(0.005)
    except TimeoutError:
        raise AssertionError(f"timed out after {timeout} s waiting for {what}") from None


def write(path: Path, text: str, mtime_ns: int | None = None) -> os.stat_result:
    """Write the file (and set its modification time) at once, with no await for a watcher to run
    in between; return its new stat."""
    path.write_text(text)
    if mtime_ns is not None:
        os.utime(path, ns=(mtime_ns, mtime_ns))
    return path.stat()


@pytest.fixture
def path(tmp_path: Path) -> Path:
    file = tmp_path / "offload.yaml"
    write(file, config_text("first"))
    return file


@pytest.fixture
def source() -> RecordingSource:
    return RecordingSource()


@pytest.fixture
def logs(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[dict[str, Any]]]:
    """What the reloader logs. Its module logger is replaced by a fresh one: a logger that another
    test's ``configure_logging`` cached would not be captured."""
    with capture_logs() as captured:
        monkeypatch.setattr(reloader_module, "_log", structlog.get_logger("offload.reload"))
        yield captured


@asynccontextmanager
async def watching(reloader: ConfigReloader, interval: float) -> AsyncIterator[Callable[[], int]]:
    """Run ``reloader.watch(interval)``; yield a function giving how many times it checked the file."""
    checks = 0
    stamp = reloader._file_stamp

    def counted() -> tuple[int, int] | None:
        nonlocal checks
        checks += 1
        return stamp()

    reloader._file_stamp = counted  # type: ignore[method-assign]
    task = asyncio.create_task(reloader.watch(interval))
    try:
        yield lambda: checks
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task  # cancelled while waiting: it had not failed


async def test_valid_file_is_reloaded_into_the_source(
    path: Path, source: RecordingSource, logs: list[dict[str, Any]]
) -> None:
    reloader = ConfigReloader(path, source)  # type: ignore[arg-type]
    write(path, config_text("second"))

    assert await reloader.reload() is True

    assert source.configs == [load_config(path)]
    assert source.names() == [["second"]]
    assert [e["event"] for e in logs] == ["configuration reloaded"]
    assert logs[0]["models"] == ["second"]


async def test_invalid_file_is_rejected_logged_and_never_reaches_the_source(
    path: Path, source: RecordingSource, logs: list[dict[str, Any]]
) -> None:
    reloader = ConfigReloader(path, source)  # type: ignore[arg-type]
    write(path, INVALID)

    assert await reloader.reload() is False

    assert source.configs == []
    assert source.most_active == 0
    [entry] = logs
    assert entry["log_level"] == "error"
    assert "reload rejected" in entry["event"]
    assert "models.0.task" in entry["reason"]  # says what is wrong with the file


async def test_missing_file_is_rejected_and_never_reaches_the_source(
    path: Path, source: RecordingSource, logs: list[dict[str, Any]]
) -> None:
    reloader = ConfigReloader(path, source)  # type: ignore[arg-type]
    path.unlink()  # noqa: ASYNC240 - a local file in a temporary directory

    assert await reloader.reload() is False

    assert source.configs == []
    assert [e["log_level"] for e in logs] == ["error"]


async def test_watch_does_nothing_while_the_file_is_unchanged(path: Path, source: RecordingSource) -> None:
    reloader = ConfigReloader(path, source)  # type: ignore[arg-type]

    async with watching(reloader, 0.01) as checks:
        await until(lambda: checks() >= 5, "five checks of the file")

    assert source.configs == []


@pytest.mark.parametrize("change", ["modification time", "size"])
async def test_watch_reloads_once_when_the_modification_time_or_size_changes(
    path: Path, source: RecordingSource, change: str
) -> None:
    before = write(path, config_text("first"))  # as the fixture wrote it: its stat is wanted
    reloader = ConfigReloader(path, source)  # type: ignore[arg-type]

    async with watching(reloader, 0.01) as checks:
        await until(lambda: checks() >= 2, "the watcher to run")
        if change == "size":  # the same time, another size
            expected = "a-longer-name"
            after = write(path, config_text(expected), mtime_ns=before.st_mtime_ns)
        else:  # as long as "first": only the time tells
            expected = "fresh"
            after = write(path, config_text(expected), mtime_ns=before.st_mtime_ns + 1_000_000_000)
        assert (after.st_mtime_ns == before.st_mtime_ns) == (change == "size")
        assert (after.st_size == before.st_size) == (change == "modification time")

        await until(lambda: len(source.configs) == 1, "the changed file to be reloaded")
        seen = checks()
        await until(lambda: checks() >= seen + 5, "five more checks of the file")

    assert source.names() == [[expected]]  # once: the new stamp is the one it compares with now


async def test_watch_keeps_watching_after_an_invalid_file(
    path: Path, source: RecordingSource, logs: list[dict[str, Any]]
) -> None:
    reloader = ConfigReloader(path, source)  # type: ignore[arg-type]

    async with watching(reloader, 0.01) as checks:
        write(path, INVALID)
        await until(lambda: any("reload rejected" in e["event"] for e in logs), "the rejection")
        seen = checks()
        await until(lambda: checks() >= seen + 5, "five more checks of the file")
        rejections = [e for e in logs if "reload rejected" in e["event"]]
        assert len(rejections) == 1 and source.configs == []  # rejected once, not at every check

        write(path, config_text("fixed"))
        await until(lambda: len(source.configs) == 1, "the fixed file to be reloaded")

    assert source.names() == [["fixed"]]


async def test_concurrent_reloads_run_one_after_the_other(path: Path, source: RecordingSource) -> None:
    reloader = ConfigReloader(path, source)  # type: ignore[arg-type]
    source.hold = asyncio.Event()
    write(path, config_text("second"))

    first = asyncio.create_task(reloader.reload())
    await until(lambda: source.active == 1, "the first reload to reach the source")
    write(path, config_text("third"))
    second = asyncio.create_task(reloader.reload())  # e.g. SIGHUP while the watcher reloads
    for _ in range(20):  # let the second reload run as far as it can: it must wait for the first
        await asyncio.sleep(0)
    assert source.active == 1 and source.configs == []

    source.hold.set()
    assert await asyncio.gather(first, second) == [True, True]

    assert source.most_active == 1
    assert source.names() == [["second"], ["third"]]
