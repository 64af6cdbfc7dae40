"""Allow ``python -m melanoma``."""

from melanoma.cli import main

raise SystemExit(main())
