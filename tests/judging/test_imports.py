"""Import direction: judging uses generation and dpo.data only, never the orchestration layers."""

import subprocess
import sys

import judging


def test_public_names_are_exported():
    assert sorted(judging.__all__) == sorted(set(judging.__all__))
    for name in judging.__all__:
        assert getattr(judging, name) is not None


def test_importing_judging_leaves_orchestration_out():
    code = (
        "import sys, judging; "
        "bad = [m for m in ('prefect', 'mlflow', 'pipeline', 'flows') if m in sys.modules]; "
        "print(','.join(bad))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_packaged_template_ships_as_package_data():
    from importlib import resources

    assert (resources.files("judging") / "templates" / "additive_5pt.yaml").is_file()
