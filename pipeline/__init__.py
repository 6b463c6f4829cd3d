"""llm-infer-bench: an LLM inference benchmark pipeline (Snakemake + Hydra + pandas)."""
