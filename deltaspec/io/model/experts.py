"""Mixture-of-experts stacks: one 3-D parameter `[E, ·, ·]` → one matrix per expert (and per fused half).

transformers 5.x keeps the experts of a MoE block in 3-D parameters, `…mlp.experts.gate_up_proj` and
`…mlp.experts.down_proj`. Which axis is the input is a property of the architecture, not of the
shapes (a square expert cannot tell), so it comes from config.json's `model_type`:
  (E, out, in)  every MoE model in transformers 5.x except the ones below (Mixtral, Qwen-MoE, DeepSeek…)
  (E, in, out)  gpt-oss, Llama 4, Aria, openai_privacy_filter (`is_transposed` in transformers)
and `gate_up_proj` fuses two projections along `out`: [gate; up] halves, except gpt-oss, which
interleaves them (gate = even rows, up = odd rows).

Naming: the expert index goes before the projection's name, and a fused parameter becomes its two
halves: `model.layers.0.mlp.experts.gate_up_proj` → `model.layers.0.mlp.experts.3.gate_proj` and
`….experts.3.up_proj`; `…experts.down_proj` → `….experts.3.down_proj`. These are the names
Qwen-MoE and DeepSeek checkpoints use on disk for their experts, and the module type stays the last
component (`--modules down_proj` selects them). Every expert matrix is (out, in), the orientation of
an nn.Linear weight, whatever the storage; for an unknown architecture the stored slice is kept (σ
is the same either way, U and V swap roles), a fused parameter is not split, and a warning says so.
"""
from __future__ import annotations

TRANSPOSED = frozenset({"gpt_oss", "llama4", "llama4_text", "aria", "aria_text", "openai_privacy_filter"})
INTERLEAVED = frozenset({"gpt_oss"})
# Transposed stacks whose module lacks transformers' `is_transposed` flag: PEFT then takes them for
# (E, out, in), so its lora_B @ lora_A is the stored (in, out) slice, the transpose of (out, in).
PEFT_UNAWARE = frozenset({"llama4", "llama4_text"})
# MoE model types whose 3-D expert stacks are (E, out, in): transformers 5.24, from each model's experts class.
STACKED = frozenset("""
afmoe axk1 axk2 bailing_hybrid beam cohere2_moe deepseek_ocr2 deepseek_ocr2_text deepseek_v2 deepseek_v3
deepseek_v32 deepseek_v4 diffusion_gemma diffusion_gemma_text dots1 dots3_note dots3_note_text ernie4_5_moe
ernie4_5_vl_moe ernie4_5_vl_moe_text exaone_moe flex_olmo flint gemma4 gemma4_text glm4_moe glm4_moe_lite glm4v_moe
glm4v_moe_text glm5_next glm5_next_text glm_moe_dsa granitemoe granitemoe_swa granitemoehybrid granitemoeshared
hunyuan_v1_moe hy_v3 hy_v4 hy_v4_vl hy_v4_vl_text inkling2 inkling2_loop inkling2_loop_text inkling2_text
inkling_mm_model inkling_text jamba jetmoe kimi_linear kolibri1 laguna lara_mini lfm2_moe mellum mimo_v2_flash
minimax minimax_m2 minimax_m3_vl minimax_m3_vl_text mistral4 mistral_large4 mistral_large4_text mixtral
muse_spark muse_spark_text nemotron_h olmoe phimoe qwen2_moe qwen3_5_moe qwen3_5_moe_text qwen3_moe qwen3_next
qwen3_omni_moe qwen3_omni_moe_talker_text qwen3_omni_moe_text qwen3_omni_moe_thinker qwen3_vl_moe
qwen3_vl_moe_text qwen4_exp qwen4_exp_text solar_open step3p5 step3p7 unlimited_ocr unlimited_ocr_text zaya
""".split())
FUSED = {"gate_up_proj": ("gate_proj", "up_proj")}
# The order transformers' experts classes register their parameters: PEFT nests one LoRA wrapper per
# targeted parameter in this order (the first registered is the innermost, `….base_layer.lora_A`).
REGISTRATION_ORDER = ("gate_up_proj", "gate_proj", "up_proj", "down_proj")


class Layout:
    """What the architecture (config.json) says about expert stacks; `known` False if it says nothing."""

    def __init__(self, model_type=None, source=None) -> None:
        self.model_type = model_type
        self.source = source  # where the model_type came from (for messages)
        self.known = model_type in TRANSPOSED or model_type in STACKED
        self.transposed = model_type in TRANSPOSED
        self.interleaved = model_type in INTERLEAVED
        self.peft_flipped = model_type in PEFT_UNAWARE

    @classmethod
    def of(cls, config: dict, source=None) -> "Layout":
        """From a model config: its model_type, or its text_config's (multimodal wrappers)."""
        types = [config.get("model_type"), (config.get("text_config") or {}).get("model_type")
                 if isinstance(config.get("text_config"), dict) else None]
        for t in types:
            if isinstance(t, str) and (t in TRANSPOSED or t in STACKED):
                return cls(t, source)
        return cls(types[0] if isinstance(types[0], str) else None, source)

    def describe(self) -> str:
        if self.model_type is None:
            return "no config.json with a model_type"
        return f"model_type {self.model_type!r}" + ("" if self.known else " (not a MoE layout deltaspec knows)")


def is_expert_stack(key: str, ndim: int, layout: Layout) -> bool:
    """A 3-D tensor that holds one matrix per expert: a parameter of an `experts` module (transformers
    5.x: `….experts.gate_up_proj`), or JetMoE's `input_linear`/`output_linear` weights. Other 3-D
    `*.weight` tensors are Conv1d kernels (Mamba's conv1d in Jamba, Qwen3-Next, …)."""
    if ndim != 3:
        return False
    module, _, param = key.rpartition(".")
    parts = module.split(".")
    if param != "weight":
        return "experts" in parts
    return "experts" in parts[:-1] or (layout.model_type == "jetmoe" and parts[-1] in ("input_linear", "output_linear"))


def expert_names(key: str, n_experts: int, layout: Layout) -> list[tuple[str, int, object]]:
    """[(layer name, expert index, half)] for a 3-D stack `key`; half is None, or (index, of 2) into
    the fused `out` axis ("gate" = 0, "up" = 1), only when the layout is known."""
    module, _, param = key.rpartition(".")
    if param == "weight":  # JetMoE-style: the module itself is the stack
        parent, _, leaf = module.rpartition(".")
        module, param = parent, leaf
    halves = FUSED.get(param) if layout.known else None
    out = []
    for e in range(n_experts):
        if halves:
            out += [(f"{module}.{e}.{h}", e, i) for i, h in enumerate(halves)]
        else:
            out.append((f"{module}.{e}.{param}", e, None))
    return out


def half_rows(n_rows: int, half: int, layout: Layout):
    """The rows of a fused (out, in) matrix that belong to `half` (0 gate, 1 up)."""
    if layout.interleaved:
        return slice(half, None, 2)
    h = n_rows // 2
    return slice(0, h) if half == 0 else slice(h, None)


def expert_matrix(stack_slice, half, layout: Layout):
    """One expert's (out, in) matrix (or fused half) from its stored 2-D slice (a torch tensor)."""
    m = stack_slice.T if layout.transposed else stack_slice
    return m if half is None else m[half_rows(m.shape[0], half, layout)]


def expert_shape(stored: tuple, half, layout: Layout) -> tuple[int, int]:
    a, b = stored[-2:]
    out, inp = (b, a) if layout.transposed else (a, b)
    return (out // 2 if half is not None else out, inp)


def order_params(names: list[str]) -> list[str]:
    """Parameter names in the order an experts module registers them (unknown names last, as given)."""
    known = [n for n in REGISTRATION_ORDER if n in names]
    return known + [n for n in names if n not in known]
