"""Training module: produce full-FT, LoRA and MultiLoRA checkpoints of one base for controlled comparisons.

    from deltaspec.train import wrap, adapters, merge_all          # adapters on any torch model
    from deltaspec.train import TrainConfig, run                    # the built-in GPT + task mixture
    run(TrainConfig(method="lora", out="runs/x", hf_model="path/to/local_hf_model"))  # or a transformers LM
"""
from .layers import LoRALinear, MultiLoRALinear, adapters, merge_all, wrap
from .model import GPT, GPTConfig, load_model, save_model
from .run import default_base, run
from .trainer import TrainConfig

__all__ = ["LoRALinear", "MultiLoRALinear", "wrap", "adapters", "merge_all", "GPT", "GPTConfig", "load_model",
           "save_model", "TrainConfig", "run", "default_base"]
