"""The progress bar: fits the terminal, redraws in place, shows a state before the first layer is done,
the rate and the time left; silent when stderr is not a terminal."""
import io

import pytest

import deltaspec as ds
from deltaspec.progress import Progress, _clock
from test_results import make_updates


class Tty(io.StringIO):
    def isatty(self):
        return True


def frames(text: str) -> list[str]:
    return [f for f in text.replace("\n", "\r").split("\r") if f]


@pytest.mark.parametrize("width", [30, 50, 80, 200])
def test_every_frame_fits_the_width_and_redraws_in_place(width):
    s = Tty()
    p = Progress(12, "layers", stream=s, width=width, min_interval=0)
    assert s.getvalue().startswith("\r[") or width < 40  # drawn at once, before anything is done
    p.status("reading L0.q_proj_with_a_very_long_module_name_that_cannot_fit")
    for _ in range(12):
        p.update()
    p.close()
    out = s.getvalue()
    assert out.endswith("\n") and out.count("\n") == 1  # one line, redrawn with \r
    assert all(len(f) <= width - 1 for f in frames(out)), [len(f) for f in frames(out)]
    assert "12/12 layers" in frames(out)[-1] and "in 0:00" in frames(out)[-1]


def test_state_rate_and_eta():
    s = Tty()
    p = Progress(4, "layers", stream=s, width=100, min_interval=0)
    p.status("reading L0.q_proj")
    assert "0/4 layers" in frames(s.getvalue())[-1] and "reading L0.q_proj" in frames(s.getvalue())[-1]
    p.t0 -= 2.0  # pretend 2 s have passed
    p.update()
    last = frames(s.getvalue())[-1]
    assert "1/4 layers" in last and "s/layer" in last and "ETA 0:0" in last
    p.t0 -= 100.0
    p.update()
    assert "ETA 1:" in frames(s.getvalue())[-1]  # ~51 s per layer, two left
    assert _clock(3725) == "1:02:05" and _clock(65) == "1:05"


def test_silent_when_not_a_terminal():
    s = io.StringIO()
    p = Progress(3, stream=s)
    p.status("reading")
    p.update(3)
    p.close()
    assert s.getvalue() == ""


def test_analyze_shows_reading_and_svd_states(capsys):
    ds.analyze(make_updates(), device="cpu", progress=True)
    err = capsys.readouterr().err
    assert "reading L0.k_proj" in err and "SVD L0.down_proj" in err and "7/7 layers" in err
    assert max(len(f) for f in frames(err)) <= 79


def test_timer_redraws_while_a_step_runs():
    """No update() for 1.3 s (one long SVD): the timer still redraws, the clock and the step's time move."""
    import time

    s = Tty()
    p = Progress(4, "layers", stream=s, width=100, refresh=0.1)
    p.status("SVD L0.q_proj")
    time.sleep(2.3)
    p.close()
    shown = frames(s.getvalue())
    assert len(shown) >= 10, len(shown)  # redrawn on the timer, not only on status/update
    assert "0:02" in shown[-2] and "SVD L0.q_proj 2s" in shown[-2]  # elapsed and time in the step
    assert all(len(f) <= 99 for f in shown)


def test_no_timer_when_not_a_terminal():
    import threading

    before = threading.active_count()
    p = Progress(3, stream=io.StringIO(), refresh=0.05)
    assert threading.active_count() == before and p._timer is None
    p.close()


def test_each_input_is_labelled(monkeypatch):
    """ds.analyze(progress="lora"): shown on a terminal, with the input's name first on the line."""
    s = Tty()
    monkeypatch.setattr("sys.stderr", s)
    ds.analyze(make_updates(), device="cpu", progress="lora")
    ds.analyze(make_updates(), device="cpu", progress="full")
    shown = frames(s.getvalue())
    assert any(f.startswith("lora: [") for f in shown) and any(f.startswith("full: [") for f in shown)
    assert "full: [" in shown[-1] and "7/7 layers" in shown[-1]
    s2 = io.StringIO()  # not a terminal: a label does not force the bar on
    monkeypatch.setattr("sys.stderr", s2)
    ds.analyze(make_updates(), device="cpu", progress="lora")
    assert s2.getvalue() == ""


def test_train_evaluation_has_its_own_bar(monkeypatch):
    from deltaspec.train.model import load_model
    from deltaspec.train.trainer import evaluate, tokenizer_and_len

    s = Tty()
    monkeypatch.setattr("sys.stderr", s)
    from pathlib import Path

    model = load_model(str(Path(__file__).resolve().parents[1] / "sample_checkpoints" / "base")).eval()
    tok, max_len = tokenizer_and_len(model)
    acc = evaluate(model, 0, 1, max_len, "cpu", tok, progress=True)
    last = frames(s.getvalue())[-1]
    assert last.startswith("evaluation: [") and f"{len(acc)}/{len(acc)} prompts" in last
