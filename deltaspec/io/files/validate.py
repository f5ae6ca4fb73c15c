"""Checked reading of JSON configs: every value a reader uses goes through one of these.

A bad value is a one-line FormatError `<file>: <key>: <problem>` (the CLI prints `error: …`, exit 2),
never a traceback or a silently wrong scale: `lora_alpha` null / "16" / NaN / 1e300, a regex that
does not compile in `alpha_pattern`, `init_r` "abc", a flag stored as the string "false", a JSON
file nested deeper than Python can parse.
"""
from __future__ import annotations

import json
import math
import re
from pathlib import Path

from ...errors import FormatError, reason

# |scale| above this makes σ² of an ordinary update overflow float32 (σ₁ ≤ |s|·‖B‖·‖A‖); no real
# adapter comes near it (α/r is ~1e-3…1e3), so a larger value is a broken config, not a choice.
MAX_SCALE = 1e12
_MISSING = object()


def read_json(path, what: str = "config") -> dict:
    """A JSON object from `path`; unreadable, non-JSON, too deeply nested or non-object → FormatError."""
    try:
        with open(path) as f:
            cfg = json.load(f)
    except RecursionError:
        raise FormatError(f"{path}: not a readable JSON {what} (nested too deeply to parse)") from None
    except (OSError, ValueError) as e:
        raise FormatError(f"{path}: not a readable JSON {what} ({reason(e)})") from None
    if not isinstance(cfg, dict):
        raise FormatError(f"{path}: expected a JSON object, found {type(cfg).__name__}")
    return cfg


def _bad(file, key: str, problem: str) -> FormatError:
    return FormatError(f"{file}: {key}: {problem}")


def _show(v) -> str:
    s = json.dumps(v) if isinstance(v, (str, list, dict)) or v is None else repr(v)
    return s if len(s) <= 40 else s[:37] + "..."


def number(value, file, key: str) -> float:
    """A finite real number (JSON int or float, not a bool, not a string)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _bad(file, key, f"expected a number, got {_show(value)}")
    if isinstance(value, int) and abs(value) > 10 ** 300:  # float() of a huge JSON integer overflows
        raise _bad(file, key, "number too large")
    x = float(value)
    if not math.isfinite(x):
        raise _bad(file, key, f"expected a finite number, got {x}")
    return x


def get_number(cfg: dict, key: str, file, default=_MISSING) -> float:
    """cfg[key] as a finite number; a missing key gives `default` (an error if none is given). An
    explicit null is an error: PEFT itself would fail on it (α/r with α = None)."""
    if key not in cfg:
        if default is _MISSING:
            raise _bad(file, key, "missing (a number is needed)")
        return default
    return number(cfg[key], file, key)


def integer(value, file, key: str, minimum: int = 1) -> int:
    """An integer ≥ minimum (12 and 12.0 are accepted, 12.5, "12" and true are not)."""
    x = number(value, file, key)
    if x != int(x) or x < minimum:
        raise _bad(file, key, f"expected an integer ≥ {minimum}, got {_show(value)}")
    return int(x)


def get_int(cfg: dict, key: str, file, default=_MISSING, minimum: int = 1) -> int:
    """cfg[key] as an integer ≥ minimum; missing gives `default`, null is an error (see get_number)."""
    if key not in cfg:
        if default is _MISSING:
            raise _bad(file, key, "missing (an integer is needed)")
        return default
    return integer(cfg[key], file, key, minimum)


def get_flag(cfg: dict, key: str, file, default: bool = False) -> bool:
    """true / false (null or missing: default). A string "false" would be truthy in Python: refused."""
    v = cfg.get(key)
    if v is None:
        return default
    if not isinstance(v, bool):
        raise _bad(file, key, f"expected true or false, got {_show(v)}")
    return v


def get_str(cfg: dict, key: str, file, default=None):
    v = cfg.get(key)
    if v is None:
        return default
    if not isinstance(v, str):
        raise _bad(file, key, f"expected a string, got {_show(v)}")
    return v


def get_patterns(cfg: dict, key: str, file, kind: str = "number") -> dict:
    """A PEFT `rank_pattern` / `alpha_pattern`: {regex: value}; every key must compile the way PEFT
    uses it (re.match(rf"(.*\\.)?({k})$", name)) and every value be a number (kind "int": an int ≥ 1)."""
    v = cfg.get(key)
    if v is None:
        return {}
    if not isinstance(v, dict):
        raise _bad(file, key, f"expected an object {{pattern: value}}, got {_show(v)}")
    out = {}
    for k, val in v.items():
        try:
            re.compile(k)  # first alone: a message whose positions refer to the user's pattern
            pat = re.compile(rf"(.*\.)?({k})$")
        except (re.error, RecursionError, OverflowError) as e:
            raise _bad(file, key, f"{_show(k)} is not a valid regular expression ({reason(e)})") from None
        sub = f"{key}[{_show(k)}]"
        out[pat] = integer(val, file, sub) if kind == "int" else number(val, file, sub)
    return out


def match_pattern(patterns: dict, name: str, default):
    """PEFT ≥ 0.15: the value of the first pattern (dict order) that matches `name`, else default."""
    for pat, value in patterns.items():
        if pat.match(name):
            return value
    return default


def get_str_list(cfg: dict, key: str, file) -> list:
    v = cfg.get(key)
    if v is None:
        return []
    if isinstance(v, str):
        return [v]
    if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
        raise _bad(file, key, f"expected a list of strings, got {_show(v)}")
    return v


def check_scale(scale: float, file, key: str, how: str) -> float:
    """The scale a reader computed (α/r, α/√r, …) must be finite and plausible (|s| ≤ MAX_SCALE)."""
    if not math.isfinite(scale) or abs(scale) > MAX_SCALE:
        raise _bad(file, key, f"gives scale {how} = {scale:.3g}, not a usable finite scale "
                              f"(|scale| ≤ {MAX_SCALE:.0e}; α/r is usually between 1e-3 and 1e3)")
    return scale


def model_config(*dirs) -> tuple[dict, Path | None]:
    """(config.json, its path) of the first directory that has one; ({}, None) if none does."""
    for d in dirs:
        if d is None:
            continue
        p = Path(d)
        p = p if p.is_dir() else p.parent
        if (p / "config.json").is_file():
            return read_json(p / "config.json", "model config (config.json)"), p / "config.json"
    return {}, None


def pattern_value(patterns: dict | None, name: str, default):
    """PEFT ≥ 0.15: first key k (dict order) with re.match(rf"(.*\\.)?({k})$", name)."""
    return match_pattern(get_patterns({"p": patterns}, "p", "<patterns>"), name, default)
