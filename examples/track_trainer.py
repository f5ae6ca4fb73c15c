"""Watch the spectra of a LoRA update while a transformers Trainer trains it: one callback line.

    pip install 'deltaspec[hf]' peft tensorboard
    python examples/track_trainer.py --out runs/track_demo      # seconds on a CPU, nothing downloaded
    tensorboard --logdir runs/track_demo                           # scalars: train/spectra/…
    deltaspec plot trajectory runs/track_demo -o trajectory.png    # the same steps, from the JSONL

A tiny Llama built from a config (random weights: a stand-in for your model) gets PEFT LoRA on q_proj
and v_proj and learns a random token stream. The only deltaspec line is `SpectraCallback(every=…)`
in the Trainer's callbacks: normalized entropy, effective rank, top-1 energy and ‖ΔW‖_F of each
module type go through Trainer.log to TensorBoard (and to W&B, MLflow… with their report_to), and
every tracked step's full analysis to OUT/spectra_trajectory.jsonl.
"""
from __future__ import annotations

import argparse

import torch
from peft import LoraConfig, get_peft_model
from transformers import LlamaConfig, LlamaForCausalLM, Trainer, TrainingArguments

from deltaspec.integrations import SpectraCallback


class RandomTokens(torch.utils.data.Dataset):
    def __init__(self, n=256, length=32, vocab=128):
        self.x = torch.randint(0, vocab, (n, length), generator=torch.Generator().manual_seed(0))

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return {"input_ids": self.x[i], "labels": self.x[i]}


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="runs/track_demo")
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--every", type=int, default=10)
    a = p.parse_args()
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    model = get_peft_model(LlamaForCausalLM(config), LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"]))
    args = TrainingArguments(output_dir=a.out, max_steps=a.steps, per_device_train_batch_size=8, learning_rate=3e-3,
                             logging_steps=10, save_strategy="no", report_to=["tensorboard"], use_cpu=True,
                             disable_tqdm=True)
    trainer = Trainer(model=model, args=args, train_dataset=RandomTokens(),
                      callbacks=[SpectraCallback(every=a.every)])  # <- the one deltaspec line
    trainer.train()
    last = [h for h in trainer.state.log_history if "spectra/q_proj/normalized_entropy" in h][-1]
    print(f"step {last['step']}: q_proj normalized entropy {last['spectra/q_proj/normalized_entropy']:.3f}, "
          f"v_proj {last['spectra/v_proj/normalized_entropy']:.3f}; trajectory: {a.out}/spectra_trajectory.jsonl")


if __name__ == "__main__":
    main()
