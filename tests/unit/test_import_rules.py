"""The layering rules (README, "Layout"), checked by import-linter and by a direct AST scan."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
GATEWAY = ROOT / "gateway"
HEAVY = {"vllm", "torch", "transformers"}


def lint_imports() -> str:
    found = Path(sys.executable).parent / "lint-imports"
    if found.exists():
        return str(found)
    which = shutil.which("lint-imports")
    if which is None:
        pytest.fail("lint-imports is not installed (pip install import-linter)")
    return which


def run_lint_imports(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [lint_imports(), "--no-cache", "--no-logo", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.fixture(scope="module")
def lint_report() -> str:
    """lint-imports' report on the project's contracts in pyproject.toml (run once)."""
    result = run_lint_imports()
    assert "Contracts:" in result.stdout, result.stdout + result.stderr
    return result.stdout


def contract_names() -> list[str]:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    return [contract["name"] for contract in config["contracts"]]


@pytest.mark.parametrize(
    "contract",
    contract_names(),
)
def test_import_contract_is_kept(lint_report: str, contract: str) -> None:
    assert f"{contract} KEPT" in lint_report, lint_report


def test_the_project_declares_the_design_import_rules() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    kinds = {contract["type"] for contract in config["contracts"]}
    layers = next(c for c in config["contracts"] if c["type"] == "layers")

    assert {"layers", "forbidden"} <= kinds
    assert layers["containers"] == ["gateway"] and layers["exhaustive"] is True
    assert layers["layers"][-1] == "protocol"  # the leaf


def test_lint_imports_runs_with_the_project_configuration() -> None:
    result = run_lint_imports()

    assert result.returncode == 0, result.stdout + result.stderr


def _copy_of_the_project(tmp_path: Path) -> Path:
    for name in ("gateway", "engines"):
        shutil.copytree(ROOT / name, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


def _lint_copy(root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [lint_imports(), "--no-cache", "--no-logo"],
        cwd=root,
        env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize(
    ("module", "line", "broken"),
    [
        # routing (pure) reaching up into the transport
        ("gateway/routing/table.py", "import gateway.api.front", "gateway layers"),
        # a service reaching into the composition root
        ("gateway/services/parsing.py", "import gateway.app", "gateway layers"),
        # a new module nobody placed in a layer
        ("gateway/newcomer.py", "import gateway.config", "gateway layers"),
        # the lower package reaching up into the gateway
        ("engines/hostinfo.py", "import gateway.config", "engines is the lower layer"),
        # a service importing the web framework
        (
            "gateway/services/parsing.py",
            "import litestar",
            "only gateway.api and gateway.app import litestar",
        ),
    ],
)
def test_an_import_across_a_layer_breaks_a_contract(
    tmp_path: Path, module: str, line: str, broken: str
) -> None:
    root = _copy_of_the_project(tmp_path)
    target = root / module
    text = target.read_text() if target.exists() else '"""A new module."""\n'
    target.write_text(text + f"\n{line}  # noqa\n")

    result = _lint_copy(root)

    assert result.returncode != 0, result.stdout
    broken_lines = [ln for ln in result.stdout.splitlines() if " BROKEN" in ln]
    assert any(ln.startswith(broken) for ln in broken_lines), result.stdout + result.stderr


def imported_modules(path: Path) -> set[str]:
    """Top-level module names a file imports (absolute imports only; relative ones stay inside)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def gateway_files() -> list[Path]:
    files = sorted(GATEWAY.rglob("*.py"))
    assert len(files) > 10, "the scan found no gateway modules"
    return files


def test_no_gateway_module_imports_heavy_ml_libraries() -> None:
    offenders = {
        str(path.relative_to(ROOT)): sorted(m for m in imported_modules(path) if m.split(".")[0] in HEAVY)
        for path in gateway_files()
    }

    assert {k: v for k, v in offenders.items() if v} == {}


def test_only_the_api_package_and_the_app_import_litestar() -> None:
    allowed = {GATEWAY / "app.py"}
    offenders = [
        str(path.relative_to(ROOT))
        for path in gateway_files()
        if (GATEWAY / "api") not in path.parents
        and path not in allowed
        and any(m.split(".")[0] == "litestar" for m in imported_modules(path))
    ]

    assert offenders == []


def test_routing_has_no_awaits_and_no_io_imports() -> None:
    io_modules = {"aiohttp", "asyncio", "socket", "httpx", "litestar", "gateway.upstream"}
    files = sorted((GATEWAY / "routing").rglob("*.py"))
    assert files

    for path in files:
        tree = ast.parse(path.read_text(), str(path))
        assert not any(isinstance(n, ast.Await | ast.AsyncFunctionDef) for n in ast.walk(tree)), path
        assert not {m for m in imported_modules(path) if m in io_modules or m.split(".")[0] in io_modules}, (
            path
        )


def test_protocol_imports_only_pydantic_and_the_standard_library() -> None:
    for path in sorted((GATEWAY / "protocol").rglob("*.py")):
        third_party = {
            m.split(".")[0]
            for m in imported_modules(path)
            if m.split(".")[0] not in sys.stdlib_module_names and m != "__future__"
        }
        assert third_party <= {"pydantic", "gateway"}, (path, third_party)
        assert not {
            m
            for m in imported_modules(path)
            if m.startswith("gateway.") and not m.startswith("gateway.protocol")
        }
