"""Local HuggingFace transformers causal LMs for the trainer (`deltaspec train --model PATH`).

The trainer was written for the built-in GPT: `model(idx)` returns logits and a tokenizer has
`encode`/`decode` and `bos`/`eos`/`pad` ids. `HFCausalLM` gives a transformers model that interface,
so the same loop, data and evaluation run on it. Adapters go on the HF model itself (`.hf`), so their
names are the HF module names (`model.layers.0.self_attn.q_proj`) with no wrapper prefix.

transformers is an optional extra, imported only here and only when a model is loaded: neither
`import deltaspec` nor `deltaspec --help` pays for it. Only local directories are read (no hub).
"""
from __future__ import annotations

import os
import sys
from contextlib import contextmanager
from pathlib import Path

import torch.nn as nn

from ..errors import DeltaspecError, reason

MAX_LEN = 128  # default tokens per sequence: the task mixture needs < 64; longer data: TrainConfig.max_len
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json", "vocab.txt",
                   "spiece.model")


def _reason(e: BaseException) -> str:
    return reason(e, limit=200)  # transformers' messages can run to paragraphs


def _transformers():
    try:
        import transformers
    except ImportError as e:
        raise DeltaspecError(f"--model needs HuggingFace transformers ({_reason(e)}): "
                             "pip install 'deltaspec[hf]'") from None
    return transformers


@contextmanager
def _bars(show: bool):
    """transformers' own progress bars (loading, saving weights) follow the trainer's: off when it is quiet."""
    from transformers.utils import logging

    was = logging.is_progress_bar_enabled()
    if was and not show:
        logging.disable_progress_bar()
    try:
        yield
    finally:
        if was and not show:
            logging.enable_progress_bar()


class HFTokenizer:
    """A transformers tokenizer with the CharTokenizer interface: plain encode/decode (no special
    tokens added) and bos/eos/pad ids. No BOS token (GPT-2, Qwen): EOS starts sequences, as GPT-2
    does; no PAD token: EOS pads (padded positions are never attended to nor learned)."""

    def __init__(self, tok, path: str):
        if tok.eos_token_id is None:
            raise DeltaspecError(f"{path}: the tokenizer has no EOS token (eos_token), which training and "
                                 "evaluation need to end a response; set one and save the tokenizer again")
        self.tok, self.eos = tok, tok.eos_token_id
        self.bos = tok.bos_token_id if tok.bos_token_id is not None else self.eos
        self.pad = tok.pad_token_id if tok.pad_token_id is not None else self.eos

    def encode(self, s: str) -> list[int]:
        return self.tok.encode(s, add_special_tokens=False)

    def decode(self, ids) -> str:
        return self.tok.decode([int(i) for i in ids], skip_special_tokens=True)


class HFCausalLM(nn.Module):
    """A transformers causal LM behind the built-in GPT's interface: forward(idx) → logits."""

    def __init__(self, hf, tok: HFTokenizer, max_len: int, bars: bool = True):
        super().__init__()
        self.hf, self.tok, self.max_len, self.bars = hf, tok, max_len, bars  # bars: transformers' progress bars

    def forward(self, idx):  # idx: (B, T) → logits (B, T, vocab); right padding, so causal masking suffices
        return self.hf(input_ids=idx, use_cache=False).logits

    def config_dict(self) -> dict:
        """The HF config as JSON-ready values (train_info.json's model_config)."""
        import json

        return json.loads(self.hf.config.to_json_string())

    def save_full(self, out: str) -> None:
        """Full fine-tuning: a model directory like the base (same tensor names), tokenizer included, so
        the output is itself a usable model and `deltaspec analyze OUT --base PATH` pairs every tensor."""
        with _bars(self.bars):
            self.hf.save_pretrained(out)  # safetensors (the default since transformers 4.35)
        self.tok.tok.save_pretrained(out)


def named(model: nn.Module) -> nn.Module:
    """The module whose names a checkpoint uses: the HF model inside its wrapper, else the model itself."""
    return model.hf if isinstance(model, HFCausalLM) else model


def load(path: str, max_len: int | None = None, progress: bool | None = None) -> HFCausalLM:
    """The causal LM and tokenizer in a local directory, weights in float32 (what AdamW and small
    updates need; a full FT run is saved in float32 too, so no update is rounded away).
    progress: transformers' bars on (True), off (False), on a terminal only (None), like the trainer's."""
    if not os.path.isdir(path):
        raise DeltaspecError(f"{path}: no such directory (--model takes a local transformers model directory; "
                             "nothing is downloaded)")
    if not os.path.isfile(os.path.join(path, "config.json")):
        raise DeltaspecError(f"{path}: no config.json, not a transformers model directory")
    if not any(os.path.isfile(os.path.join(path, f)) for f in TOKENIZER_FILES):
        raise DeltaspecError(f"{path}: no tokenizer files (tokenizer.json, tokenizer_config.json, …); "
                             "save the model's tokenizer there with tokenizer.save_pretrained(PATH)")
    tf = _transformers()
    try:
        tok = tf.AutoTokenizer.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError, TypeError, KeyError) as e:
        raise DeltaspecError(f"{path}: cannot load its tokenizer ({_reason(e)})") from None
    bars = sys.stderr.isatty() if progress is None else progress
    try:
        with _bars(bars):
            hf = tf.AutoModelForCausalLM.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError, TypeError, KeyError) as e:
        raise DeltaspecError(f"{path}: not a causal language model transformers can load ({_reason(e)})") from None
    positions = getattr(hf.config, "max_position_embeddings", None)
    if max_len is not None and positions and max_len > positions:
        raise DeltaspecError(f"--max-len {max_len} is longer than {path}'s max_position_embeddings ({positions})")
    max_len = max_len or (min(MAX_LEN, positions) if positions else MAX_LEN)
    return HFCausalLM(hf.float(), HFTokenizer(tok, path), max_len, bars)


def weight_files(path: str) -> list[Path]:
    """The model's weight file(s), shards in index order (what train_info.json's base_sha256 covers)."""
    from ..io.files.model_files import model_files

    files, _ = model_files(Path(path))
    if not files:
        raise DeltaspecError(f"{path}: no weight files (model.safetensors, sharded safetensors or pytorch_model.bin)")
    return files
