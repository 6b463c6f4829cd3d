import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

# Measured peaks are cached per machine; tests (and the engines they start) get their own cache.
os.environ["LLM_BENCH_CACHE"] = tempfile.mkdtemp(prefix="llm-bench-cache-")
# CPU jobs pin themselves to core slots shared by the machine; the tests' jobs share only their own.
os.environ["LLM_BENCH_CPU_LOCK_DIR"] = tempfile.mkdtemp(prefix="llm-bench-cpu-slots-")

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "conf"


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory) -> Path:
    """The synthetic tiny-llama, materialized once for the whole session (a few seconds)."""
    path = tmp_path_factory.mktemp("models")
    from pipeline.models.synthetic import materialize
    from pipeline.plan.conf import compose_cell

    materialize(compose_cell(["model=tiny-llama"]).model, path / "tiny-llama")
    return path


@pytest.fixture(scope="session")
def fidelity_reference(models_dir) -> Path:
    """tiny-llama's hf fp32 fidelity reference, where the workflow keeps it (built once)."""
    from pipeline.models.paths import fidelity_reference_path
    from pipeline.plan.conf import compose_cell
    from pipeline.results.store import write_json
    from pipeline.run.fidelity import build_reference, reference_config

    cfg = reference_config(compose_cell(["model=tiny-llama", f"models_dir={models_dir}"]))
    path = fidelity_reference_path(cfg.model, models_dir)
    if not path.is_file():
        write_json(path, build_reference(cfg, threads=1))
    return path


def fidelity_of(engine, reference: Path) -> dict:
    """An engine's fidelity pass on the reference, judged as collect judges it."""
    from pipeline.analysis.fidelity import fidelity_columns
    from pipeline.run.fidelity import fidelity_pass

    record = fidelity_pass(engine, engine.cfg, reference)
    return fidelity_columns({"status": "ok"}, record, engine.cfg.workload.fidelity_config, engine.cfg.engine_precision)


def run_snakemake(
    workdir: Path, *args: str, timeout: float = 600, env: dict | None = None
) -> subprocess.CompletedProcess:
    """The real snakemake CLI on this repository's Snakefile, in a scratch working directory
    (env: variables added to this process's environment)."""
    snakemake = shutil.which("snakemake", path=str(Path(sys.executable).parent)) or "snakemake"
    command = [snakemake, "-s", str(REPO / "Snakefile"), "-d", str(workdir), *args]
    environ = {**os.environ, **(env or {})}
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=environ)


def write_matrix(workdir: Path, name: str, text: str) -> Path:
    path = workdir / f"{name}.yaml"
    path.write_text(text)
    return path


def cell_figures(summary_json: Path) -> dict:
    """The per-cell statistics collect derives from a cell's requests.csv."""
    from pipeline.analysis.collect import read_records
    from pipeline.analysis.metrics import summarize

    return summarize(read_records(Path(summary_json).with_name("requests.csv")))
