import shlex

# One job per engine instance (engine x model x precision): one process loads the engine
# once and measures every pending batch size, each into its own cell directory.
# A CPU benchmark job takes all the cores it is given, so cells never share cores.
for job in SCHEDULE.jobs:

    rule:
        name:
            job.instance.rule_name
        input:
            [job.model_input] if job.model_input else [],
        output:
            job.outputs,
        log:
            f"{RESULTS}/logs/{job.instance.key}.log",
        conda:
            f"../../envs/{job.instance.engine}.yaml"
        threads: workflow.cores or 1
        params:
            state=job.state,
            batch_sizes=",".join(map(str, job.batch_sizes)),
            engine=job.instance.engine,
            model=job.instance.model,
            precision=job.instance.precision,
            overrides=" ".join(shlex.quote(o) for o in SCHEDULE.plan.overrides),
        shell:
            f"{PYTHON} -m pipeline.instance --engine {{params.engine}} --model {{params.model}}"
            " --precision {params.precision} --batch-sizes {params.batch_sizes} --summaries {output}"
            " --threads {threads} -- {params.overrides} > {log} 2>&1"
