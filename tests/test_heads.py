"""Per-head anatomy of MultiLoRA (`deltaspec heads`, `ds.heads`) against a float64 numpy reference that
materialises every head's ΔW_i = (α/r)·diag(s_i)·B_i·A_i from the raw tensors."""
import functools
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from safetensors.numpy import load_file

import deltaspec as ds
from deltaspec.head_anatomy import anatomy, head_factors
from deltaspec.updates import SumOfLowRank
from deltaspec_cli.main import cli
from io_fixtures import write_mtl

S = Path(__file__).resolve().parent.parent / "sample_checkpoints"


def reference(Ws, scalings=None, zero_tol=0.01):
    """Everything `heads` reports for one layer, from the materialised float64 head updates `Ws`."""
    n = len(Ws)
    own = np.array([np.sum(W ** 2) for W in Ws])
    total = np.sum(sum(Ws) ** 2)
    svd = [np.linalg.svd(W) for W in Ws]
    sig = [s for _, s, _ in svd]
    top = max(s[0] for s in sig)  # the cut is relative to the layer's largest head
    ranks = [int((s > max(W.shape) * np.finfo(np.float32).eps * top).sum()) for W, s in zip(Ws, sig)]
    U = [u[:, :k] for (u, _, _), k in zip(svd, ranks)]
    V = [vt[:k].T for (_, _, vt), k in zip(svd, ranks)]
    ocol, orow, ccol, crow = (np.eye(n) for _ in range(4))
    for i in range(n):
        for j in range(n):
            for o, c, B in ((ocol, ccol, U), (orow, crow, V)):
                M = B[i].T @ B[j]
                o[i, j] = np.sum(M ** 2) / min(ranks[i], ranks[j])
                c[i, j] = np.linalg.svd(M, compute_uv=False)[0]
    shares = own / own.sum()
    out = {"shares": shares, "sigma": sig, "ranks": ranks, "interference": (total - own.sum()) / total,
           "effective_heads": math.exp(-np.sum(shares * np.log(shares))), "overlap_col": ocol, "overlap_row": orow,
           "cos_col": ccol, "cos_row": crow, "frobenius_norm": math.sqrt(total)}
    if scalings is not None:
        a = np.abs(np.asarray(scalings, dtype=np.float64)).reshape(n, -1)
        out["mean_abs_s"] = a.mean(1)
        out["frac_s_small"] = (a <= zero_tol * a.max()).mean(1)
    return out


def check_layer(lay, ref, tol):
    assert np.allclose(lay.shares, ref["shares"], rtol=tol, atol=tol)
    for i, s in enumerate(ref["sigma"]):
        k = len(lay.singular_values[i])
        assert np.allclose(lay.singular_values[i], s[:k], rtol=tol, atol=tol * s[0])
        assert np.all(s[k:] <= 1e-9 * s[0])  # the rest of ΔW_i's spectrum is zero
    assert list(lay.ranks) == ref["ranks"]
    m = lay.metrics
    assert m["interference"] == pytest.approx(ref["interference"], abs=tol)
    assert m["effective_heads"] == pytest.approx(ref["effective_heads"], rel=tol)
    assert m["frobenius_norm"] == pytest.approx(ref["frobenius_norm"], rel=tol)
    assert m["top_head_share"] == pytest.approx(ref["shares"].max(), rel=tol)
    for key in ("overlap_col", "overlap_row", "cos_col", "cos_row"):
        assert np.allclose(getattr(lay, key), ref[key], atol=tol), key
    iu = np.triu_indices(len(ref["shares"]), 1)
    assert m["overlap_col"] == pytest.approx(ref["overlap_col"][iu].mean(), abs=tol)
    assert m["max_cos_row"] == pytest.approx(ref["cos_row"][iu].max(), abs=tol)
    if "mean_abs_s" in ref:
        assert np.allclose(lay.mean_abs_s, ref["mean_abs_s"], rtol=1e-6)
        assert np.allclose(lay.frac_s_small, ref["frac_s_small"])


@functools.lru_cache(maxsize=None)
def sample_refs():
    """{layer name: reference} of the shipped MultiLoRA sample (computed once: numpy is slow on a busy CPU)."""
    return {name: reference(Ws, Sc) for name, (Ws, Sc) in deltaspec_layer_refs(S / "multilora").items()}


def deltaspec_layer_refs(path):
    """{module name: (float64 head updates, raw scalings)} read straight from the safetensors file."""
    cfg = json.loads((Path(path) / "adapter_config.json").read_text())
    t = load_file(str(Path(path) / "adapter_model.safetensors"))
    out = {}
    for k in t:
        if k.endswith(".lora_A.weight"):
            mod = k[len("base_model.model."):-len(".lora_A.weight")]
            A = t[k].astype(np.float64)
            B = t[k.replace("lora_A", "lora_B")].astype(np.float64)
            Sc = t[k.replace("lora_A.weight", "lora_scaling")].astype(np.float64)
            c = cfg["lora_alpha"] / A.shape[1]
            out[mod] = ([c * Sc[i].reshape(-1, 1) * (B[i] @ A[i]) for i in range(len(A))], Sc)
    return out


@pytest.mark.parametrize("dtype,tol", [("float32", 2e-5), ("float64", 1e-10)])
def test_sample_multilora_matches_float64_reference(dtype, tol):
    res = ds.heads(S / "multilora", device="cpu", dtype=dtype, progress=False)
    refs = sample_refs()
    assert [lay.name for lay in res] and {lay.name for lay in res} == set(refs)
    for lay in res:
        check_layer(lay, refs[lay.name], tol)


@pytest.mark.parametrize("vector", [True, False])
def test_random_factors_rectangular_and_batched(vector, monkeypatch):
    """Random heads of a 40×24 layer (and of a 24×40 one), several layers batched in one call, and the
    same layers split into single-layer batches: identical answers, equal to the reference."""
    g = torch.Generator().manual_seed(1)
    n, r = 3, 5
    updates, refs = [], []
    for d_out, d_in in ((40, 24), (24, 40), (40, 24)):
        A, B = torch.randn(n, r, d_in, generator=g, dtype=torch.float64), torch.randn(n, d_out, r, generator=g, dtype=torch.float64)
        B[1] = B[0] + 0.3 * B[1]  # heads 0 and 1 alike: large interference and overlap
        A[1] = A[0] + 0.3 * A[1]
        s = torch.randn(n, d_out, generator=g, dtype=torch.float64) if vector else torch.randn(n, generator=g, dtype=torch.float64)
        s[1] = s[0]
        terms = [(0.5 * (s[i] if vector else float(s[i])), B[i], A[i]) for i in range(n)]
        updates.append(SumOfLowRank(terms))
        refs.append(reference([t[0].reshape(-1, 1).numpy() * (t[1] @ t[2]).numpy() if vector
                               else t[0] * (t[1] @ t[2]).numpy() for t in terms]))
    for lay_u, ref in zip(updates, refs):
        L, R, rr = head_factors(lay_u)
        st = anatomy(L[None], R[None], rr, max(lay_u.shape) * np.finfo(np.float32).eps)
        assert np.allclose(st.sigma[0], np.stack([s[:r] for s in ref["sigma"]]), rtol=1e-10)
        assert np.allclose(st.overlap_col[0], ref["overlap_col"], atol=1e-10)
        assert np.allclose(st.cos_row[0], ref["cos_row"], atol=1e-10)
        total = st.inner[0].sum()
        assert (total - np.trace(st.inner[0])) / total == pytest.approx(ref["interference"], abs=1e-12)
        assert abs(ref["interference"]) > 0.1 and ref["overlap_col"][0, 1] > 0.5  # the test is not trivial
    # the same three layers through two batches (first and third share a shape) and through a tiny budget
    L = torch.stack([head_factors(updates[i])[0] for i in (0, 2)])
    R = torch.stack([head_factors(updates[i])[1] for i in (0, 2)])
    st = anatomy(L, R, r, 40 * np.finfo(np.float32).eps)
    assert np.allclose(st.inner[1], anatomy(L[1:], R[1:], r, 40 * np.finfo(np.float32).eps).inner[0], rtol=1e-12)


def test_budget_does_not_change_results(monkeypatch):
    import deltaspec.head_analysis as ha

    whole = ds.heads(S / "multilora", device="cpu", dtype="float64", progress=False)
    monkeypatch.setattr(ha, "CHUNK_BYTES", 1)  # every layer its own batch
    single = ds.heads(S / "multilora", device="cpu", dtype="float64", progress=False)
    for a, b in zip(whole, single):
        assert np.allclose(a.inner, b.inner, rtol=1e-12) and np.allclose(a.overlap_row, b.overlap_row, atol=1e-12)


def test_mtl_layout_matches_reference(tmp_path):
    raw = write_mtl(tmp_path / "run" / "checkpoint" / "final_checkpoint.pt", n=3, r=4)
    res = ds.heads(tmp_path / "run", lora_alpha=16, device="cpu", progress=False)
    assert res.source["format"] == "mtl-multilora" and len(res) == len(raw)
    for lay in res:
        A, B, Sc = (t.double().numpy() for t in raw[lay.name])
        Ws = [(16 / 4) * Sc[i].reshape(-1, 1) * (B[i] @ A[i]) for i in range(3)]
        check_layer(lay, reference(Ws, Sc), 2e-5)


def test_zero_head_and_zero_update():
    """A head whose scalings are all 0 carries nothing: share 0, its overlaps undefined (NaN) and left
    out of the means; an all-zero update (an untrained adapter) has NaN ratios, never a crash."""
    g = torch.Generator().manual_seed(0)
    A, B = torch.randn(3, 2, 16, generator=g), torch.randn(3, 12, 2, generator=g)
    s = torch.ones(3, 12)
    s[2] = 0
    res_u = SumOfLowRank([(s[i], B[i], A[i]) for i in range(3)], scalings=s)
    from deltaspec.head_results import HeadLayer

    def layer(u):
        L, R, r = head_factors(u)
        st = anatomy(L[None], R[None], r, 16 * np.finfo(np.float32).eps)
        from deltaspec.head_anatomy import scaling_stats

        ma, fr = scaling_stats(u.scalings, 3)
        return HeadLayer("x.0.q", "q", 0, (12, 16), 2, st.sigma[0], st.inner[0], st.ranks[0], st.overlap_col[0],
                         st.overlap_row[0], st.cos_col[0], st.cos_row[0], ma, fr)

    lay = layer(res_u)
    assert lay.shares[2] == 0 and lay.ranks[2] == 0 and math.isnan(lay.overlap_col[0, 2])
    assert math.isfinite(lay.metrics["overlap_col"]) and lay.metrics["effective_heads"] < 2.01
    assert list(lay.frac_s_small) == [0, 0, 1]
    zero = layer(SumOfLowRank([(torch.zeros(12), B[i], A[i]) for i in range(3)], scalings=torch.zeros(3, 12)))
    assert all(math.isnan(zero.metrics[k]) for k in ("effective_heads", "interference", "overlap_col"))
    assert list(zero.frac_s_small) == [1, 1, 1]
    json.dumps(zero.to_dict(), allow_nan=False)


def run(*args, code=0):
    r = CliRunner().invoke(cli, [str(a) for a in args], env={"COLUMNS": "80"})
    assert r.exit_code == code, r.output
    return r


@pytest.mark.parametrize("ckpt,words", [("lora", "a LoRA-style adapter has one head"), ("full", "a full model has no heads")])
def test_lora_or_full_is_a_one_line_error(ckpt, words):
    r = run("heads", S / ckpt, code=2)
    assert r.output.count("\n") == 1 and r.output.startswith(f"error: {S / ckpt}: {words}")
    assert "MultiLoRA checkpoint" in r.output
    with pytest.raises(ds.DeltaspecError, match="heads needs a MultiLoRA"):
        ds.heads(ds.load(S / "lora"))


def test_cli_table_json_csv(tmp_path):
    out = run("heads", S / "multilora", "-q").output
    assert max(len(x) for x in out.splitlines()) <= 80 and "L3.v_proj" in out and "mean per module type" in out
    j = tmp_path / "h.json"
    run("heads", S / "multilora", "--modules", "k_proj,v_proj", "-o", j)
    d = json.loads(j.read_text())
    back = ds.HeadsResult.from_dict(d)
    api = ds.heads(S / "multilora", modules=["k_proj", "v_proj"], device="cpu", progress=False)
    assert len(back) == 8 and back[0].name == api[0].name
    for a, b in zip(back, api):
        assert a.metrics == pytest.approx(b.metrics, nan_ok=True)
    assert len(d["layers"][0]["per_head"]) == 4 and len(d["layers"][0]["per_head"][0]["singular_values"]) == 4
    c = run("heads", S / "multilora", "--layers", "0", "--format", "csv").output.splitlines()
    assert len(c) == 1 + 4 * 4 and c[0].startswith("name,module,layer,head,share")
    shares = [float(x.split(",")[4]) for x in c[1:5]]
    assert sum(shares) == pytest.approx(1.0)


def test_api_result_house_style():
    res = ds.heads(S / "multilora", layers=[1], device="cpu", progress=False)
    assert repr(res).startswith("<HeadsResult multilora") and "<table>" in res._repr_html_()
    assert res["model.layers.1.self_attn.q_proj"] is res[0] and "<table>" in res[0]._repr_html_()
    rows = res.head_table()
    assert len(rows) == 16
    assert len(res.select(modules=["o_proj"])) == 1


@pytest.mark.parametrize("d_out,d_in,ranks", [(30, 20, (2, 3, 1)), (6, 25, (4, 4, 4))])
def test_unequal_ranks_and_layers_narrower_than_the_stacked_rank(d_out, d_in, ranks):
    """Heads of different rank (zero-padded) and d_out < n·r (the stacked QR is wide): still exact."""
    g = torch.Generator().manual_seed(3)
    terms = [(float(torch.randn(1, generator=g)), torch.randn(d_out, k, generator=g, dtype=torch.float64),
              torch.randn(k, d_in, generator=g, dtype=torch.float64)) for k in ranks]
    ref = reference([c * (B @ A).numpy() for c, B, A in terms])
    L, R, r = head_factors(SumOfLowRank(terms))
    st = anatomy(L[None], R[None], r, max(d_out, d_in) * np.finfo(np.float32).eps)
    assert list(st.ranks[0]) == ref["ranks"] == [min(k, d_out) for k in ranks]
    for i, s in enumerate(ref["sigma"]):
        k = ref["ranks"][i]
        assert np.allclose(st.sigma[0][i][:k], s[:k], rtol=1e-10)
    assert np.allclose(st.inner[0], [[np.sum((a * (B @ A)).numpy() * (c * (Bj @ Aj)).numpy()) for c, Bj, Aj in terms]
                                     for a, B, A in terms], rtol=1e-10)
    for key in ("overlap_col", "overlap_row", "cos_col", "cos_row"):
        assert np.allclose(getattr(st, key)[0], ref[key], atol=1e-9), key
