import shlex

# One job per engine instance (engine x model x precision): one process loads the engine
# once and measures every pending batch size, each into its own cell directory.
# Resources: `gpu` (--config gpus=N; locally each job then takes its own GPU slots, see
# pipeline/gpu_slots.py; on SLURM it becomes --gpus=N), host memory from the model's
# weights, the runtime limit from the workload's timeouts, and its cores as threads (a
# CPU benchmark job takes all --cores locally, so cells never share cores; --config cpus=N).
# `exec`: the instance replaces the job's shell, so it is Snakemake's own child and stops
# its engine when Snakemake dies (pipeline.run.lifetime). Snakemake exports MKL_NUM_THREADS=
# {threads} to every job; the engines take their threads from --threads, and vLLM's CPU server
# (its OpenMP threads bound to all cores but one) took 205 ms a step with it, 4 ms without
# (tiny-llama, 2 cores), so the job drops it.
for job in SCHEDULE.jobs:

    rule:
        name:
            job.instance.rule_name
        input:
            [job.model_input] if job.model_input else [],
            [job.fidelity_reference] if job.fidelity_reference else [],
        output:
            summaries=job.outputs,
            attempt=job.attempt_file,
        log:
            f"{RESULTS}/logs/{job.instance.key}.log",
        conda:
            SCHEDULE.environment_file(job)
        threads: SCHEDULE.threads(workflow)
        resources:
            gpu=SCHEDULE.gpus,
            gpu_model=SCHEDULE.gpu_model if SCHEDULE.gpus else "",
            mem_mb=job.mem_mb,
            runtime=job.runtime_min,
        params:
            batch_sizes=",".join(map(str, job.batch_sizes)),
            engine=job.instance.engine,
            model=job.instance.model,
            precision=job.instance.precision,
            overrides=" ".join(shlex.quote(o) for o in SCHEDULE.plan.overrides),
        shell:
            f"unset MKL_NUM_THREADS; {PYTHON_EXEC} -m pipeline.run.supervisor --engine {{params.engine}}"
            " --model {params.model}"
            " --precision {params.precision} --batch-sizes {params.batch_sizes} --summaries {output.summaries}"
            " --attempt-file {output.attempt}"
            " --threads {threads} --gpus {resources.gpu} -- {params.overrides} > {log} 2>&1"
