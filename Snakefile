# llm-infer-bench: a Hydra matrix (engine x model x precision x batch size) -> benchmark
# cells -> results/<matrix>/cells.csv -> reports/<matrix>/ and MLflow.
#
#   snakemake --cores 2                                    # conf/matrix/default.yaml
#   snakemake --cores 2 --config matrix=NAME               # conf/matrix/NAME.yaml (or a path)
#   snakemake --cores 2 --config overrides="workload.output_tokens=16 workload.repeats=5"
#   snakemake --cores 2 --config tracking=false            # no MLflow logging
#   snakemake --profile profiles/slurm --config gpus=1     # on SLURM, one GPU per engine instance (README)
#
# The logic lives in the `pipeline` package (README: how it fits together); this file is the
# table of contents.
import sys

sys.path.insert(0, workflow.basedir)

from pipeline.plan.conf import CONF_DIR
from pipeline.plan.schedule import load_schedule
from pipeline.plan.snakemake_hooks import (
    check_machine,
    clear_stale_lock,
    python_command,
)

STALE = clear_stale_lock(workflow)
if STALE:
    print(STALE, file=sys.stderr)
SCHEDULE = load_schedule(config, conf_dir=CONF_DIR)
check_machine(SCHEDULE, workflow, CONF_DIR)
RESULTS = str(SCHEDULE.results_dir)
REPORT = f"reports/{SCHEDULE.plan.name}"
PYTHON = python_command(workflow)
PYTHON_EXEC = python_command(workflow, replace_shell=True)
print(SCHEDULE.describe(), file=sys.stderr)


wildcard_constraints:
    model="[^/]+",


# collect, report and track are cheap: they run where Snakemake runs, never on a cluster node.
localrules:
    all,
    collect,
    report,
    track,


rule all:
    input:
        # a retried cell's summary exists already: its job's attempt record is what makes it run
        [job.attempt_file for job in SCHEDULE.jobs],
        f"{RESULTS}/cells.csv",
        f"{REPORT}/index.html",
        [f"{RESULTS}/tracking.done"] if SCHEDULE.tracking else [],


include: "pipeline/rules/models.smk"  # synthetic models, GGUF files
include: "pipeline/rules/measure.smk"  # one job per engine instance
include: "pipeline/rules/collect.smk"  # cell results -> cells.csv, with the analysis
include: "pipeline/rules/report.smk"  # cells.csv -> reports/<matrix>/
include: "pipeline/rules/track.smk"  # cells.csv -> MLflow


onsuccess:
    from pipeline.analysis.collect import status_line

    print(status_line(f"{RESULTS}/cells.csv"), file=sys.stderr)
    print(f"report: {REPORT}/index.html", file=sys.stderr)
