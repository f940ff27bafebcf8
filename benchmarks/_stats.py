"""
Small helpers shared by the benchmark scripts: summaries of repeated measurements,
ratios, and a plain-text table. Standard library only; no timing logic lives here.
"""

import statistics


def summarize(values):
    """C{{"median", "min", "max", "n"}} of a non-empty sequence of numbers."""
    values = list(values)
    if not values:
        raise ValueError("nothing to summarize")
    return {
        "median": statistics.median(values),
        "min": min(values),
        "max": max(values),
        "n": len(values),
    }


def ratio(a, b):
    """a / b, or None when b is 0 or either side is missing."""
    if a is None or b is None or b == 0:
        return None
    return a / b


def fmt_rate(x):
    """An ops/s figure, grouped by thousands (C{"123,456"}); "-" for None."""
    return "-" if x is None else "{:,.0f}".format(x)


def fmt_ratio(x):
    return "-" if x is None else "{:.2f}x".format(x)


def fmt_us(rate):
    """Microseconds per operation for an ops/s figure."""
    return "-" if not rate else "{:.2f}".format(1e6 / rate)


def table(headers, rows):
    """
    A plain-text table: the first column left-aligned, the others right-aligned.
    C{rows} are sequences of strings the same length as C{headers}.
    """
    cols = [headers] + [list(r) for r in rows]
    widths = [max(len(str(c[i])) for c in cols) for i in range(len(headers))]

    def line(cells):
        out = []
        for i, cell in enumerate(cells):
            cell = str(cell)
            out.append(cell.ljust(widths[i]) if i == 0 else cell.rjust(widths[i]))
        return "  ".join(out).rstrip()

    sep = "  ".join("-" * w for w in widths)
    return "\n".join([line(headers), sep] + [line(r) for r in rows])
