"""Comfy Registry packaging: metadata, validation, and what the registry's scanner rejects."""

from __future__ import annotations

import ast
import re
import shutil
import subprocess
import tomllib

import pyramid_core
from support import REPO_ROOT, require

PYPROJECT = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
COMFY_CLI = REPO_ROOT / ".cache" / "comfy-cli" / "bin" / "comfy"


def tracked_python_files() -> list:
    """Every .py file git tracks or would track (ignored caches and venvs excluded)."""
    out = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "*.py"],
                         cwd=REPO_ROOT, capture_output=True, text=True, check=True).stdout
    return [REPO_ROOT / line for line in out.splitlines() if (REPO_ROOT / line).is_file()]


def test_project_metadata_is_what_the_registry_needs():
    project, comfy = PYPROJECT["project"], PYPROJECT["tool"]["comfy"]
    assert "comfyui" not in project["name"].lower()
    assert re.fullmatch(r"\d+\.\d+\.\d+", project["version"])
    assert project["version"] == pyramid_core.__version__
    assert project["urls"]["Repository"].startswith("https://")
    for key in ("PublisherId", "DisplayName", "Icon", "requires-comfyui"):
        assert comfy[key], key
    (REPO_ROOT / project["license"]["file"]).is_file()


def test_requirements_txt_matches_pyproject():
    def names(lines):
        return {re.split(r"[<>=!~ \[]", line.strip(), maxsplit=1)[0].lower()
                for line in lines if line.strip() and not line.lstrip().startswith("#")}

    requirements = names((REPO_ROOT / "requirements.txt").read_text().splitlines())
    # torch comes from the user's ComfyUI and is deliberately not in requirements.txt
    assert requirements == names(PYPROJECT["project"]["dependencies"]) - {"torch"}


def test_comfy_node_validate_is_clean():
    comfy = COMFY_CLI if COMFY_CLI.is_file() else shutil.which("comfy")
    require(comfy is not None, "needs comfy-cli: bash scripts/comfyui_env.sh registry")
    result = subprocess.run([str(comfy), "--skip-prompt", "node", "validate"], cwd=REPO_ROOT,
                            capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "All validation checks passed" in output, output
    assert "warning" not in output.lower(), output


DYNAMIC_CODE = {"eval", "exec", "compile", "__import__"}
PROCESS_CALLS = {"run", "call", "check_call", "check_output", "Popen", "system", "popen", "spawnv"}


def scanner_findings(source: str) -> list[str]:
    """Dynamic code execution and pip run from Python, found in one module's AST."""
    findings = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            modules = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            findings += [f"line {node.lineno}: imports pip" for m in modules if m.split(".")[0] == "pip"]
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        name = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else ""
        if isinstance(func, ast.Name) and name in DYNAMIC_CODE:  # builtins, not model.eval()
            findings.append(f"line {node.lineno}: calls {name}")
        if name in PROCESS_CALLS:
            words = [c.value for arg in node.args for c in ast.walk(arg)
                     if isinstance(c, ast.Constant) and isinstance(c.value, str)]
            if any(re.search(r"(^|[\s/])pip3?(\s|$)", w) for w in words):
                findings.append(f"line {node.lineno}: runs pip")
    return findings


def test_scanner_finds_what_it_should():
    bad = "import subprocess\nsubprocess.run(['python', '-m', 'pip', 'install', 'x'])\n" + "ev" + "al('1')\n"
    assert len(scanner_findings(bad)) == 2
    assert scanner_findings("model.eval()\nre.compile('x')\n") == []


def test_no_dynamic_code_or_pip_from_python():
    findings = {str(path.relative_to(REPO_ROOT)): found for path in tracked_python_files()
                if (found := scanner_findings(path.read_text()))}
    assert not findings, findings


def test_pyramid_core_never_imports_comfyui():
    forbidden = {"comfy", "comfy_api", "comfy_extras", "folder_paths", "nodes", "server", "execution"}
    offenders = []
    for path in (REPO_ROOT / "pyramid_core").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module or ""]
            else:
                continue
            offenders += [f"{path.relative_to(REPO_ROOT)}: {n}" for n in names if n.split(".")[0] in forbidden]
    assert not offenders, offenders


def test_pyramid_core_imports_itself_relatively():
    """Inside ComfyUI the pack is loaded from its folder, not pip-installed: pyramid_core
    must reach its own modules with relative imports so the nodes can import it as
    ``<pack>.pyramid_core``."""
    offenders = []
    for path in (REPO_ROOT / "pyramid_core").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("pyramid_core"):
                offenders.append(f"{path.relative_to(REPO_ROOT)}:{node.lineno}")
            if isinstance(node, ast.Import) and any(a.name.startswith("pyramid_core") for a in node.names):
                offenders.append(f"{path.relative_to(REPO_ROOT)}:{node.lineno}")
    assert not offenders, offenders
