"""Every package folder of deltaspec is listed in pyproject.toml, so a non-editable install has them all
(the list is explicit because cli/ installs as deltaspec_cli)."""
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_every_package_is_installed():
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "deltaspec").rglob("__init__.py")}
    assert found - listed == set(), f"package folders missing from pyproject.toml: {sorted(found - listed)}"
