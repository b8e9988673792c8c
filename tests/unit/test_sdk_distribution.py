"""The SDK-only distribution (services/keyturn/sdk/pyproject.toml) builds with pip, holds every
module of keyturn.sdk and nothing of the services, and imports on its own."""

from __future__ import annotations

import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

from keyturn.config import REPO_ROOT

SDK = REPO_ROOT / "services" / "keyturn" / "sdk"


def test_the_sdk_builds_as_its_own_small_wheel_and_imports_without_the_services(tmp_path: Path) -> None:
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
            str(SDK),
        ],
        check=True,
        capture_output=True,
        cwd=tmp_path,
    )
    [wheel] = tmp_path.glob("keyturn_sdk-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        metadata = archive.read(next(n for n in names if n.endswith("/METADATA"))).decode()
        archive.extractall(tmp_path / "installed")
    modules = {f"keyturn/sdk/{p.relative_to(SDK)}" for p in SDK.rglob("*.py") if "__pycache__" not in p.parts}
    assert {n for n in names if not n.startswith("keyturn_sdk-")} == modules | {"keyturn/sdk/py.typed"}
    assert "keyturn/__init__.py" not in names  # keyturn stays a namespace the services' package can share
    assert "Requires-Dist: httpx" in metadata
    assert "Requires-Dist: aiokafka==0.14.0; extra == 'topic'" in metadata
    assert "Requires-Dist: langgraph==1.2.22; extra == 'langgraph'" in metadata
    assert "Requires-Dist: pydantic-ai-slim==2.68.0; extra == 'pydantic-ai'" in metadata

    # only the wheel and the site-packages (httpx), without the checkout's services on the path
    probe = (
        "import sys; sys.path[:0] = [sys.argv[1], sys.argv[2]]; "
        "import keyturn.sdk, importlib.util; "
        "assert keyturn.sdk.__file__.startswith(sys.argv[1]), keyturn.sdk.__file__; "
        "assert importlib.util.find_spec('keyturn.intake') is None; "
        "keyturn.sdk.Keyturn('http://127.0.0.1:1', token='t').close(); print('ok')"
    )
    site_packages = sysconfig.get_paths()["purelib"]
    answer = subprocess.run(
        [sys.executable, "-S", "-c", probe, str(tmp_path / "installed"), site_packages],
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin"},
    )
    assert answer.stdout.strip() == "ok", answer.stderr
