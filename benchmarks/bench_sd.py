"""Stable Diffusion XL: resize a kohya LoRA and extract a LoRA from two UNets, deltaspec vs kohya's algorithm.

    python benchmarks/bench_sd.py                       # default: resize all SDXL modules, extract 6, 24, 96 layers
    python benchmarks/bench_sd.py --skip-resize --extract-layers 6,24,96,0   # 0: every UNet attention linear (slow)

Shapes: the real SDXL UNet (diffusers UNet2DConditionModel with SDXL's config, built on the meta device:
no weights) and its two text encoders (CLIP ViT-L 768/3072 × 12 layers, OpenCLIP bigG 1280/5120 × 32).
kohya's default LoRA targets: every Linear of the UNet's transformer blocks (attentions.*, incl.
proj_in/out) and the encoders' self_attn q/k/v/out_proj + mlp fc1/fc2. Names are kohya-style
(lora_unet_…, lora_te1_…, lora_te2_…) built from diffusers module paths.

resize (rank --rank → --new-rank, every measurement in a fresh interpreter, harness.py):
  deltaspec  `deltaspec.resize.resize(ds.load(file), rank)` + `write_sd.write_kohya`: the whole job.
  kohya      resize_lora.py's algorithm, re-implemented from its description (not copied): load the
             file, per module up@down in float32, torch.linalg.svd with its default full_matrices=True,
             up = U[:, :k]·diag(S[:k]), down = Vh[:k]. Timed once per distinct shape (--kohya-per-shape
             modules each) and extrapolated by the number of modules of that shape (said in the output).
extract (two UNet-shaped fp16 folders holding N attention linears strided over the model, for each N of
--extract-layers; 0 = all 722; each side in a fresh interpreter):
  deltaspec  `deltaspec extract --base A --tuned B --component unet --to kohya --rank R` (the click command,
             called in the worker): one layer's ΔW at a time, its SVD, top-R factors.
  kohya      extract_lora_from_models.py's algorithm: load both models in float32, form every ΔW (kept in a
             dict), then per ΔW a full torch.linalg.svd (full_matrices=True, its default) and the top-R factors.
  Memory: each worker first imports what it runs (deltaspec: the CLI, the readers, writers and SVD modules,
  then ds.load of the folders, which reads headers only) and notes its VmRSS and RssAnon; then VmHWM is reset
  (/proc/self/clear_refs) and RssAnon sampled every 5 ms. Printed: the peak above that baseline, both as VmHWM
  (all resident pages, incl. the memory-mapped input files' pages) and as RssAnon (private memory only:
  tensors, LAPACK workspace, heap), next to the largest single ΔW in float32 and the sum of all ΔW.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from collections import Counter

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402

HERE = os.path.abspath(__file__)

SDXL_UNET = dict(sample_size=128, in_channels=4, out_channels=4, layers_per_block=2,
                 down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                 up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
                 block_out_channels=(320, 640, 1280), transformer_layers_per_block=(1, 2, 10),
                 cross_attention_dim=2048, attention_head_dim=(5, 10, 20), use_linear_projection=True,
                 addition_embed_type="text_time", addition_time_embed_dim=256,
                 projection_class_embeddings_input_dim=2816)
TEXT_ENCODERS = {"lora_te1_": (768, 3072, 12), "lora_te2_": (1280, 5120, 32)}


def unet_linears():
    """[(diffusers module name, (out, in))] of the SDXL UNet's transformer-block Linear layers."""
    import torch
    from diffusers import UNet2DConditionModel

    with torch.device("meta"):
        unet = UNet2DConditionModel(**SDXL_UNET)
    return [(n, tuple(m.weight.shape)) for n, m in unet.named_modules()
            if isinstance(m, torch.nn.Linear) and ".attentions." in f".{n}"]


def sdxl_modules():
    """[(kohya name, (out, in))] for the UNet and both text encoders."""
    mods = [("lora_unet_" + n.replace(".", "_"), s) for n, s in unet_linears()]
    for prefix, (d, ff, layers) in TEXT_ENCODERS.items():
        for i in range(layers):
            p = f"{prefix}text_model_encoder_layers_{i}_"
            mods += [(p + f"self_attn_{x}_proj", (d, d)) for x in "qkvo"[:3]] + [(p + "self_attn_out_proj", (d, d))]
            mods += [(p + "mlp_fc1", (ff, d)), (p + "mlp_fc2", (d, ff))]
    return mods


def build_kohya(path, rank, seed=0):
    import torch
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(seed)
    sd = {}
    for name, (o, i) in sdxl_modules():
        sd[f"{name}.lora_down.weight"] = (torch.randn(rank, i, generator=g) / i**0.5).half()
        sd[f"{name}.lora_up.weight"] = (torch.randn(o, rank, generator=g) * 0.01).half()
        sd[f"{name}.alpha"] = torch.tensor(float(rank) / 2).half()
    save_file(sd, path, metadata={"ss_network_dim": str(rank), "ss_network_alpha": str(rank / 2)})


def task_ds_resize(path, out, rank, threads=None):
    harness.set_threads(threads)
    import deltaspec as ds
    from deltaspec import ranks as R
    from deltaspec.io.write.sd import write_kohya
    from deltaspec.resize import resize

    t0, c0 = time.perf_counter(), time.process_time()
    res = resize(ds.load(path), R.policy("rank", rank))
    write_kohya(out, res.factors())
    return {"seconds": time.perf_counter() - t0, "cpu_s": time.process_time() - c0, "layers": len(res.layers)}


def task_kohya_resize(path, rank, per_shape, threads=None):
    torch = harness.set_threads(threads)
    from safetensors.torch import load_file

    t0 = time.perf_counter()
    sd = {k: v.float() for k, v in load_file(path).items()}
    load_s = time.perf_counter() - t0
    seen, times = Counter(), {}
    for name, shape in sdxl_modules():
        if seen[shape] >= per_shape:
            continue
        seen[shape] += 1
        a = time.perf_counter()
        scale = float(sd[f"{name}.alpha"]) / sd[f"{name}.lora_down.weight"].shape[0]
        W = sd[f"{name}.lora_up.weight"] @ sd[f"{name}.lora_down.weight"]
        U, S, Vh = torch.linalg.svd(W)  # full_matrices=True, as resize_lora.py
        up, down = U[:, :rank] @ torch.diag(S[:rank]), Vh[:rank]
        _ = float(scale * rank), up.contiguous(), down.contiguous()
        times.setdefault(str(shape), []).append(time.perf_counter() - a)
    return {"load_s": load_s, "per_shape_s": {k: sum(v) / len(v) for k, v in times.items()}}


def build_unets(d, n_layers, seed=0):
    """Two folders (base, tuned) with n_layers SDXL attention linears; tuned = base + low rank + noise."""
    import torch
    from safetensors.torch import save_file

    mods = unet_linears()
    mods = mods if not n_layers else mods[:: max(1, len(mods) // n_layers)][:n_layers]
    g = torch.Generator().manual_seed(seed)
    base, tuned = {}, {}
    for n, (o, i) in mods:
        W = torch.randn(o, i, generator=g) * 0.02
        base[n + ".weight"] = W.half()
        tuned[n + ".weight"] = (W + torch.randn(o, 16, generator=g) @ torch.randn(16, i, generator=g) * 1e-3
                                + torch.randn(o, i, generator=g) * 1e-4).half()
    for name, sd in (("base", base), ("tuned", tuned)):
        os.makedirs(os.path.join(d, name), exist_ok=True)
        save_file(sd, os.path.join(d, name, "diffusion_pytorch_model.safetensors"))
        with open(os.path.join(d, name, "config.json"), "w") as f:
            json.dump({"_class_name": "UNet2DConditionModel"}, f)
    return {"layers": len(mods), "largest_dw_bytes": max(o * i for _, (o, i) in mods) * 4,
            "all_dw_bytes": sum(o * i for _, (o, i) in mods) * 4}


class _Measure:
    """Peak memory of what runs between start() and stop(), above the process's state at start()."""

    def start(self):
        self.rss0, self.anon0 = harness.status_bytes("VmRSS"), harness.status_bytes("RssAnon")
        self.reset = harness.reset_peak_rss()
        self.mon = harness.AnonPeak()
        self.t0, self.c0 = time.perf_counter(), time.process_time()

    def stop(self) -> dict:
        r = {"seconds": time.perf_counter() - self.t0, "cpu_s": time.process_time() - self.c0}
        anon = self.mon.stop()
        r.update(baseline_rss_bytes=self.rss0, baseline_anon_bytes=self.anon0, hwm_reset=self.reset,
                 hwm_above_bytes=harness.status_bytes("VmHWM") - self.rss0 if self.reset else None,
                 anon_above_bytes=anon - self.anon0)
        return r


def task_ds_extract(d, rank, out, threads=None):
    harness.set_threads(threads)
    import safetensors.torch  # noqa: F401

    import deltaspec as ds
    import deltaspec.io.write.sd  # noqa: F401
    import deltaspec.resize  # noqa: F401
    import deltaspec.spectra  # noqa: F401
    from deltaspec_cli.extract import extract

    base, tuned = os.path.join(d, "base"), os.path.join(d, "tuned")
    ds.load(tuned, base=base)  # headers only: the readers' lazy imports happen before the baseline
    m = _Measure()
    m.start()
    extract.main(["--base", base, "--tuned", tuned, "--component", "unet", "--to", "kohya", "--rank", str(rank),
                  "-o", out, "-q", "--force"], standalone_mode=False)
    return m.stop()


def task_kohya_extract(d, rank, threads=None):
    torch = harness.set_threads(threads)
    from safetensors.torch import load_file

    m = _Measure()
    m.start()
    b = {k: v.float() for k, v in load_file(os.path.join(d, "base", "diffusion_pytorch_model.safetensors")).items()}
    t = {k: v.float() for k, v in load_file(os.path.join(d, "tuned", "diffusion_pytorch_model.safetensors")).items()}
    diffs = {k: t[k] - b[k] for k in b}  # extract_lora_from_models.py keeps every ΔW, then SVDs them
    out = {}
    for k, W in diffs.items():
        U, S, Vh = torch.linalg.svd(W)
        out[k] = ((U[:, :rank] @ torch.diag(S[:rank])).contiguous(), Vh[:rank].contiguous())
    return m.stop()


TASKS = {"ds_resize": task_ds_resize, "kohya_resize": task_kohya_resize, "ds_extract": task_ds_extract,
         "kohya_extract": task_kohya_extract}


def resize_comparison(a, td) -> dict:
    src = os.path.join(td, "sdxl_kohya.safetensors")
    build_kohya(src, a.rank)
    mods = sdxl_modules()
    counts = Counter(s for _, s in mods)
    r = {"modules": len(mods), "distinct_shapes": len(counts), "file_bytes": os.path.getsize(src)}
    ds_run = harness.worker(HERE, "ds_resize", path=src, out=os.path.join(td, "out.safetensors"), rank=a.new_rank,
                            threads=a.threads)
    ko = harness.worker(HERE, "kohya_resize", path=src, rank=a.new_rank, per_shape=a.kohya_per_shape,
                        threads=a.threads)
    ko_total = ko["load_s"] + sum(ko["per_shape_s"][str(s)] * c for s, c in counts.items())
    r.update(ds_resize=ds_run, kohya_resize=ko, kohya_resize_extrapolated_s=ko_total)
    print(f"resize SDXL kohya LoRA ({len(mods)} modules, {len(counts)} shapes, {harness.mb(r['file_bytes'])} fp16), "
          f"rank {a.rank} → {a.new_rank}:")
    print(f"  deltaspec  {ds_run['seconds']:8.2f} s  peak RSS {harness.mb(ds_run['vmhwm_bytes'])}")
    print(f"  kohya alg. {ko_total:8.2f} s  (extrapolated from {a.kohya_per_shape} module(s) per shape; peak RSS "
          f"{harness.mb(ko['vmhwm_bytes'])} for that subset)")
    print(f"  ratio      {ko_total / ds_run['seconds']:8.1f}x", flush=True)
    return r


def extract_comparison(a, td, n_layers) -> dict:
    ed = os.path.join(td, f"unets{n_layers}")
    info = build_unets(ed, n_layers)
    d = harness.worker(HERE, "ds_extract", d=ed, rank=a.extract_rank, out=os.path.join(ed, "x.safetensors"),
                       threads=a.threads)
    k = None if a.skip_kohya_extract else harness.worker(HERE, "kohya_extract", d=ed, rank=a.extract_rank,
                                                           threads=a.threads)
    shutil.rmtree(ed, ignore_errors=True)
    mb = lambda x: harness.mb(x) if x is not None else "n/a"
    print(f"extract {info['layers']} SDXL UNet attention linears (fp16 folders), rank {a.extract_rank}; ΔW in float32: "
          f"largest {harness.mb(info['largest_dw_bytes'])}, all {harness.mb(info['all_dw_bytes'])}")
    for name, x in (("deltaspec", d), ("kohya alg.", k or {})):
        if not x:
            continue
        print(f"  {name:<10} {x['seconds']:8.2f} s (CPU {x['cpu_s']:.2f} s)  peak above baseline: VmHWM "
              f"{mb(x['hwm_above_bytes'])}, RssAnon {mb(x['anon_above_bytes'])} "
              f"({x['anon_above_bytes'] / info['largest_dw_bytes']:.1f}x the largest ΔW)")
    if k:
        print(f"  ratio      {k['seconds'] / d['seconds']:8.2f}x time, {k['anon_above_bytes'] / d['anon_above_bytes']:.1f}x "
              f"RssAnon increment", flush=True)
    print(f"  # {harness.machine_line()}", flush=True)
    return {**info, "deltaspec": d, "kohya": k}


def main():
    if harness.worker_main(TASKS):
        return
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rank", type=int, default=32, help="rank of the synthetic kohya LoRA")
    ap.add_argument("--new-rank", type=int, default=8)
    ap.add_argument("--kohya-per-shape", type=int, default=1, help="baseline modules timed per distinct shape")
    ap.add_argument("--extract-layers", default="6,24,96",
                    help="comma-separated counts of UNet attention linears in the folders (0: all 722)")
    ap.add_argument("--extract-rank", type=int, default=32)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--skip-resize", action="store_true", help="only the extract comparison")
    ap.add_argument("--skip-kohya-extract", action="store_true", help="extract: measure deltaspec only")
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    print(f"# {harness.machine_line()}", flush=True)
    td = tempfile.mkdtemp(prefix="bench_sd_")
    r = {} if a.skip_resize else resize_comparison(a, td)
    r["extract"] = [extract_comparison(a, td, int(n)) for n in a.extract_layers.split(",")]
    if a.json:
        with open(a.json, "w") as f:
            json.dump(r, f, indent=1)


if __name__ == "__main__":
    main()
