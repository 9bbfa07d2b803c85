"""`python -m genaug` is the `genaug` command."""

from genaug.cli import main

raise SystemExit(main())
