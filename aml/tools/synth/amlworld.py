"""The AMLworld-style world (`aml synth --world amlworld`).

Built from the description of IBM's AMLworld generator and data sets in Altman et al.,
"Realistic Synthetic Financial Transactions for Anti-Money Laundering Models" (NeurIPS 2023
Datasets and Benchmarks; arXiv 2306.16424), not from this project's detectors:

- A population of individuals and companies holding accounts at many banks; companies include
  merchants (everyone buys from them: large natural fan-ins) and employers (payroll: large
  natural fan-outs). Accounts hold one of many currencies (the paper's data sets use about
  fifteen, including Bitcoin); payments use the paper's formats: ACH, Cheque, Credit Card, Wire,
  Cash, Reinvestment (a company moving money into its own account) and Bitcoin.
- Laundering is rare: about 1 transaction in 1,000 in the HI ("higher illicit") sets, about
  1 in 2,000 in the LI sets (world `amlworld_li`).
- The eight laundering patterns the paper draws (fan-out, fan-in, gather-scatter,
  scatter-gather, simple cycle, random, bipartite, stack) hold only a minority of the laundering
  rows; the rest is illicit money spent or moved by otherwise normal accounts in ordinary-looking
  payments (purchases, salaries, supplier invoices), as the paper says happens when launderers
  blend in. Here PATTERN_SHARE of laundering rows sit in the patterns; the others are labelled
  but listed in no pattern (AMLworld's pattern file lists only pattern laundering).
- Legitimate activity also has every one of those shapes (the paper's point that shapes alone
  do not identify laundering): LOOKALIKES_PER_INSTANCE ordinary instances per laundering
  instance of each shape, built by the same code with ordinary amounts and formats.

What is our own choice, since the paper does not publish it, is marked "(ours)" below and in
docs/synthetic-data.md. Everything is vectorised per kind of payment; patterns are few and are
generated one instance at a time.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from aml.tools.synth.common import (
    ACH, CARD, CASH, CHEQUE, CUR, DAY, HOUR, REINVEST, WIRE, assemble, check_common_args,
)

DEFAULT_BANKS = 14  # 12+ so `aml split` keeps the 8 largest and 6 banks stay outside (ours)
# Ordinary payments per account per day (ours; HI-Small has ~5 M rows for ~515 K accounts over
# about ten days of main activity, i.e. about one a day).
TXNS_PER_ACCOUNT_DAY = 1.0
LAUNDERING_RATE = {"hi": 1 / 1_000, "li": 1 / 2_000}  # laundering rows / all rows (the paper)
PATTERN_SHARE = 0.2  # laundering rows inside the eight patterns (the paper: about a fifth)
LOOKALIKES_PER_INSTANCE = 3  # ordinary instances of each shape per laundering one (ours)
MIN_INSTANCES_PER_PATTERN = 1

# AMLworld pattern name -> this project's typology name (docs/synthetic-data.md).
PATTERN_NAMES = {
    "fan-out": "fan_out", "fan-in": "fan_in", "gather-scatter": "gather_scatter",
    "scatter-gather": "scatter_gather", "simple cycle": "cycle", "random": "random_chain",
    "bipartite": "bipartite", "stack": "stack",
}
TYPOLOGIES = tuple(PATTERN_NAMES.values())

# Account currencies (ours, weighted towards USD like the paper's data sets).
_CURRENCY_MIX = {
    "USD": 0.55, "EUR": 0.12, "CNY": 0.05, "GBP": 0.04, "INR": 0.03, "JPY": 0.03, "CAD": 0.03,
    "AUD": 0.02, "CHF": 0.02, "MXN": 0.02, "BRL": 0.02, "RUB": 0.02, "SAR": 0.015, "ILS": 0.015,
    "BTC": 0.01,
}

PERSON, COMPANY, MERCHANT = 0, 1, 2


class _Edges:
    def __init__(self) -> None:
        self.parts: dict[str, list] = {k: [] for k in ("src", "dst", "t", "usd", "fmt", "instance", "label")}

    def add(self, src, dst, t, usd, fmt, instance=-1, label=0) -> None:
        src = np.asarray(src, dtype=np.int64)
        n = len(src)
        self.parts["src"].append(src)
        self.parts["dst"].append(np.asarray(dst, dtype=np.int64))
        self.parts["t"].append(np.asarray(t, dtype=np.int64))
        self.parts["usd"].append(np.asarray(usd, dtype=np.float64))
        self.parts["fmt"].append(np.broadcast_to(np.asarray(fmt, dtype=np.int8), (n,)))
        self.parts["instance"].append(np.broadcast_to(np.asarray(instance, dtype=np.int32), (n,)))
        self.parts["label"].append(np.broadcast_to(np.asarray(label, dtype=np.int8), (n,)))

    def arrays(self) -> dict[str, np.ndarray]:
        return {k: np.concatenate(v) for k, v in self.parts.items()}

    def count(self) -> int:
        return int(sum(len(a) for a in self.parts["src"]))


def _formats(rng, n: int, probs: dict[int, float]) -> np.ndarray:
    codes = np.array(list(probs), dtype=np.int8)
    p = np.array(list(probs.values()))
    return rng.choice(codes, size=n, p=p / p.sum())


def _times(rng, days: int, n: int) -> np.ndarray:
    """A uniform day and a daytime-peaked time of day (ours)."""
    tod = np.clip(rng.normal(13 * HOUR, 4 * HOUR, n), 0, DAY - 1)
    return rng.integers(0, days, n) * DAY + tod.astype(np.int64)


def _amounts(rng, kind: str, n: int) -> np.ndarray:
    """Heavy-tailed amounts per kind of payment (ours)."""
    median, sigma = {"purchase": (45, 1.0), "p2p": (150, 1.1), "salary": (2_800, 0.5),
                     "supplier": (4_500, 1.2), "reinvest": (6_000, 1.3), "bill": (120, 0.6)}[kind]
    return np.clip(rng.lognormal(np.log(median), sigma, n), 1.0, 2_000_000.0)


_KIND_FORMATS = {
    "purchase": {CARD: 0.80, CASH: 0.10, CHEQUE: 0.10},
    "p2p": {CHEQUE: 0.45, CASH: 0.25, ACH: 0.20, WIRE: 0.10},
    "salary": {ACH: 0.75, CHEQUE: 0.25},
    "supplier": {CHEQUE: 0.40, ACH: 0.30, WIRE: 0.30},
    "bill": {ACH: 0.60, CHEQUE: 0.30, CARD: 0.10},
}


class _World:
    def __init__(self, rng, banks: int, accounts: int, days: int) -> None:
        self.rng, self.days, self.n = rng, days, accounts
        # Bank sizes: a few big banks and a long tail (ours).
        w = 1.0 / np.arange(1, banks + 1) ** 1.0
        self.bank = rng.choice(banks, size=accounts, p=w / w.sum())
        self.bank_ids = [f"B{i + 1:02d}" for i in range(banks)]
        self.role = rng.choice(3, size=accounts, p=[0.88, 0.09, 0.03])
        self.role[:3] = [PERSON, COMPANY, MERCHANT]
        codes = np.array([CUR[c] for c in _CURRENCY_MIX])
        p = np.array(list(_CURRENCY_MIX.values()))
        self.currency = rng.choice(codes, size=accounts, p=p / p.sum())
        self.persons = np.flatnonzero(self.role == PERSON)
        self.companies = np.flatnonzero(self.role == COMPANY)
        self.merchants = np.flatnonzero(self.role == MERCHANT)
        self.activity = rng.lognormal(0.0, 1.0, accounts)  # how much each account pays (ours)

    # --- ordinary traffic, vectorised ---------------------------------------------------
    def ordinary(self, out: _Edges) -> None:
        rng, days = self.rng, self.days
        total = int(TXNS_PER_ACCOUNT_DAY * self.n * days)
        # Payroll: every second Friday, employers pay their staff (hubs of natural fan-outs).
        employed = self.persons[rng.random(len(self.persons)) < 0.6]
        size_w = 1.0 / np.arange(1, len(self.companies) + 1) ** 1.0  # Zipf headcounts (ours)
        employer = self.companies[rng.choice(len(self.companies), len(employed), p=size_w / size_w.sum())]
        salary = _amounts(rng, "salary", len(employed))
        fmt = _formats(rng, len(self.companies), _KIND_FORMATS["salary"])
        fmt_of = np.zeros(self.n, dtype=np.int8)
        fmt_of[self.companies] = fmt
        for payday in range(1, days, 14):  # day 1 of START is a Friday
            t = payday * DAY + 8 * HOUR + rng.integers(0, 2 * HOUR, len(employed))
            out.add(employer, employed, t, salary * rng.uniform(0.97, 1.03, len(employed)), fmt_of[employer])
        rest = max(total - out.count(), 0)
        shares = {"purchase": 0.45, "p2p": 0.22, "bill": 0.12, "supplier": 0.13, "reinvest": 0.08}
        for kind, share in shares.items():
            n = int(rest * share)
            if kind == "reinvest":
                co = rng.choice(self.companies, n)
                out.add(co, co, _times(rng, days, n), _amounts(rng, kind, n), REINVEST)
                continue
            src, dst = self._pairs(kind, n)
            keep = src != dst
            out.add(src[keep], dst[keep], _times(rng, days, n)[keep], _amounts(rng, kind, n)[keep],
                    _formats(rng, n, _KIND_FORMATS[kind])[keep])

    def _pairs(self, kind: str, n: int) -> tuple[np.ndarray, np.ndarray]:
        rng = self.rng
        if kind in ("purchase", "bill"):  # persons buy at merchants / pay billers (hubs)
            p = self.activity[self.persons]
            src = self.persons[rng.choice(len(self.persons), n, p=p / p.sum())]
            pool = self.merchants if kind == "purchase" else self.companies
            w = 1.0 / np.arange(1, len(pool) + 1) ** 0.9
            dst = pool[rng.choice(len(pool), n, p=w / w.sum())]
            return src, dst
        if kind == "p2p":  # each person pays a few regular contacts (ours: 6)
            contacts = rng.integers(0, self.n, size=(self.n, 6))
            p = self.activity[self.persons]
            src = self.persons[rng.choice(len(self.persons), n, p=p / p.sum())]
            return src, contacts[src, rng.integers(0, 6, n)]
        payers = np.concatenate([self.companies, self.merchants])  # supplier invoices
        suppliers = self.companies[rng.integers(0, len(self.companies), size=(len(payers), 5))]
        pos = rng.integers(0, len(payers), n)
        return payers[pos], suppliers[pos, rng.integers(0, 5, n)]

    # --- the eight patterns -------------------------------------------------------------
    def pattern(self, name: str, legit: bool) -> tuple:
        """One instance of AMLworld pattern `name`: (src, dst, t offsets, usd). Degrees and
        spans are ours; the shapes are the paper's."""
        rng = self.rng
        amount = lambda k: (self._legit_amount(k) if legit else  # noqa: E731
                            np.clip(rng.lognormal(np.log(4_000), 1.2), 200, 500_000) * rng.uniform(0.5, 1.5, k))
        span = rng.uniform(1, 12) * DAY  # patterns play out over days (ours)
        gap = lambda k: np.sort(rng.uniform(0, span, k)).astype(np.int64)  # noqa: E731
        if name == "fan-out":
            k = int(rng.integers(3, 13))
            hub, leaves = self._members(1)[0], self._members(k)
            return np.full(k, hub), leaves, gap(k), amount(k)
        if name == "fan-in":
            k = int(rng.integers(3, 13))
            hub, leaves = self._members(1)[0], self._members(k)
            return leaves, np.full(k, hub), gap(k), amount(k)
        if name == "gather-scatter":
            a, b = int(rng.integers(2, 8)), int(rng.integers(2, 8))
            hub, ins, outs = self._members(1)[0], self._members(a), self._members(b)
            t_in, t_out = gap(a), gap(b) + int(span)
            return (np.concatenate([ins, np.full(b, hub)]), np.concatenate([np.full(a, hub), outs]),
                    np.concatenate([t_in, t_out]), np.concatenate([amount(a), amount(b)]))
        if name == "scatter-gather":
            k = int(rng.integers(2, 8))
            src, sink, mid = self._members(1)[0], self._members(1)[0], self._members(k)
            t1 = gap(k)
            t2 = t1 + rng.integers(HOUR, 4 * DAY, k)
            a = amount(k)
            return (np.concatenate([np.full(k, src), mid]), np.concatenate([mid, np.full(k, sink)]),
                    np.concatenate([t1, t2]), np.concatenate([a, a * rng.uniform(0.9, 1.0, k)]))
        if name == "simple cycle":
            k = int(rng.integers(3, 11))
            ring = self._members(k)
            t = np.cumsum(rng.integers(HOUR, 3 * DAY, k))
            return ring, np.roll(ring, -1), t, amount(1)[0] * np.cumprod(rng.uniform(0.9, 1.0, k))
        if name == "random":  # a random walk that may come back to an account it visited
            k = int(rng.integers(3, 10))
            nodes = self._members(k)
            walk = np.concatenate([[0], rng.integers(0, k, k)])
            walk[1:] = np.where(walk[1:] == walk[:-1], (walk[:-1] + 1) % k, walk[1:])
            t = np.cumsum(rng.integers(HOUR, 3 * DAY, k))
            return nodes[walk[:-1]], nodes[walk[1:]], t, amount(1)[0] * np.cumprod(rng.uniform(0.9, 1.0, k))
        if name == "bipartite":
            a, b = int(rng.integers(2, 6)), int(rng.integers(2, 6))
            return self._layer(self._members(a), self._members(b), gap, amount)
        if name == "stack":
            a, m, b = (int(x) for x in rng.integers(2, 5, 3))
            s1 = self._layer(self._members(a), mid := self._members(m), gap, amount)
            s2 = self._layer(mid, self._members(b), gap, amount)
            return tuple(np.concatenate([x, y + (int(span) if i == 2 else 0)])
                         for i, (x, y) in enumerate(zip(s1, s2)))
        raise ValueError(name)

    def _layer(self, a, b, gap, amount):
        """Each of `a` pays a random non-empty subset of `b`."""
        pick = self.rng.random((len(a), len(b))) < 0.6
        pick[np.arange(len(a)), self.rng.integers(0, len(b), len(a))] = True
        i, j = np.nonzero(pick)
        return a[i], b[j], gap(len(i)), amount(len(i))

    def _members(self, k: int) -> np.ndarray:
        """Accounts drawn from the whole population: laundering hides in normal accounts."""
        return self.rng.choice(self.n, size=k, replace=False)

    def _legit_amount(self, k: int) -> np.ndarray:
        kind = self.rng.choice(["supplier", "p2p", "salary"])
        return _amounts(self.rng, kind, k)

    # --- laundering outside the patterns ------------------------------------------------
    def disguised(self, n_rows: int, out: _Edges) -> None:
        """Illicit money received and spent by otherwise ordinary accounts (labelled, in no
        pattern): about 3 in 10 rows bring it in (extortion, smuggling proceeds: the paper's
        sources of illicit funds), the rest leave as purchases, salaries and supplier invoices
        with the ordinary laws of those payments (ours: shares and counts)."""
        rng = self.rng
        if n_rows <= 0:
            return
        n_dirty = max(1, n_rows // 6)
        dirty = rng.choice(self.n, n_dirty, replace=False)
        n_in = int(round(0.3 * n_rows))
        n_out = n_rows - n_in
        to = dirty[rng.integers(0, n_dirty, n_in)]
        payer = rng.integers(0, self.n, n_in)
        keep = payer != to
        out.add(payer[keep], to[keep], _times(rng, self.days, n_in)[keep],
                _amounts(rng, "p2p", n_in)[keep] * rng.uniform(1, 10, n_in)[keep],
                _formats(rng, n_in, {CASH: 0.3, ACH: 0.3, WIRE: 0.2, CHEQUE: 0.2})[keep], label=1)
        src = dirty[rng.integers(0, n_dirty, n_out)]
        kind = rng.choice(["purchase", "salary", "supplier", "p2p"], n_out, p=[0.35, 0.2, 0.25, 0.2])
        for k in ("purchase", "salary", "supplier", "p2p"):
            sel = kind == k
            m = int(sel.sum())
            if not m:
                continue
            pool = {"purchase": self.merchants, "salary": self.persons, "supplier": self.companies,
                    "p2p": np.arange(self.n)}[k]
            dst = pool[rng.integers(0, len(pool), m)]
            ok = dst != src[sel]
            out.add(src[sel][ok], dst[ok], _times(rng, self.days, m)[ok], _amounts(rng, k, m)[ok],
                    _formats(rng, m, _KIND_FORMATS[k])[ok], label=1)


_LAUNDER_FORMATS = {ACH: 0.55, CHEQUE: 0.15, CARD: 0.10, CASH: 0.10, WIRE: 0.10}  # ours


def generate(banks: int = DEFAULT_BANKS, accounts: int = 10_000, days: int = 60, seed: int = 0,
             rate: str = "hi") -> tuple[pa.Table, pa.Table]:
    """Return (transactions, patterns) of an AMLworld-style data set."""
    check_common_args(banks, accounts, days, seed, min_banks=3)
    rng = np.random.default_rng(seed)
    world = _World(rng, banks, accounts, days)
    edges = _Edges()
    world.ordinary(edges)
    n_laundering = int(LAUNDERING_RATE[rate] * edges.count())
    budget = int(PATTERN_SHARE * n_laundering)

    names: list[str] = []
    in_patterns = 0
    span_limit = days * DAY
    while in_patterns < budget or len(names) < MIN_INSTANCES_PER_PATTERN * len(PATTERN_NAMES):
        for shape, typology in PATTERN_NAMES.items():
            for copy in range(1 + LOOKALIKES_PER_INSTANCE):
                legit = copy > 0
                src, dst, t, usd = world.pattern(shape, legit)
                t = np.asarray(t, dtype=np.int64)
                t0 = int(rng.integers(0, max(1, span_limit - int(t.max()) - 1)))
                t = np.minimum(t0 + t, span_limit - 1)
                fmt = _formats(rng, len(src), _KIND_FORMATS["supplier"] if legit else _LAUNDER_FORMATS)
                if legit:
                    edges.add(src, dst, t, usd, fmt)
                else:
                    edges.add(src, dst, t, usd, fmt, instance=len(names), label=1)
                    names.append(typology)
                    in_patterns += len(src)
    # Keep the paper's share of pattern laundering even when the per-pattern minimum tops up
    # a small data set (the rate then rises a little above the target).
    world.disguised(max(n_laundering - in_patterns,
                        int(in_patterns * (1 - PATTERN_SHARE) / PATTERN_SHARE)), edges)
    return assemble(edges.arrays(), names, world.bank, world.bank_ids, world.currency)
