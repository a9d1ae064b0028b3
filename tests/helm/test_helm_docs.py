"""The README's cluster section and the packaged chart say and ship what the tests check."""

from __future__ import annotations

import re
import runpy
from pathlib import Path
from typing import Any

from chartkit import CHART_DIR, CI_DIR, ROOT, SUPPORTED

README = ROOT / "README.md"


def _cluster_section() -> str:
    text = README.read_text()
    assert "## Run on a cluster" in text
    return text.split("## Run on a cluster", 1)[1]


def test_docs_name_the_supported_versions_and_the_operator_install() -> None:
    text = _cluster_section()
    assert f"| Kubernetes | {SUPPORTED[0]} to {SUPPORTED[-1]} |" in text
    check = runpy.run_path(str(CHART_DIR / "files" / "check_crd.py"), run_name="check_crd")
    install = re.search(r'kubectl apply --server-side -k "\S+"', text)
    assert install is not None and install.group(0) in check["INSTALL"]
    for values_file in CI_DIR.glob("*.yaml"):
        assert values_file.name in text, values_file.name


def test_packaged_chart_ships_the_check_script_and_schema(helm: Any, tmp_path: Path) -> None:
    archive = helm.package(CHART_DIR, destination=tmp_path)
    with helm.Chart.load(archive) as packaged:
        names = {f["name"] for f in packaged.files}
        assert "files/check_crd.py" in names
        assert not [n for n in names if n.startswith("ci/")]
        assert packaged.schema is not None
        assert packaged.render({}, name="sail", namespace="sail")
