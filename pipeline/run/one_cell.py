"""One cell from the command line, without Snakemake (for debugging an engine or a config).

    python -m pipeline.run.one_cell engine=hf model=tiny-llama precision=bf16 batch_size=4 out_dir=DIR
    python -m pipeline.run.one_cell model=small-llama --cfg job      # print the composed config

Arguments are Hydra overrides. The cell runs exactly as in a workflow (engine in its own
process, same timeout handling) and writes DIR/requests.csv and DIR/summary.json.
A synthetic model is materialized first if it is not there yet.
"""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from pipeline.config import CellConfig, ConfigError
from pipeline.plan.conf import name_sections, to_override
from pipeline.results.schema import FINAL, Cell
from pipeline.results.store import read_result
from pipeline.run.supervisor import _process_start_time, run_instance


def ensure_reference(cfg: CellConfig) -> None:
    """The model's fidelity reference, built here when missing (the workflow builds it as a rule)."""
    from pipeline.models.paths import fidelity_reference_path
    from pipeline.results.store import write_json
    from pipeline.run.fidelity import build_reference, reference_config

    path = fidelity_reference_path(cfg.model, cfg.models_dir)
    if not path.is_file():
        print(f"building the fidelity reference {path}", file=sys.stderr)
        write_json(path, build_reference(reference_config(cfg), say=lambda m: print(m, file=sys.stderr)))


@hydra.main(config_path="../../conf", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    started = _process_start_time()
    try:
        choices = {group: str(option) for group, option in HydraConfig.get().runtime.choices.items()}
        cell_cfg = CellConfig.from_dict(name_sections(OmegaConf.to_container(cfg, resolve=True), choices))
    except ConfigError as exc:
        sys.exit(f"error: {exc}")
    if cell_cfg.model.synthetic and not cell_cfg.model.path:
        from pipeline.models.synthetic import materialize, model_dir

        if not (model_dir(cell_cfg.model, cell_cfg.models_dir) / "config.json").exists():
            materialize(cell_cfg.model, model_dir(cell_cfg.model, cell_cfg.models_dir))
    if cell_cfg.workload.fidelity_config.enabled and cell_cfg.engine.fidelity is not None:
        ensure_reference(cell_cfg)
    # Every command-line override except the cell's own axes applies, as in a workflow.
    axes = ("engine", "model", "precision", "batch_size", "out_dir", "models_dir")
    overrides = [o for o in HydraConfig.get().overrides.task if o.split("=", 1)[0] not in axes]
    cell = Cell(cell_cfg.engine.name, cell_cfg.model.name, cell_cfg.precision.name, cell_cfg.batch_size)
    out_dir = Path(cell_cfg.out_dir)
    overrides.append(to_override("models_dir", cell_cfg.models_dir))
    # The cell composes its config the same way a workflow does, which needs Hydra's
    # global state free; everything hydra.main gave us has been read by now.
    GlobalHydra.instance().clear()
    run_instance([cell], {cell.batch_size: out_dir}, overrides, None, started)
    result = read_result(out_dir / "summary.json")
    print(f"{cell.cell_id}: {result.status} {result.error}".rstrip())
    print(f"results in {out_dir}/")
    if result.status not in FINAL:
        sys.exit(1)


if __name__ == "__main__":
    main()
