"""judging's public names, and the template it ships as package data (import direction: tests/test_imports.py)."""

import judging


def test_public_names_are_exported():
    assert sorted(judging.__all__) == sorted(set(judging.__all__))
    for name in judging.__all__:
        assert getattr(judging, name) is not None


def test_packaged_template_ships_as_package_data():
    from importlib import resources

    assert (resources.files("judging") / "templates" / "additive_5pt.yaml").is_file()
