"""Spectra over training: step checkpoints → trajectory numbers → figure. The numbers are checked against
metrics computed here from a float64 numpy SVD of ΔW rebuilt from the safetensors files by formula."""
import json
import shutil

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from click.testing import CliRunner  # noqa: E402
from safetensors.numpy import load_file  # noqa: E402

import deltaspec as ds  # noqa: E402
from deltaspec.errors import DeltaspecError  # noqa: E402
from deltaspec.plots.trajectory import checkpoint_steps, collect, step_of, trajectory, trajectory_data  # noqa: E402
from deltaspec.train import TrainConfig, run  # noqa: E402
from deltaspec.train.model import GPTConfig  # noqa: E402
from deltaspec_cli.main import cli  # noqa: E402

TINY = GPTConfig(d_model=32, n_layers=2, n_heads=2, d_ff=64, max_len=48)
KV = ("k_proj", "v_proj")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("traj")
    quiet = dict(progress=False, batch_size=4, eval_per_task=1)
    run(TrainConfig(method="pretrain", out=str(root / "base"), steps=2, model=TINY, **quiet), log=lambda s: None)
    for method in ("lora", "multilora", "full"):
        run(TrainConfig(method=method, out=str(root / method), base=str(root / "base"), rank=8, heads=4, steps=6,
                        save_every=2, lr=1e-2, **quiet), log=lambda s: None)
    return root


def delta(root, method, ckpt):
    """name → ΔW in float64, straight from the files (the formulas of docs/FORMATS.md)."""
    d = root / method / ckpt if ckpt else root / method
    if method == "full":
        w0, w = load_file(root / "base" / "model.safetensors"), load_file(d / "model.safetensors")
        return {k[:-7]: w[k].astype(np.float64) - w0[k] for k in w if k.endswith(("k_proj.weight", "v_proj.weight"))}
    cfg, sd = json.loads((d / "adapter_config.json").read_text()), load_file(d / "adapter_model.safetensors")
    scale, out = cfg["lora_alpha"] / cfg["r"], {}
    for k in sd:
        if k.endswith("lora_A.weight") and k.split(".")[-3] in KV:
            name = k[len("base_model.model."):-len(".lora_A.weight")]
            A, B = sd[k].astype(np.float64), sd[k.replace("lora_A", "lora_B")].astype(np.float64)
            if method == "lora":
                out[name] = scale * B @ A
            else:
                S = sd[k.replace("lora_A.weight", "lora_scaling")].astype(np.float64)
                out[name] = scale * sum(S[i][:, None] * (B[i] @ A[i]) for i in range(len(A)))
    return out


def by_hand(deltas):
    """Mean over layers of top-1 energy, H/ln(n), exp(H) (p = σ/Σσ) and ‖ΔW‖_F."""
    rows = []
    for D in deltas.values():
        s = np.linalg.svd(D, compute_uv=False)
        p = s[s > 0] / s.sum()
        H = -(p * np.log(p)).sum()
        rows.append([s[0] ** 2 / (s ** 2).sum(), H / np.log(min(D.shape)), np.exp(H), np.sqrt((s ** 2).sum())])
    return np.mean(rows, axis=0)


def test_collect_finds_every_step_and_the_final_one(runs):
    series = collect([runs / "lora", runs / "multilora"])
    assert list(series) == ["lora", "multilora"]
    assert [s for s, _ in series["lora"]] == [0, 2, 4, 6]  # checkpoint-0: the adapter before training
    assert series["lora"][-1][1] == str(runs / "lora")  # the run folder is the last step (train_info.json)
    # single checkpoints are points of the run they belong to
    assert collect([runs / "full" / "checkpoint-4", runs / "full" / "checkpoint-2"]) == {
        "full": [(2, str(runs / "full" / "checkpoint-2")), (4, str(runs / "full" / "checkpoint-4"))]}
    assert collect([runs / "base"]) == {"base": [(2, str(runs / "base"))]}  # pretraining: its train_info step


def test_runs_with_the_same_name_stay_apart(runs, tmp_path):
    other = tmp_path / "seed1" / "lora"
    shutil.copytree(runs / "lora", other)
    series = collect([runs / "lora", other])
    assert list(series) == ["lora", str(other)] and [s for s, _ in series[str(other)]] == [0, 2, 4, 6]


def no_step_model(runs, tmp_path):
    """A model folder with nothing that says its step."""
    d = tmp_path / "model"
    shutil.copytree(runs / "base", d)
    (d / "train_info.json").unlink()
    return d


def test_inputs_without_a_step_are_refused(runs, tmp_path):
    d = no_step_model(runs, tmp_path)
    with pytest.raises(DeltaspecError, match="no step checkpoints"):
        checkpoint_steps(d)
    with pytest.raises(DeltaspecError, match="cannot tell its training step"):
        collect([d])


def test_trajectory_numbers_equal_metrics_of_the_rebuilt_updates(runs):
    series = collect([runs / m for m in ("lora", "multilora", "full")])
    data = {lab: [(s, ds.analyze(p, base=str(runs / "base") if lab == "full" else None, modules=list(KV),
                                 device="cpu", progress=False)) for s, p in pts] for lab, pts in series.items()}
    traj = trajectory_data(data)
    for lab, pts in series.items():
        assert list(traj[lab]["step"]) == ([2, 4, 6] if lab == "full" else [0, 2, 4, 6])
        for i, (step, _) in enumerate(pts):
            if step == 0:  # ΔW = 0: its norm is drawn, the ratio metrics are undefined
                assert traj[lab]["frobenius_norm"][i] == 0 and np.isnan(traj[lab]["top1_energy"][i])
                continue
            want = by_hand(delta(runs, lab, None if step == 6 else f"checkpoint-{step}"))
            got = [traj[lab][m][i] for m in ("top1_energy", "normalized_entropy", "effective_rank", "frobenius_norm")]
            np.testing.assert_allclose(got, want, rtol=2e-4)
    # the figure draws exactly these numbers, one panel per metric, one line per method
    axes = trajectory(data, metrics=["top1_energy", "frobenius_norm"])
    assert len(axes) == 2 and [ln.get_label() for ln in axes[0].lines] == ["lora", "multilora", "full"]
    np.testing.assert_allclose(axes[1].lines[1].get_ydata(), traj["multilora"]["frobenius_norm"])
    np.testing.assert_array_equal(axes[1].lines[1].get_xdata(), [0, 2, 4, 6])
    assert axes[0].get_xlim() == axes[1].get_xlim()  # every panel on the same steps, step 0 included
    # axes from the caller; saved trajectory data (e.g. read back from JSON) draws the same lines
    fig = matplotlib.figure.Figure()
    ax = fig.add_subplot()
    as_json = json.loads(json.dumps({k: {m: v.tolist() for m, v in t.items()} for k, t in traj.items()}))
    assert trajectory(as_json, metrics="effective_rank", ax=ax) == [ax]
    np.testing.assert_allclose(ax.lines[2].get_ydata(), traj["full"]["effective_rank"])


def test_hf_trainer_checkpoints_and_saved_analyses(runs, tmp_path):
    """HF Trainer layout: output_dir/checkpoint-<N>/ with the adapter plus trainer state and optimizer files."""
    out = tmp_path / "hf_run"
    for step in (2, 4):
        d = out / f"checkpoint-{step}"
        shutil.copytree(runs / "lora" / f"checkpoint-{step}", d)
        (d / "train_info.json").unlink()
        (d / "trainer_state.json").write_text(json.dumps({"global_step": step, "log_history": []}))
        (d / "optimizer.pt").write_bytes(b"\0" * 16)
    (out / "runs").mkdir()  # tensorboard logs: not a checkpoint
    assert [s for s, _ in collect([out])["hf_run"]] == [2, 4]
    renamed = tmp_path / "last"
    shutil.copytree(out / "checkpoint-4", renamed)
    assert step_of(renamed) == 4  # no number in the name: trainer_state.json's global_step
    # saved analyses, named checkpoint-<N>.json or not (the step then comes from the recorded source path)
    saved = tmp_path / "saved"
    saved.mkdir()
    for step in (2, 4):
        r = CliRunner().invoke(cli, ["analyze", str(out / f"checkpoint-{step}"), "-o", str(saved / f"checkpoint-{step}.json")])
        assert r.exit_code == 0, r.output
    shutil.copy(saved / "checkpoint-4.json", tmp_path / "anything.json")
    # the run is the one the analyses were made from (their recorded source path), not the folder they sit in
    assert collect([saved / "checkpoint-2.json", saved / "checkpoint-4.json"]) == {
        "hf_run": [(2, str(saved / "checkpoint-2.json")), (4, str(saved / "checkpoint-4.json"))]}
    assert collect([tmp_path / "anything.json"]) == {"hf_run": [(4, str(tmp_path / "anything.json"))]}


def test_cli_plot_trajectory(runs, tmp_path):
    args = ["plot", "trajectory", str(runs / "lora"), str(runs / "multilora"), str(runs / "full"), "--base",
            str(runs / "base"), "--modules", "k_proj,v_proj", "--labels", "LoRA,MultiLoRA,FT", "-q"]
    for name in ("a.svg", "b.svg"):
        r = CliRunner().invoke(cli, [*args, "-o", str(tmp_path / name)])
        assert r.exit_code == 0, r.output
    assert (tmp_path / "a.svg").read_bytes() == (tmp_path / "b.svg").read_bytes()  # deterministic
    r = CliRunner().invoke(cli, [*args[:-3], "--labels", "A,B", "-o", str(tmp_path / "c.png")])
    assert r.exit_code == 2 and "--labels has 2 names for 3 runs" in r.output
    r = CliRunner().invoke(cli, ["plot", "trajectory", str(no_step_model(runs, tmp_path)), "-o", str(tmp_path / "d.png")])
    assert r.exit_code == 2 and r.output.count("\n") == 1 and "cannot tell its training step" in r.output
    json_in = tmp_path / "x.json"
    json_in.write_text(json.dumps({"layers": [], "source": {"path": str(tmp_path / "nowhere")}}))
    r = CliRunner().invoke(cli, ["plot", "trajectory", str(json_in), "-o", str(tmp_path / "e.png")])
    assert r.exit_code == 2 and "cannot tell its training step" in r.output
