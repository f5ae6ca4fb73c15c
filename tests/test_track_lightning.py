"""The Lightning SpectraCallback in a real Lightning fit with its CSVLogger (tiny model, CPU, seconds).

Lightning is imported inside the test, not at collection: importing it imports matplotlib.pyplot, which
would change how every later figure of the session is made (plots register with pyplot once it is in use)."""
import csv
import math

import numpy as np
import pytest
import torch

from deltaspec import metrics as M
from deltaspec.integrations import record
from deltaspec.train.layers import wrap


def regressor(L):
    class Regressor(L.LightningModule):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.net = torch.nn.Sequential(torch.nn.Linear(16, 24), torch.nn.Tanh(), torch.nn.Linear(24, 8))
            wrap(self.net, ["0", "2"], "multilora", rank=4, alpha=8.0, heads=2)

        def training_step(self, batch, _):
            x, y = batch
            return torch.nn.functional.mse_loss(self.net(x), y)

        def configure_optimizers(self):
            return torch.optim.Adam([p for p in self.parameters() if p.requires_grad], lr=0.05)

    return Regressor()


def truth(layer, n_ref):
    """Normalized entropy of the materialised ΔW, numpy float64 SVD (independent of deltaspec's SVD)."""
    s = np.linalg.svd(layer.delta_weight().detach().double().numpy(), compute_uv=False)
    return M.normalized_entropy(s, n_ref)


def test_csv_logger_receives_spectra(tmp_path):
    L = pytest.importorskip("lightning")
    from lightning.pytorch.loggers import CSVLogger

    from deltaspec.integrations.lightning import SpectraCallback

    g = torch.Generator().manual_seed(1)
    data = torch.utils.data.TensorDataset(torch.randn(32, 16, generator=g), torch.randn(32, 8, generator=g))
    module = regressor(L)
    trainer = L.Trainer(max_steps=4, logger=CSVLogger(tmp_path), callbacks=[SpectraCallback(every=2)],
                        enable_progress_bar=False, enable_checkpointing=False, enable_model_summary=False,
                        accelerator="cpu", log_every_n_steps=50)
    trainer.fit(module, torch.utils.data.DataLoader(data, batch_size=8))
    with open(f"{trainer.log_dir}/metrics.csv") as f:
        rows = [r for r in csv.DictReader(f) if r.get("spectra/net.0/normalized_entropy")]
    assert [int(r["step"]) for r in rows] == [2, 4]
    for mod, layer in (("net.0", module.net[0]), ("net.2", module.net[2])):
        got = float(rows[-1][f"spectra/{mod}/normalized_entropy"])
        assert math.isclose(got, truth(layer, min(layer.base.weight.shape)), rel_tol=1e-5)
    _, points = record.read(f"{trainer.log_dir}/{record.TRAJECTORY_FILE}")
    assert [s for s, _ in points] == [2, 4]
