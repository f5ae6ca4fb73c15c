"""Data that any machine has: a character tokenizer, a pretraining corpus, and a multi-task mixture.

The mixture stands in for the MultiLoRA paper's (Alpaca / MMLU / GSM8K / SuperGLUE): four task
families with different syntax, generated on the fly from a seed, with a held-out evaluation split
scored by exact match. User data: JSONL lines `{"prompt", "response"}` or `{"text"}`.
"""
from __future__ import annotations

import json
import random
import string

import torch

PAD, BOS, EOS, SEP = 0, 1, 2, 3
CHARS = string.printable[:95]  # digits, letters, punctuation, space
VOCAB_SIZE = 4 + len(CHARS) + 1  # + one "unknown" id


class CharTokenizer:
    """Printable ASCII → ids 4..98, anything else → 99. Reversible on printable text.

    The interface every tokenizer here has (`hf.HFTokenizer` too): encode, decode, bos/eos/pad ids."""

    bos, eos, pad = BOS, EOS, PAD

    def __init__(self):
        self.stoi = {c: i + 4 for i, c in enumerate(CHARS)}
        self.itos = {i: c for c, i in self.stoi.items()}
        self.unk = VOCAB_SIZE - 1

    def encode(self, s: str) -> list[int]:
        return [self.stoi.get(c, self.unk) for c in s]

    def decode(self, ids) -> str:
        return "".join(self.itos.get(int(i), "?") for i in ids if int(i) >= 4)


# ---- the task mixture ---------------------------------------------------------------------------
_SYL = ["ka", "lo", "mi", "ren", "sa", "to", "vu", "zel", "dra", "po", "nix", "quo", "bel", "tar"]
POS = ["good", "great", "fine", "happy", "calm", "bright", "kind", "warm"]
NEG = ["bad", "awful", "sad", "angry", "dull", "cold", "rude", "grim"]
FILL = ["the", "day", "was", "food", "film", "team", "very", "so", "and", "it"]


def world(seed: int = 0, n: int = 24) -> dict[str, str]:
    """A fixed invented world: country → capital (fact recall must be learned in fine-tuning)."""
    r = random.Random(seed)
    word = lambda k: "".join(r.choice(_SYL) for _ in range(k)).capitalize()
    out = {}
    while len(out) < n:
        out.setdefault(word(2), word(2))
    return out


def _arith(r, _w):
    a, b = r.randint(10, 99), r.randint(10, 99)
    return (f"Q: {a}+{b}=", str(a + b)) if r.random() < 0.5 else (f"Q: {max(a, b)}-{min(a, b)}=", str(max(a, b) - min(a, b)))


def _instruct(r, _w):
    s = "".join(r.choice("abcdefgh") for _ in range(r.randint(3, 6)))
    op = r.choice(["reverse", "upper", "sort"])
    out = {"reverse": s[::-1], "upper": s.upper(), "sort": "".join(sorted(s))}[op]
    return f"### {op} {s}\n>", out


def _facts(r, w):
    """Knowledge recall: the facts themselves are the training signal, so evaluation asks the same
    24 facts (as MMLU asks what pretraining taught); the other families are scored on new instances."""
    c = r.choice(sorted(w))
    return f"capital of {c}:", w[c]


def _classify(r, _w):
    pos = r.random() < 0.5
    words = [r.choice(POS if pos else NEG)] + r.sample(FILL, 3)
    r.shuffle(words)
    return f"[{' '.join(words)}] positive? ", "yes" if pos else "no"


TASKS = {"arithmetic": _arith, "instruct": _instruct, "facts": _facts, "classify": _classify}


def mixture_example(r: random.Random, w: dict, task: str | None = None) -> tuple[str, str, str]:
    """(task, prompt, response); train and held-out instances come from differently seeded streams."""
    task = task or r.choice(sorted(TASKS))
    p, a = TASKS[task](r, w)
    return task, p, a


def eval_set(seed: int, per_task: int = 40) -> list[tuple[str, str, str]]:
    r, w = random.Random(10_000 + seed), world(seed)
    return [mixture_example(r, w, t) for t in sorted(TASKS) for _ in range(per_task)]


# ---- batches ------------------------------------------------------------------------------------
def encode_pair(tok, prompt: str, response: str, max_len: int) -> tuple[list[int], list[int]]:
    """Token ids and loss targets: only the response (and EOS) is learned; -100 elsewhere."""
    p, a = [tok.bos] + tok.encode(prompt), tok.encode(response) + [tok.eos]
    ids = (p + a)[:max_len]
    tgt = ([-100] * (len(p) - 1) + a + [-100])[:max_len]
    return ids, tgt


def collate(rows: list[tuple[list[int], list[int]]], pad: int = PAD) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ids x (B, T) and targets y (B, T), -100 on padding."""
    T = max(len(i) for i, _ in rows)
    x = torch.full((len(rows), T), pad, dtype=torch.long)
    y = torch.full((len(rows), T), -100, dtype=torch.long)
    for k, (ids, tgt) in enumerate(rows):
        x[k, : len(ids)] = torch.tensor(ids)
        y[k, : len(tgt)] = torch.tensor(tgt)
    return x, y


class MixtureBatches:
    """Endless fine-tuning batches from the task mixture (seeded)."""

    def __init__(self, seed: int, batch_size: int, max_len: int, tok=None):
        self.r, self.w, self.bs, self.max_len = random.Random(seed), world(seed), batch_size, max_len
        self.tok = tok or CharTokenizer()

    def __next__(self):
        rows = [encode_pair(self.tok, *mixture_example(self.r, self.w)[1:], self.max_len) for _ in range(self.bs)]
        return collate(rows, self.tok.pad)


class JsonlBatches:
    """Batches from the user's JSONL file: {"prompt", "response"} (loss on the response) or {"text"}."""

    def __init__(self, path: str, seed: int, batch_size: int, max_len: int, tok=None):
        self.tok, self.bs, self.max_len, self.r = tok or CharTokenizer(), batch_size, max_len, random.Random(seed)
        self.rows = []
        with open(path) as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    d = json.loads(line)
                except ValueError:
                    raise ValueError(f"{path}:{n}: not a JSON line") from None
                if "text" in d:
                    ids = [self.tok.bos] + self.tok.encode(d["text"]) + [self.tok.eos]
                    self.rows.append((ids[: max_len], (ids[1:] + [-100])[: max_len]))
                elif "prompt" in d and "response" in d:
                    self.rows.append(encode_pair(self.tok, d["prompt"], d["response"], max_len))
                else:
                    raise ValueError(f"{path}:{n}: expected keys 'prompt' and 'response', or 'text'")
        if not self.rows:
            raise ValueError(f"{path}: no examples")

    def __next__(self):
        return collate([self.r.choice(self.rows) for _ in range(self.bs)], self.tok.pad)


def pretrain_text(seed: int = 0, n_chars: int = 400_000) -> str:
    """A generated corpus in the mixture's alphabet and rough shapes, but none of its tasks' answers
    in task form: sentences with numbers, words, brackets and lists. Deterministic for a seed."""
    r = random.Random(seed + 777)
    words = FILL + POS + NEG + ["alpha", "beta", "list", "value", "sum", "note", "item", "city", "word", "capital"]
    parts, size = [], 0
    while size < n_chars:
        kind = r.random()
        if kind < 0.4:
            s = " ".join(r.choice(words) for _ in range(r.randint(4, 10))).capitalize() + ". "
        elif kind < 0.6:
            s = f"{r.randint(0, 999)} {r.choice(['plus', 'and', 'then', 'minus'])} {r.randint(0, 999)}; "
        elif kind < 0.8:
            s = "".join(r.choice(string.ascii_letters) for _ in range(r.randint(3, 8))) + " "
        else:
            s = "[" + ", ".join(r.choice(words) for _ in range(r.randint(2, 5))) + "]\n"
        parts.append(s)
        size += len(s)
    return "".join(parts)


class TextBatches:
    """Random windows of a text for language-model pretraining."""

    def __init__(self, text: str, seed: int, batch_size: int, max_len: int, tok=None):
        self.ids = torch.tensor((tok or CharTokenizer()).encode(text), dtype=torch.long)
        self.g, self.bs, self.T = torch.Generator().manual_seed(seed), batch_size, max_len

    def __next__(self):
        starts = torch.randint(0, len(self.ids) - self.T - 1, (self.bs,), generator=self.g)
        x = torch.stack([self.ids[s : s + self.T] for s in starts])
        y = torch.stack([self.ids[s + 1 : s + self.T + 1] for s in starts])
        return x, y
