"""``python -m lmrec`` (what torchrun launches) is the ``lmrec`` command."""

from lmrec.cli import main

raise SystemExit(main())
