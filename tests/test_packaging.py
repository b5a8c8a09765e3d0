"""The wheel carries the whole package: every subpackage (the wings) and both pages' assets.

The tests import textgen from the source tree (PYTHONPATH or the editable install), which would
never notice a subpackage or an asset missing from the wheel. Here the wheel is built, installed
into a fresh virtual environment (`--system-site-packages`, so TensorFlow and the other
dependencies come from the system and no network is needed) and run from outside the
repository with PYTHONPATH unset: textgen must be imported from the venv, hold every file of
the source package, render the viz page with its script and style inlined, and serve the
playground and its static files.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from serve_process import Server

REPO = Path(__file__).resolve().parent.parent
PACKAGE = REPO / "textgen"
STEP_TIMEOUT = 120  # seconds for any one step (build, install, a textgen process)
PROBE = """
import importlib, json, pathlib, sys
import textgen
root = pathlib.Path(textgen.__file__).parent
modules = {name: importlib.import_module("textgen." + name).__file__ for name in sys.argv[1:]}
from textgen.viz.page import page_template
files = sorted(p.relative_to(root).as_posix() for p in root.rglob("*")
               if p.is_file() and "__pycache__" not in p.parts)
print(json.dumps({"file": textgen.__file__, "modules": modules, "files": files,
                  "page": page_template()}))
"""


def source_files() -> list[str]:
    """Every file of the source package (what the wheel must carry), compiled files aside."""
    return sorted(p.relative_to(PACKAGE).as_posix() for p in PACKAGE.rglob("*")
                  if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc")


def run(command: list, **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run(command, capture_output=True, text=True, timeout=STEP_TIMEOUT, **kwargs)
    assert result.returncode == 0, f"{command}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


@pytest.fixture(scope="module")
def venv(tmp_path_factory) -> Path:
    """A fresh virtual environment with the wheel built from this checkout installed in it."""
    work = tmp_path_factory.mktemp("packaging")
    source = work / "source"  # built from a copy: a build writes build/ and *.egg-info in its tree
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, source / name)
    shutil.copytree(PACKAGE, source / "textgen", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q",
         "-w", str(work / "wheels"), str(source)])
    wheel, = (work / "wheels").glob("textgen-*.whl")
    env_dir = work / "venv"
    run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(env_dir)])
    # pip itself comes from the system site-packages; it installs into the venv that runs it
    run([str(env_dir / "bin" / "python"), "-m", "pip", "install", "--no-deps", "--no-index", "-q",
         str(wheel)], env=outside_env())
    return env_dir


def outside_env() -> dict:
    """The environment of a user's shell: no PYTHONPATH pointing into the repository."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["TF_CPP_MIN_LOG_LEVEL"] = "3"
    return env


def test_the_installed_wheel_carries_every_subpackage_and_serves_both_pages(venv, trained_run,
                                                                           tmp_path):
    elsewhere = tmp_path / "elsewhere"  # outside the repository: no `textgen/` beside the cwd
    elsewhere.mkdir()
    env = outside_env()
    server = Server(trained_run, "--runs-dir", trained_run.parent, "--max-batch", "1",
                    textgen=[str(venv / "bin" / "textgen")], cwd=elsewhere, env={**env, "PYTHONPATH": None})
    try:  # the server compiles while the probe runs
        subpackages = sorted(p.parent.relative_to(PACKAGE).as_posix().replace("/", ".")
                             for p in PACKAGE.rglob("__init__.py") if p.parent != PACKAGE)
        assert {"serve", "export", "viz"} <= set(subpackages)
        probe = json.loads(run([str(venv / "bin" / "python"), "-c", PROBE, *subpackages],
                               cwd=elsewhere, env=env).stdout)
        site = (venv / "lib").resolve()
        assert Path(probe["file"]).resolve().is_relative_to(site), probe["file"]
        for name, file in probe["modules"].items():
            assert Path(file).resolve().is_relative_to(site), (name, file)
        missing = sorted(set(source_files()) - set(probe["files"]))
        assert not missing, f"files of textgen/ missing from the wheel: {missing}"

        page_dir = PACKAGE / "viz" / "viz_page"
        page = probe["page"]
        assert (page_dir / "page.js").read_text(encoding="utf-8") in page  # the script, inlined
        assert (page_dir / "page.css").read_text(encoding="utf-8") in page  # the style, inlined
        assert "/*SCRIPT*/" not in page and "/*STYLE*/" not in page

        url = server.wait_ready()
        with httpx.Client(timeout=30) as client:
            index = client.get(f"{url}/")
            script = client.get(f"{url}/static/playground.js")
        assert index.status_code == 200 and "playground.js" in index.text, index.text[:500]
        assert script.status_code == 200
        assert script.text == (PACKAGE / "serve" / "static" / "playground.js").read_text(encoding="utf-8")
    finally:
        server.stop()
