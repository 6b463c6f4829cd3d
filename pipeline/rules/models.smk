from pipeline.models.gguf import FLOAT_TYPES, QUANT_TYPES
from pipeline.plan.schedule import model_overrides, reference_overrides


# A synthetic model (random weights, local tokenizer), built once and shared by every cell.
rule materialize_model:
    input:
        f"{CONF_DIR}/model/{{model}}.yaml",
    output:
        f"{SCHEDULE.models_dir}/{{model}}/config.json",
    log:
        f"{SCHEDULE.models_dir}/logs/{{model}}.log",
    conda:
        "../../envs/hf.yaml"
    threads: SCHEDULE.preparation_threads(workflow)
    params:
        overrides=" ".join(model_overrides(SCHEDULE.plan.overrides)),
    shell:
        f"{PYTHON} -m pipeline.models.synthetic {{wildcards.model}} --into $(dirname {{output}})"
        " --threads {threads} {params.overrides} > {log} 2>&1"


# GGUF for llama.cpp: float files written from the HF directory...
rule gguf_float:
    input:
        f"{SCHEDULE.models_dir}/{{model}}/config.json",
    output:
        f"{SCHEDULE.models_dir}/{{model}}/gguf/{{gguf_type}}.gguf",
    log:
        f"{SCHEDULE.models_dir}/logs/{{model}}-{{gguf_type}}.log",
    wildcard_constraints:
        gguf_type="|".join(FLOAT_TYPES),
    conda:
        "../../envs/llama_cpp.yaml"
    shell:
        f"{PYTHON} -m pipeline.models.gguf $(dirname {{input}}) --type {{wildcards.gguf_type}} --out {{output}}"
        " > {log} 2>&1"


# ... and quantized ones made by llama.cpp's own quantizer from the F32 file.
rule gguf_quantized:
    input:
        f"{SCHEDULE.models_dir}/{{model}}/gguf/F32.gguf",
    output:
        f"{SCHEDULE.models_dir}/{{model}}/gguf/{{gguf_type}}.gguf",
    log:
        f"{SCHEDULE.models_dir}/logs/{{model}}-{{gguf_type}}.log",
    wildcard_constraints:
        gguf_type="|".join(QUANT_TYPES),
    conda:
        "../../envs/llama_cpp.yaml"
    shell:
        f"{PYTHON} -m pipeline.models.gguf {{input}} --type {{wildcards.gguf_type}} --out {{output}} > {{log}} 2>&1"


# Each model's fidelity reference: hf at fp32 on the fixed fidelity prompts, built once and compared
# with by every instance of the model (pipeline/run/fidelity.py); its settings are params: a change rebuilds it.
rule fidelity_reference:
    input:
        lambda w: (
            [f"{SCHEDULE.models_dir}/{w.model}/config.json"]
            if w.model in SCHEDULE.synthetic_models
            else []
        ),
    output:
        f"{SCHEDULE.models_dir}/{{model}}/fidelity/reference.json",
    log:
        f"{SCHEDULE.models_dir}/logs/{{model}}-fidelity-reference.log",
    conda:
        "../../envs/hf.yaml"
    threads: SCHEDULE.preparation_threads(workflow)
    params:
        settings=SCHEDULE.reference_settings,
        overrides=" ".join(reference_overrides(SCHEDULE.plan.overrides)),
    shell:
        f"{PYTHON} -m pipeline.run.fidelity {{wildcards.model}} --out {{output}} --threads {{threads}}"
        " {params.overrides} > {log} 2>&1"
