from pipeline.workflow import model_overrides


# A synthetic model (random weights, local tokenizer), built once and shared by every cell.
rule materialize_model:
    output:
        f"{SCHEDULE.models_dir}/{{model}}/config.json",
    log:
        f"{SCHEDULE.models_dir}/logs/{{model}}.log",
    conda:
        "../../envs/hf.yaml"
    params:
        overrides=" ".join(model_overrides(SCHEDULE.plan.overrides)),
    shell:
        f"{PYTHON} -m pipeline.models {{wildcards.model}} --into $(dirname {{output}}) {{params.overrides}}"
        " > {log} 2>&1"
