# llm-infer-bench: a Hydra matrix (engine x model x precision x batch size) -> benchmark
# cells -> results/<matrix>/cells.csv.
#
#   snakemake --cores 2                                   # conf/matrix/default.yaml
#   snakemake --cores 2 --config matrix=NAME              # conf/matrix/NAME.yaml (or a path)
#   snakemake --cores 2 --config workload.output_tokens=16  # any other key: a Hydra override
#
# The logic lives in the `pipeline` package; this file is the table of contents.
import os
import sys

sys.path.insert(0, workflow.basedir)
# Jobs run `python -m pipeline...`: the interpreter running Snakemake, unless a conda env
# (--sdm conda) puts its own first on PATH; and the package importable from any workdir.
os.environ["PATH"] = os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"]
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [workflow.basedir, os.environ.get("PYTHONPATH")]))

from pipeline.compose import CONF_DIR
from pipeline.workflow import load_schedule

SCHEDULE = load_schedule(config, conf_dir=CONF_DIR)
RESULTS = str(SCHEDULE.results_dir)
print(SCHEDULE.describe(), file=sys.stderr)


rule all:
    input:
        f"{RESULTS}/cells.csv",


include: "pipeline/rules/models.smk"
include: "pipeline/rules/measure.smk"
include: "pipeline/rules/collect.smk"
