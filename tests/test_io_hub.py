"""Hub ids, Hub cache folders and the paths users point at: resolved, or an error saying what to pass.
A Hub cache is built in a temp dir; HF_HUB_OFFLINE=1 keeps every test off the network."""
import hashlib
import json
import os
import sys

import pytest
import torch
from safetensors.torch import save_file

sys.path.insert(0, os.path.dirname(__file__))
from deltaspec.errors import FormatError  # noqa: E402
from deltaspec.io import detect, load  # noqa: E402
from io_fixtures import LLAMA_LIKE, random_state, snapshot, write_sharded  # noqa: E402

Q = "model.layers.0.self_attn.q_proj"
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def adapter_files(d):
    d.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(0)
    save_file({f"base_model.model.{Q}.lora_A.weight": torch.randn(4, 32, generator=g),
               f"base_model.model.{Q}.lora_B.weight": torch.randn(32, 4, generator=g)}, d / "adapter_model.safetensors")
    (d / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 4, "lora_alpha": 8}))
    return d


def cache_repo(cache, repo_id, make_files, commit=COMMIT, ref="main"):
    """Lay out `models--org--name` like huggingface_hub does: blobs, snapshots/<commit> symlinks, refs/main."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    staging = cache / "staging" / repo_id
    make_files(staging)
    snap = repo / "snapshots" / commit
    snap.mkdir(parents=True)
    (repo / "blobs").mkdir(exist_ok=True)
    for f in staging.iterdir():
        data = f.read_bytes()
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        (snap / f.name).symlink_to(os.path.relpath(blob, snap))
    if ref:
        (repo / "refs").mkdir(exist_ok=True)
        (repo / "refs" / ref).write_text(commit)
    return repo, snap


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    cache = tmp_path / "hub"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return cache


def test_hub_id_from_the_local_cache(hub_cache, tmp_path):
    pytest.importorskip("huggingface_hub")
    repo, snap = cache_repo(hub_cache, "org/lora", adapter_files)
    before = snapshot(tmp_path)
    assert detect(snap) == "peft"
    u = load("org/lora")
    assert u.path == "org/lora" and [x.name for x in u] == [Q]
    assert torch.equal(u[0].load().materialize(), load(snap)[0].load().materialize())
    assert load(f"org/lora@{COMMIT}")[0].name == Q
    with pytest.raises(FormatError, match=r"org/missing: no such local path \(looked in .*\) and not available in the local Hub cache"):
        load("org/missing")
    assert snapshot(tmp_path) == before


def test_hub_id_as_base(hub_cache):
    pytest.importorskip("huggingface_hub")
    _, base = cache_repo(hub_cache, "org/base", lambda d: (d.mkdir(parents=True), save_file(
        random_state(LLAMA_LIKE, 0), d / "model.safetensors")))
    _, ft = cache_repo(hub_cache, "org/ft", lambda d: (d.mkdir(parents=True), save_file(
        random_state(LLAMA_LIKE, 1), d / "model.safetensors")), commit="f" * 40)
    u = load("org/ft", base="org/base")
    assert len(u) == 6 and u.base == str(base)


def test_hub_id_without_huggingface_hub(monkeypatch):
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # import fails as if not installed
    with pytest.raises(FormatError) as e:
        load("org/name")
    assert str(e.value) == (f"org/name: no such local path (looked in {os.getcwd()}); to read it as a Hugging Face "
                            "Hub id install the hub extra (pip install 'deltaspec[hub]'), or download it and pass "
                            "the local directory")


def test_cache_folder_resolves_to_refs_main(hub_cache, monkeypatch):
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # a cache folder needs no huggingface_hub
    repo, snap = cache_repo(hub_cache, "org/lora", adapter_files)
    other = repo / "snapshots" / ("e" * 40)
    adapter_files(other)
    assert detect(repo) == "peft"
    u = load(repo)
    assert u[0].source == str(snap / "adapter_model.safetensors")
    (repo / "refs" / "main").write_text("9" * 40)
    with pytest.raises(FormatError, match="refs/main names snapshot 9{40}, which is not in"):
        load(repo)
    (repo / "refs" / "main").unlink()
    with pytest.raises(FormatError, match="without refs/main and with 2 snapshots; pass one of them"):
        load(repo)


def test_index_shard_and_config_paths_mean_the_model(tmp_path):
    write_sharded(random_state(LLAMA_LIKE, 1), tmp_path / "ft", n=2)
    (tmp_path / "ft" / "config.json").write_text(json.dumps({"model_type": "llama"}))
    (tmp_path / "base").mkdir()
    save_file(random_state(LLAMA_LIKE, 0), tmp_path / "base" / "model.safetensors")
    want = [x.name for x in load(tmp_path / "ft", base=tmp_path / "base")]
    assert len(want) == 6
    for p in ("model.safetensors.index.json", "model-00001-of-00002.safetensors", "config.json"):
        assert [x.name for x in load(tmp_path / "ft" / p, base=tmp_path / "base")] == want, p
    assert len(load(tmp_path / "base", base=tmp_path / "ft" / "model.safetensors.index.json")) == 6


def test_named_adapter_subfolders(tmp_path):
    """PEFT saves a non-default adapter as out/<name>/: one is read (and said), several are listed."""
    adapter_files(tmp_path / "out" / "my_task")
    u = load(tmp_path / "out")
    assert [x.name for x in u] == [Q] and "subfolder my_task/" in u.warnings[0]
    assert load(tmp_path / "out", format="peft")[0].name == Q
    adapter_files(tmp_path / "out" / "other")
    with pytest.raises(FormatError) as e:
        load(tmp_path / "out")
    assert str(e.value) == (f"{tmp_path / 'out'}: holds 2 adapters in subfolders (my_task, other); "
                            f"pass one of them, e.g. {tmp_path / 'out' / 'my_task'}")
