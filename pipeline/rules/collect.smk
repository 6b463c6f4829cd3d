localrules:
    collect,


# Every cell's summary.json (and requests.csv beside it) -> one row per cell / request.
rule collect:
    input:
        SCHEDULE.summaries(),
    output:
        cells=f"{RESULTS}/cells.csv",
        requests=f"{RESULTS}/requests.csv",
    log:
        f"{RESULTS}/logs/collect.log",
    conda:
        "../../envs/pipeline.yaml"
    shell:
        f"{PYTHON} -m pipeline.collect --cells {{output.cells}} --requests {{output.requests}} {{input}} > {{log}} 2>&1"


onsuccess:
    from pipeline.collect import status_line

    print(status_line(f"{RESULTS}/cells.csv"), file=sys.stderr)
    print(f"report: reports/{SCHEDULE.plan.name}/index.html", file=sys.stderr)
