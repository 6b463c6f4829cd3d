"""What an hf engine process imports before it loads a model, imported once per engine instance
in the forkserver its engine starts are forked from (pipeline.run.supervisor): here 7 of the
7.5 s an hf start took on the 2-core machines, most of it transformers' lazy imports."""

import torch  # noqa: F401
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: F401
