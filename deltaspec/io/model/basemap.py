"""Find the base weight of a module named by a Stable Diffusion LoRA file (kohya / LyCORIS / diffusers).

Two naming schemes reach here:
- kohya / LyCORIS: `lora_unet_down_blocks_0_attentions_0_proj_in` — the diffusers module path with dots
  turned into underscores (not reversible), after a prefix naming the component: `lora_unet_` (UNet or
  transformer), `lora_te_` / `lora_te1_` (text encoder), `lora_te2_`, `lora_te3_`; `lycoris_` (whole model).
  The base weight is the one whose key, with dots turned into underscores, equals that path (or ends
  with `_` + it); several candidates are an error, never a guess. kohya's text-encoder names follow
  transformers 4's CLIPTextModel (`text_model_encoder_layers_0_…`); a CLIPTextModel saved by
  transformers ≥ 5 has no `text_model.` level, so that path is also tried without it.
- diffusers: a component (`unet`, `text_encoder`, …) and a dotted module name.
`--base` is either a diffusers pipeline folder (model_index.json, one subfolder per component), a
component's own folder, or a model file; the component subfolder is used when it exists.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from ...errors import FormatError, ShapeMismatchError
from ..files.tensors import TensorStore, open_model
from .sdkeys import split_component

KOHYA_PREFIXES = {"lora_unet_": ("unet", "transformer"), "lora_te1_": ("text_encoder",), "lora_te2_": ("text_encoder_2",),
                  "lora_te3_": ("text_encoder_3",), "lora_te_": ("text_encoder",), "lycoris_": ()}


def split_kohya(name: str) -> tuple[tuple[str, ...], str]:
    """(candidate component folders, underscored module path) of a kohya / LyCORIS module name."""
    for prefix, comps in KOHYA_PREFIXES.items():
        if name.startswith(prefix):
            return comps, name[len(prefix):]
    return (), name


class BaseLookup:
    """Base weights for one adapter file, opened on first use (per component folder)."""

    def __init__(self, base, adapter: str) -> None:
        self.base, self.adapter = Path(base), adapter
        self._stores: dict[Optional[str], TensorStore] = {}
        self._underscored: dict[int, dict[str, list[str]]] = {}

    def store(self, components: tuple[str, ...] = (), name: str = "") -> TensorStore:
        comp = next((c for c in components if (self.base / c).is_dir()), None) if self.base.is_dir() else None
        if comp is None and components and (self.base / "model_index.json").is_file():
            raise FormatError(f"{self.adapter}: '{name}' belongs to the {' or '.join(components)} component, but "
                              f"base={self.base} (a diffusers pipeline folder) has no {components[0]}/ subfolder")
        if comp not in self._stores:
            self._stores[comp] = open_model(self.base / comp if comp else self.base)
        return self._stores[comp]

    def by_kohya_name(self, name: str, shape: Optional[tuple], why: str) -> tuple[TensorStore, str]:
        comps, path = split_kohya(name)
        store = self.store(comps, name)
        index = self._underscored.setdefault(id(store), _underscore_index(store))
        keys = _match(index, path) or (_match(index, path[len("text_model_"):])
                                       if path.startswith("text_model_") and name.startswith("lora_te") else [])
        if len(keys) > 1:
            raise FormatError(f"{self.adapter}: '{name}': several weights of base={self.base} match it "
                              f"({', '.join(keys[:3])}); kohya names are not reversible")
        if not keys:
            raise FormatError(f"{self.adapter}: '{name}': no weight in base={self.base} matches it ({why} needs "
                              "it); kohya/LyCORIS names follow the diffusers module names: pass the diffusers "
                              "pipeline folder or the component's folder (e.g. unet/)")
        return store, self._check(store, keys[0], name, shape)

    def module_of(self, name: str) -> tuple[Optional[str], str]:
        """(component, module name) in the base of kohya / LyCORIS name `name`: the component is the
        pipeline subfolder used, else base's own folder name when the prefix allows it, else the first
        component the prefix allows (None for `lycoris_` names). The module is named as the model is
        built (what PEFT targets and diffusers' save_lora_weights writes): the base's weight name, except
        that a CLIPTextModel (config.json architectures) has no `text_model.` level in transformers ≥ 5."""
        comps, _ = split_kohya(name)
        store, key = self.by_kohya_name(name, None, "mapping kohya names to module names")
        comp = next((c for c, st in self._stores.items() if st is store and c is not None), None)
        if comp is None and comps:
            comp = self.base.name if self.base.name in comps else comps[0]
        module = key[: -len(".weight")]
        if store.config.get("architectures") == ["CLIPTextModel"]:
            module = module.removeprefix("text_model.")
        return comp, module

    def by_module(self, component: Optional[str], module: str, shape: Optional[tuple], why: str) -> tuple[TensorStore, str]:
        store = self.store((component,) if component else (), module)
        key = store.find(module)
        if key is None:
            raise FormatError(f"{self.adapter}: '{module}': no weight for it in base={self.base} ({why} needs it); "
                              "is base= the model this adapter was trained on?")
        return store, self._check(store, key, module, shape)

    def _check(self, store: TensorStore, key: str, name: str, shape: Optional[tuple]) -> str:
        """key, after checking the adapter's implied shape (stored, or flattened (out, in·k)) when known."""
        got = tuple(store.shape(key))
        if shape is not None and got != tuple(shape) and (len(got) < 2 or (got[0], _prod(got[1:])) != tuple(shape)):
            raise ShapeMismatchError(f"{self.adapter}: '{name}': the adapter implies weight shape {list(shape)} but "
                                     f"{store.source(key)} has '{key}' {list(got)}")
        return key


def _match(index: dict[str, list[str]], path: str) -> list[str]:
    return index.get(path) or [k for stem, ks in index.items() if stem.endswith("_" + path) for k in ks]


def _underscore_index(store: TensorStore) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for k in store.keys():
        if k.endswith(".weight"):
            out.setdefault(k[: -len(".weight")].replace(".", "_"), []).append(k)
    return out


def _prod(xs) -> int:
    p = 1
    for x in xs:
        p *= x
    return p


def base_weights(base, fmt: str, source: str = ""):
    """`get(name, shape)` → W0 of layer `name` as a float32 (d_out, d_in) matrix (conv flattened to
    (out, in·k), as the update is), for the subspace metrics. Layer names are looked up the way the
    reader of `fmt` named them: kohya/LyCORIS names through the underscored index, diffusers
    `component.module` names in that component's folder, everything else by module name."""
    lookup = BaseLookup(base, source or str(base))

    def get(name: str, shape: tuple):
        if fmt in ("kohya", "lycoris"):
            store, key = lookup.by_kohya_name(name, tuple(shape), "the subspace metrics")
        else:
            comp, module = split_component(name) if fmt == "diffusers" else (None, name)
            store, key = lookup.by_module(comp, module, tuple(shape), "the subspace metrics")
        return store.get(key).flatten(1)

    return get
