"""Allows ``python -m streamclf``."""

from streamclf.cli import main

raise SystemExit(main())
