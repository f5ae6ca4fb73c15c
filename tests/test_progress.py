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
