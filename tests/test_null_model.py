"""sample_checkpoints/null_model.py: the init-factor decomposition of a MultiLoRA update and the
scalings-only null model. Ground truth: Adam's first step cannot move A and B (their gradient is 0 while
every scaling is 0), so after one step the initial factors carry all of ΔW; a scalings-only run never
moves them at all."""
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from deltaspec.train import TrainConfig, run
from deltaspec.train.null_model import write_initial
from deltaspec.train.model import GPTConfig

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("null_model", ROOT / "sample_checkpoints" / "null_model.py")
null_model = importlib.util.module_from_spec(spec)
spec.loader.exec_module(null_model)

TINY = GPTConfig(d_model=32, n_layers=2, n_heads=2, d_ff=64, max_len=48)


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    out = tmp_path_factory.mktemp("nm") / "base"
    run(TrainConfig(method="pretrain", out=str(out), steps=2, batch_size=4, model=TINY, progress=False), log=lambda s: None)
    return out


def train(base, out, steps):
    run(TrainConfig(method="multilora", out=str(out), base=str(base), rank=8, heads=4, steps=steps, batch_size=4,
                    lr=1e-2, eval_per_task=1, progress=False), log=lambda s: None)
    return out


def test_after_one_step_the_initial_factors_are_all_of_the_update(base, tmp_path):
    d = null_model.decompose(train(base, tmp_path / "one", 1), str(base))
    assert d["trained"]["init_energy_share"] == pytest.approx(1.0, abs=1e-9)
    assert d["trained"]["init_cos"] == pytest.approx(1.0, abs=1e-9)
    assert d["init factors"]["top1_energy"] == pytest.approx(d["trained"]["top1_energy"], abs=1e-9)
    assert d["learned part"]["frobenius_norm"] < 1e-9


def test_decomposition_against_numpy_and_the_rebuilt_init(base, tmp_path):
    """init share from the files in float64 numpy; the init rebuilt from the seed is the trainer's checkpoint-0."""
    run_dir = train(base, tmp_path / "six", 6)
    rebuilt = write_initial(run_dir, tmp_path / "rebuilt", base=str(base))
    saved, again = (load_file(d / "adapter_model.safetensors") for d in (run_dir / "checkpoint-0", rebuilt))
    assert saved.keys() == again.keys() and all(np.array_equal(saved[k], again[k]) for k in saved)
    assert json.loads((rebuilt / "train_info.json").read_text())["step"] == 0
    d = null_model.decompose(run_dir, str(base))
    assert 0 < d["trained"]["init_energy_share"] < 1
    sd = load_file(run_dir / "adapter_model.safetensors")
    cfg = json.loads((run_dir / "adapter_config.json").read_text())
    shares = []
    for layer in range(2):
        for mod in ("k_proj", "v_proj"):
            k = f"base_model.model.model.layers.{layer}.self_attn.{mod}"
            A, B, S = (sd[f"{k}.{t}"].astype(np.float64) for t in ("lora_A.weight", "lora_B.weight", "lora_scaling"))
            A0, B0 = (saved[f"{k}.{t}"].astype(np.float64) for t in ("lora_A.weight", "lora_B.weight"))
            c = cfg["lora_alpha"] / cfg["r"]
            full = c * sum(S[i][:, None] * (B[i] @ A[i]) for i in range(4))
            init = c * sum(S[i][:, None] * (B0[i] @ A0[i]) for i in range(4))
            shares.append(np.linalg.norm(init) ** 2 / np.linalg.norm(full) ** 2)
            assert not np.allclose(A0, A)  # A moved after six steps
    assert d["trained"]["init_energy_share"] == pytest.approx(np.mean(shares), rel=1e-6)  # float32 factors


def test_scalings_only_training_keeps_the_initial_factors(base, tmp_path):
    run_dir = train(base, tmp_path / "ref", 4)
    info = null_model.train_scalings_only(run_dir, str(base), str(tmp_path / "null"))
    assert info["variant"].startswith("scalings only") and set(info["per_task_accuracy"]) == {
        "arithmetic", "classify", "facts", "instruct"}
    d = null_model.decompose(tmp_path / "null", str(base))
    assert d["trained"]["init_energy_share"] == pytest.approx(1.0, abs=1e-9)
    assert d["trained"]["frobenius_norm"] > 0  # the scalings did learn
