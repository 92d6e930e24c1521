"""`python -m pipeline.config [README.md]`: rewrite the README's config reference (`make readme`)."""

import sys
from pathlib import Path

from pipeline.config.loading import DEFAULT_CONFIG
from pipeline.config.reference import update_readme

update_readme(Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_CONFIG.parents[1] / "README.md")
