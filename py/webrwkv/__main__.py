"""Entry point for ``python -m webrwkv``."""

from .cli import main

raise SystemExit(main())
