"""Read a Prometheus text exposition back, strictly: what a scraper would accept, or AssertionError."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})? (\S+)$")
_LABEL = re.compile(r'\s*([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"\s*(,|$)')
_ESCAPES = {"\\\\": "\\", '\\"': '"', "\\n": "\n"}


@dataclass
class Family:
    name: str
    kind: str
    help: str
    samples: list[tuple[str, dict[str, str], float]] = field(default_factory=list)

    def value(self, **labels: str) -> float:
        """The one sample (of the family's own name) whose labels include ``labels``."""
        found = [v for n, ls, v in self.samples if n == self.name and labels.items() <= ls.items()]
        assert len(found) == 1, f"{self.name}{labels}: {len(found)} samples"
        return found[0]


def _labels(body: str) -> dict[str, str]:
    out: dict[str, str] = {}
    pos = 0
    while pos < len(body):
        m = _LABEL.match(body, pos)
        assert m, f"bad label syntax at {body[pos:]!r}"
        assert m.group(1) not in out, f"label {m.group(1)} twice"
        out[m.group(1)] = re.sub(r"\\.", lambda e: _ESCAPES[e.group(0)], m.group(2))
        pos = m.end()
    return out


def parse(text: str) -> dict[str, Family]:
    assert text.endswith("\n"), "an exposition ends with a newline"
    families: dict[str, Family] = {}
    current: Family | None = None
    helps: dict[str, str] = {}
    for line in text.splitlines():
        if line.startswith("# HELP "):
            name, _, help_text = line[7:].partition(" ")
            helps[name] = help_text
        elif line.startswith("# TYPE "):
            name, _, kind = line[7:].partition(" ")
            assert kind in ("counter", "gauge", "histogram", "summary", "untyped"), line
            assert name not in families, f"{name} declared twice"
            current = families[name] = Family(name, kind, helps.get(name, ""))
        else:
            m = _SAMPLE.match(line)
            assert m, f"not a sample line: {line!r}"
            assert current is not None, f"sample before any TYPE: {line!r}"
            name = m.group(1)
            allowed = {current.name}
            if current.kind == "histogram":
                allowed = {f"{current.name}_bucket", f"{current.name}_sum", f"{current.name}_count"}
            assert name in allowed, f"{name} under family {current.name}"
            current.samples.append((name, _labels(m.group(3) or ""), float(m.group(4))))
    return families


def buckets(family: Family, **labels: str) -> list[tuple[float, float]]:
    """(le, cumulative count) of one histogram series, in order."""
    return [
        (float(ls["le"]), v)
        for n, ls, v in family.samples
        if n == f"{family.name}_bucket" and labels.items() <= ls.items()
    ]
