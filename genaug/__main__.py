"""`python -m genaug` is the `genaug` command."""

from genaug.cli.app import main

raise SystemExit(main())
