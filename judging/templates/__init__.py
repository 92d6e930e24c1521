"""Packaged judge templates (YAML data files); a package so setuptools ships `*.yaml` here."""
