# cells.csv + requests.csv -> one self-contained comparison report (HTML and Markdown).
rule report:
    input:
        cells=f"{RESULTS}/cells.csv",
        requests=f"{RESULTS}/requests.csv",
        search=f"{RESULTS}/search.csv",
        matrix=str(SCHEDULE.matrix_file),
    output:
        html=f"{REPORT}/index.html",
        markdown=f"{REPORT}/report.md",
    log:
        f"{RESULTS}/logs/report.log",
    conda:
        "../../envs/pipeline.yaml"
    shell:
        f"{PYTHON} -m pipeline.report --cells {{input.cells}} --requests {{input.requests}} --search {{input.search}}"
        " --matrix-file {input.matrix} --out $(dirname {output.html}) > {log} 2>&1"
