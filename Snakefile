# llm-infer-bench: a Hydra matrix (engine x model x precision x batch size) -> benchmark
# cells -> results/<matrix>/cells.csv.
#
#   snakemake --cores 2                                    # conf/matrix/default.yaml
#   snakemake --cores 2 --config matrix=NAME               # conf/matrix/NAME.yaml (or a path)
#   snakemake --cores 2 --config overrides="workload.output_tokens=16 workload.repeats=5"
#   snakemake --cores 2 --config tracking=false            # no MLflow logging
#   snakemake --profile profiles/slurm --config gpus=1     # on SLURM, one GPU per engine instance (README)
#
# The logic lives in the `pipeline` package; this file is the table of contents.
import sys

sys.path.insert(0, workflow.basedir)

from pipeline.compose import CONF_DIR
from pipeline.workflow import clear_stale_lock, load_schedule, python_command

STALE = clear_stale_lock(workflow)
if STALE:
    print(STALE, file=sys.stderr)
SCHEDULE = load_schedule(config, conf_dir=CONF_DIR)
RESULTS = str(SCHEDULE.results_dir)
PYTHON = python_command(workflow)
PYTHON_EXEC = python_command(workflow, replace_shell=True)
print(SCHEDULE.describe(), file=sys.stderr)


wildcard_constraints:
    model="[^/]+",


rule all:
    input:
        f"{RESULTS}/cells.csv",
        f"reports/{SCHEDULE.plan.name}/index.html",
        [f"{RESULTS}/tracking.done"] if SCHEDULE.tracking else [],


include: "pipeline/rules/models.smk"
include: "pipeline/rules/measure.smk"
include: "pipeline/rules/collect.smk"
include: "pipeline/rules/report.smk"
include: "pipeline/rules/track.smk"
