"""Markdown tables for the benchmark scripts (pasted into benchmarks/README.md)."""


def print_table(rows: list[dict]) -> None:
    """Print `rows` as a Markdown table; floats to 3 significant digits."""
    keys = list(dict.fromkeys(k for r in rows for k in r))
    cells = [[_cell(r.get(k, "")) for k in keys] for r in rows]
    widths = [max(len(k), *(len(c[i]) for c in cells)) for i, k in enumerate(keys)]
    print("| " + " | ".join(k.ljust(w) for k, w in zip(keys, widths)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for c in cells:
        print("| " + " | ".join(v.rjust(w) for v, w in zip(c, widths)) + " |")


def _cell(value) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)
