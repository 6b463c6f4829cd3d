import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

# Measured peaks are cached per machine; tests (and the engines they start) get their own cache.
os.environ["LLM_BENCH_CACHE"] = tempfile.mkdtemp(prefix="llm-bench-cache-")

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "conf"


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory) -> Path:
    """The synthetic tiny-llama, materialized once for the whole session (a few seconds)."""
    path = tmp_path_factory.mktemp("models")
    from pipeline.compose import compose_cell
    from pipeline.models import materialize

    materialize(compose_cell(["model=tiny-llama"]).model, path / "tiny-llama")
    return path


def run_snakemake(workdir: Path, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    """The real snakemake CLI on this repository's Snakefile, in a scratch working directory."""
    snakemake = shutil.which("snakemake", path=str(Path(sys.executable).parent)) or "snakemake"
    command = [snakemake, "-s", str(REPO / "Snakefile"), "-d", str(workdir), *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout)


def write_matrix(workdir: Path, name: str, text: str) -> Path:
    path = workdir / f"{name}.yaml"
    path.write_text(text)
    return path
