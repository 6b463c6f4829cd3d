import shlex


# Every cell's summary.json (and requests.csv beside it) -> one row per cell / request / load-search probe, with
# everything derived from them: statistics, the datasheet entry, the roofline. The datasheets
# and the analysis code are inputs too: editing them re-runs this step, never an engine.
rule collect:
    input:
        summaries=SCHEDULE.summaries(),
        datasheets=sorted(str(p) for p in (CONF_DIR / "hardware").glob("*.yaml")),
        analysis=SCHEDULE.analysis_code(),
    output:
        cells=f"{RESULTS}/cells.csv",
        requests=f"{RESULTS}/requests.csv",
        search=f"{RESULTS}/search.csv",
    log:
        f"{RESULTS}/logs/collect.log",
    conda:
        "../../envs/pipeline.yaml"
    params:
        hardware=SCHEDULE.hardware,
        slo=shlex.quote(SCHEDULE.slo),  # a changed SLO re-runs this step (params), never an engine
        fidelity=shlex.quote(SCHEDULE.fidelity_budget),  # likewise the fidelity budget
    shell:
        f"{PYTHON} -m pipeline.analysis.collect --cells {{output.cells}} --requests {{output.requests}}"
        " --search {output.search} --hardware {params.hardware} --slo {params.slo} --fidelity {params.fidelity}"
        " {input.summaries} > {log} 2>&1"
