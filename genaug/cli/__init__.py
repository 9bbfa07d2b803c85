"""The `genaug` command line: parses, prints, exits. No logic lives here."""
