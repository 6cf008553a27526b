"""``python -m pyramid_core``: see :mod:`pyramid_core.cli`."""

from .cli import main

raise SystemExit(main())
