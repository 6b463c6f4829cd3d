from pipeline.workflow import model_overrides


# A synthetic model (random weights, local tokenizer), built once and shared by every cell.
rule materialize_model:
    output:
        f"{SCHEDULE.models_dir}/{{model}}/config.json",
    params:
        overrides=" ".join(model_overrides(SCHEDULE.plan.overrides)),
        models_dir=SCHEDULE.models_dir,
    log:
        f"{SCHEDULE.models_dir}/logs/{{model}}.log",
    conda:
        "../../envs/hf.yaml"
    shell:
        "python -m pipeline.models {wildcards.model} --models-dir {params.models_dir} {params.overrides} > {log} 2>&1"
