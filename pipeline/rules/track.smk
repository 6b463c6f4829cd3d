# Every cell as an MLflow run (idempotent), plus one run with cells.csv and the report.
# MLFLOW_TRACKING_URI picks the store; unset, MLflow's default mlflow.db in the workdir.
# If the server is down this step fails with one clear line; the results stay complete
# and the next run of the workflow logs them.
rule track:
    input:
        cells=f"{RESULTS}/cells.csv",
        report=f"{REPORT}/index.html",
    output:
        f"{RESULTS}/tracking.done",
    log:
        f"{RESULTS}/logs/tracking.log",
    conda:
        "../../envs/pipeline.yaml"
    params:
        matrix=SCHEDULE.plan.name,
    shell:
        f"{PYTHON_EXEC} -m pipeline.tracking.mlflow_sync --matrix {{params.matrix}} --cells {{input.cells}}"
        " --results-dir $(dirname {input.cells}) --report-dir $(dirname {input.report})"
        " --done-marker {output} > {log} 2>&1"
