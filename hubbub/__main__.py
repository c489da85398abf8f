"""``python -m hubbub``: the same command line as the ``hubbub`` script."""

from hubbub.cli import main

raise SystemExit(main())
