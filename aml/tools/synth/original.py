"""The original world (`aml synth --world original`): the project's first multi-bank generator.

Generates labelled transactions between accounts at several member banks (`B01`..`Bnn`) and two
non-member banks (`X01`, `X02`): ordinary traffic (payroll, card purchases, bills, friends paying
each other back, supplier invoices, self-transfers, reinvestment) plus labelled laundering in the
eight AMLworld typologies, structuring, pass-through mules, and laundering disguised as payroll or
supplier payments. Laundering is laid across banks so each member sees one or two legs, with the
amounts, formats and times of ordinary sizeable payments. Every local shape a bank can see of a
laundering pattern has ordinary look-alikes that outnumber it (one-off transfers, forwarders,
salary forwarders, and ordinary twins of the star shapes built by the same code), while the
evidence that separates them sits at other banks (mule leaves pass the money on, smurfs were
funded just before): the cross-bank graph is what tells them apart. docs/synthetic-data.md
describes every shape and its ordinary look-alike.

Ordinary traffic is generated fully vectorised (no Python loop per transaction); laundering and
its twins are generated one instance at a time, since instances are few. Everything is drawn
from one seeded numpy Generator, so the same arguments give identical tables.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa

from aml.tools.synth.common import (  # noqa: F401  (re-exported: tests and callers use them)
    ACH, BITCOIN, CARD, CASH, CHEQUE, CUR, CURRENCIES, DAY, DECIMALS, FORMATS, HOUR, RATE,
    REINVEST, START, USD_PER_UNIT, WIRE, assemble, check_common_args, round_amounts, write_tables,
)

# --- public constants (the detection configuration uses the same rates) -------------------

# Ordinary transactions per account per day; --accounts 10000 --days 60 gives about 1.02 M.
# Laundering comes on top: 0.45 % of that, still 4-5 times IBM AMLworld HI's ~0.1 %, so that
# 1 M rows hold about 30 instances of each pattern (docs/synthetic-data.md).
TXNS_PER_ACCOUNT_DAY = 1.7
LAUNDERING_SHARE = 0.0045
# Ordinary payments shaped like single laundering legs (`_lookalikes`), as shares of the
# ordinary traffic: one-off sizeable transfers, and "forwarders" (money received and passed
# on within hours). Forwarders are what each bank sees of a chain, a cycle or a mule leaf:
# there must be several ordinary ones for every laundering one.
ONE_OFF_SHARE = 0.015
FORWARDER_SHARE = 0.04
SALARY_FORWARD_SHARE = 0.3  # of the forwarders' monthly salaries (`_payroll`)
MIN_INSTANCES_PER_PATTERN = 5
# Share of laundering instances, and of their look-alikes, whose payments are squeezed into
# waking hours; the rest happen at any hour (online banking).
AWAKE_SHARE = 0.9

TYPOLOGIES = (
    "fan_out", "fan_in", "cycle", "scatter_gather", "gather_scatter", "bipartite",
    "stack", "random_chain", "structuring", "pass_through",
)
DISGUISED = ("disguised_payroll", "disguised_supplier")
PATTERNS = TYPOLOGIES + DISGUISED

NON_MEMBER_BANKS = ("X01", "X02")
DEFAULT_BANKS = 8  # member banks (`--banks`); the two non-members come on top

# --- internal codes -------------------------------------------------------------------------

_CURRENCIES = CURRENCIES
_CUR = CUR
_RATE = RATE
_DECIMALS = DECIMALS
_FORMATS = FORMATS

PERSON, COMPANY, MERCHANT = 0, 1, 2


# Home currency of accounts at member banks (the rest of the world is at X01/X02).
_MEMBER_CURRENCY_MIX = {
    "USD": 0.950, "EUR": 0.014, "GBP": 0.009, "CAD": 0.007, "CHF": 0.004, "JPY": 0.004,
    "MXN": 0.004, "INR": 0.003, "BTC": 0.005,
}
_NON_MEMBER_CURRENCY = {"X01": ("EUR", 0.85), "X02": ("GBP", 0.85)}


# --- the population -------------------------------------------------------------------------

@dataclass
class _Population:
    bank_ids: list[str]
    bank: np.ndarray        # account -> index into bank_ids
    role: np.ndarray        # PERSON / COMPANY / MERCHANT
    currency: np.ndarray    # account -> index into _CURRENCIES
    activity: np.ndarray    # relative spending activity of persons (heavy-tailed)
    persons: np.ndarray
    companies: np.ndarray   # companies that are not utilities
    merchants: np.ndarray
    utilities: np.ndarray
    n_members: int
    # Roles in ordinary look-alike traffic (`_lookalikes`, `_decoys`): accounts that send
    # sizeable one-offs, that pass money on, that receive. Disjoint, so look-alikes never
    # chain into multi-hop flows by coincidence.
    roles: dict = field(default_factory=dict)


def _make_population(rng: np.random.Generator, banks: int, accounts: int) -> _Population:
    bank_ids = [f"B{i + 1:02d}" for i in range(banks)] + list(NON_MEMBER_BANKS)
    # Skewed sizes: a few big banks and a long tail of small ones (Zipf-like), 3 % abroad.
    member_w = 1.0 / np.arange(1, banks + 1) ** 1.1
    weights = np.concatenate([0.97 * member_w / member_w.sum(), [0.02, 0.01]])
    bank = rng.choice(len(bank_ids), size=accounts, p=weights)

    role = rng.choice(3, size=accounts, p=[0.84, 0.10, 0.06])
    # Every data set needs some of each role, however small.
    role[:3] = [PERSON, COMPANY, MERCHANT]
    role[3:5] = COMPANY

    mix_codes = np.array([_CUR[c] for c in _MEMBER_CURRENCY_MIX])
    mix_p = np.array(list(_MEMBER_CURRENCY_MIX.values()))
    currency = rng.choice(mix_codes, size=accounts, p=mix_p / mix_p.sum())
    for code, (cur, share) in _NON_MEMBER_CURRENCY.items():
        at = bank == bank_ids.index(code)
        currency[at] = np.where(rng.random(at.sum()) < share, _CUR[cur], _CUR["USD"])

    all_companies = np.flatnonzero(role == COMPANY)
    n_util = max(2, len(all_companies) // 20)
    utilities = np.sort(rng.choice(all_companies, size=n_util, replace=False))
    companies = np.setdiff1d(all_companies, utilities)

    return _Population(
        bank_ids=bank_ids, bank=bank, role=role, currency=currency,
        activity=rng.lognormal(0.0, 0.8, size=accounts),
        persons=np.flatnonzero(role == PERSON), companies=companies,
        merchants=np.flatnonzero(role == MERCHANT), utilities=utilities, n_members=banks,
    )


# --- a growing set of edges -------------------------------------------------------------------

@dataclass
class _Edges:
    """Transactions as parallel arrays: account indices, seconds since START, USD value."""

    src: list = field(default_factory=list)
    dst: list = field(default_factory=list)
    t: list = field(default_factory=list)
    usd: list = field(default_factory=list)
    fmt: list = field(default_factory=list)
    instance: list = field(default_factory=list)  # laundering instance index, -1 = ordinary

    def add(self, src, dst, t, usd, fmt, instance=-1) -> None:
        src = np.asarray(src, dtype=np.int64)
        n = len(src)
        self.src.append(src)
        self.dst.append(np.asarray(dst, dtype=np.int64))
        self.t.append(np.asarray(t, dtype=np.int64))
        self.usd.append(np.asarray(usd, dtype=np.float64))
        self.fmt.append(np.broadcast_to(np.asarray(fmt, dtype=np.int8), (n,)))
        self.instance.append(np.full(n, instance, dtype=np.int32))

    def arrays(self) -> dict[str, np.ndarray]:
        return {k: np.concatenate(getattr(self, k)) for k in ("src", "dst", "t", "usd", "fmt", "instance")}


def _weekday(day: np.ndarray) -> np.ndarray:
    """Monday = 0; START (2026-01-01) is a Thursday."""
    return (day + 3) % 7


def _daytime(rng: np.random.Generator, n: int) -> np.ndarray:
    """Seconds into the day: mostly 06:00-24:00 peaked in the afternoon, 8 % at any hour
    (online payments), so night activity alone does not give laundering away."""
    t = rng.normal(14.5 * HOUR, 3.5 * HOUR, n)
    outside = (t < 6 * HOUR) | (t >= DAY)
    t[outside] = rng.uniform(7 * HOUR, 22 * HOUR, outside.sum())  # no pile-up at the edges
    anytime = rng.random(n) < 0.08
    t[anytime] = rng.uniform(0, DAY, anytime.sum())
    return t.astype(np.int64)


def _pick_formats(rng: np.random.Generator, n: int, probs: dict[int, float]) -> np.ndarray:
    codes = np.array(list(probs), dtype=np.int8)
    p = np.array(list(probs.values()))
    return rng.choice(codes, size=n, p=p / p.sum())


def _month_starts(days: int) -> np.ndarray:
    """Day index of the first of every month overlapping the data range (and the one before)."""
    end = START + np.timedelta64(days, "D")
    months = np.arange(START.astype("datetime64[M]") - 1, end.astype("datetime64[M]") + 1)
    return (months.astype("datetime64[D]") - START.astype("datetime64[D]")).astype(np.int64)


# --- ordinary traffic ---------------------------------------------------------------------------

def _payroll(rng, pop: _Population, days: int, out: _Edges) -> None:
    """Companies pay their employees on a fixed day each month: regular, similar amounts."""
    companies = pop.companies
    # 90 % of persons are employed, except the look-alike senders (savers, retirees, the
    # self-employed): a sizeable payment right after payday would otherwise look like money
    # passed on.
    employed = pop.persons[(rng.random(len(pop.persons)) < 0.9)
                           & ~np.isin(pop.persons, pop.roles["send"])]
    # Big employers and small ones (Zipf-like headcount).
    size_w = 1.0 / np.arange(1, len(companies) + 1) ** 0.9
    employer = companies[rng.choice(len(companies), size=len(employed), p=size_w / size_w.sum())]
    order = np.argsort(employer, kind="stable")
    employed, employer = employed[order], employer[order]

    n_acc = len(pop.bank)
    payday = np.zeros(n_acc, dtype=np.int64)
    payday[companies] = rng.choice([1, 15, 25, 28], size=len(companies))
    pay_second = np.zeros(n_acc, dtype=np.int64)
    pay_second[companies] = rng.integers(7 * HOUR, 11 * HOUR, size=len(companies))
    level = np.ones(n_acc)
    level[companies] = rng.lognormal(np.log(4200), 0.35, size=len(companies))
    fmt_of = np.zeros(n_acc, dtype=np.int8)
    fmt_of[companies] = _pick_formats(rng, len(companies), {ACH: 0.85, CHEQUE: 0.10, WIRE: 0.05})
    salary = level[employer] * rng.lognormal(0.0, 0.25, size=len(employed))

    for month_day in _month_starts(days):
        day = month_day + payday[employer] - 1
        t = day * DAY + pay_second[employer] + rng.integers(0, 900, size=len(employed))
        usd = salary * rng.uniform(0.98, 1.02, size=len(employed))
        keep = (t >= 0) & (t < days * DAY)
        out.add(employer[keep], employed[keep], t[keep], usd[keep], fmt_of[employer][keep])
        # Some forwarders pass the salary straight on, within hours (to an account of their
        # own elsewhere, to family, a landlord, a broker): what one bank sees of a mule paid
        # a "salary" by a front company (disguised payroll) looks like this.
        fwd = keep & np.isin(employed, pop.roles["pass"]) & (rng.random(len(employed)) < SALARY_FORWARD_SHARE)
        n = int(fwd.sum())
        to = pop.roles["recv"][rng.integers(0, len(pop.roles["recv"]), n)]
        tf = t[fwd] + rng.integers(HOUR // 2, 8 * HOUR, n)
        ok = tf < days * DAY
        out.add(employed[fwd][ok], to[ok], tf[ok], (usd[fwd] * rng.uniform(0.90, 0.995, n))[ok],
                _pick_formats(rng, n, _LAUNDER_FORMATS)[ok])


def _bills(rng, pop: _Population, days: int, out: _Edges) -> None:
    """Each person pays 1-3 utilities on a fixed day each month: natural fan-ins."""
    n_links = rng.integers(1, 4, size=len(pop.persons))
    payer = np.repeat(pop.persons, n_links)
    util_w = 1.0 / np.arange(1, len(pop.utilities) + 1)
    utility = pop.utilities[rng.choice(len(pop.utilities), size=len(payer), p=util_w / util_w.sum())]
    bill_day = rng.integers(1, 29, size=len(payer))
    base = rng.lognormal(np.log(110), 0.6, size=len(payer))
    fmt = _pick_formats(rng, len(payer), {ACH: 0.85, CARD: 0.10, CHEQUE: 0.05})
    for month_day in _month_starts(days):
        t = (month_day + bill_day - 1) * DAY + _daytime(rng, len(payer))
        usd = base * rng.uniform(0.85, 1.15, size=len(payer))
        keep = (t >= 0) & (t < days * DAY)
        out.add(payer[keep], utility[keep], t[keep], usd[keep], fmt[keep])


def _card_purchases(rng, pop: _Population, n: int, days: int, out: _Edges) -> None:
    """Persons buy at merchants: natural fan-ins of many small amounts."""
    p = pop.activity[pop.persons]
    buyer = rng.choice(pop.persons, size=n, p=p / p.sum())
    pop_w = 1.0 / np.arange(1, len(pop.merchants) + 1) ** 0.8
    merchant = pop.merchants[rng.choice(len(pop.merchants), size=n, p=pop_w / pop_w.sum())]
    t = rng.integers(0, days, size=n) * DAY + _daytime(rng, n)
    usd = np.clip(rng.lognormal(np.log(32), 0.9, size=n), 1.0, 5000.0)
    out.add(buyer, merchant, t, usd, _pick_formats(rng, n, {CARD: 0.85, CASH: 0.10, ACH: 0.05}))


def _friends(rng, pop: _Population, n_pairs: int, days: int, out: _Edges) -> None:
    """A pays for B, B pays A back within days: natural short cycles A->B->A."""
    persons = pop.persons
    friends = persons[rng.integers(0, len(persons), size=(len(persons), 5))]
    p = pop.activity[persons]
    pos = rng.choice(len(persons), size=n_pairs, p=p / p.sum())
    a = persons[pos]
    b = friends[pos, rng.integers(0, 5, size=n_pairs)]
    ok = a != b
    a, b = a[ok], b[ok]
    n = len(a)
    t1 = rng.integers(0, days, size=n) * DAY + _daytime(rng, n)
    t2 = t1 + rng.integers(HOUR, 4 * DAY, size=n)
    usd = np.clip(rng.lognormal(np.log(40), 0.8, size=n), 2.0, 3000.0)
    share = np.where(rng.random(n) < 0.6, 1.0, rng.uniform(0.3, 1.0, size=n))
    fmt = _pick_formats(rng, n, {ACH: 0.80, CASH: 0.15, WIRE: 0.05})
    out.add(a, b, t1, usd, fmt)
    back = t2 < days * DAY
    out.add(b[back], a[back], t2[back], (usd * share)[back], fmt[back])


def _supplier_payments(rng, pop: _Population, n: int, days: int, out: _Edges) -> None:
    """Companies and merchants pay invoices to a few regular suppliers on business days."""
    payers = np.concatenate([pop.companies, pop.merchants])
    suppliers = pop.companies[rng.integers(0, len(pop.companies), size=(len(payers), 4))]
    size_w = rng.lognormal(0.0, 1.0, size=len(payers))
    pos = rng.choice(len(payers), size=n, p=size_w / size_w.sum())
    payer = payers[pos]
    supplier = suppliers[pos, rng.integers(0, 4, size=n)]
    day = rng.integers(0, days, size=n)
    wd = _weekday(day)
    day = day + np.where(wd == 5, 2, np.where(wd == 6, 1, 0))  # weekend -> Monday
    t = day * DAY + rng.integers(8 * HOUR, 18 * HOUR, size=n)
    usd = np.clip(rng.lognormal(np.log(4000), 1.1, size=n), 50.0, 750_000.0)
    fmt = _pick_formats(rng, n, {ACH: 0.45, WIRE: 0.35, CHEQUE: 0.20})
    keep = (payer != supplier) & (t < days * DAY)
    out.add(payer[keep], supplier[keep], t[keep], usd[keep], fmt[keep])


def _self_transfers(rng, pop: _Population, n: int, days: int, out: _Edges) -> None:
    """One person's accounts at two different banks move money between each other."""
    persons = pop.persons
    n_pairs = max(1, len(persons) // 8)
    pairs = rng.choice(persons, size=(n_pairs, 2), replace=False)
    a, b = pairs[:, 0], pairs[:, 1]
    # Same owner, different bank: move the twin to another member bank if they coincide.
    same = pop.bank[a] == pop.bank[b]
    pop.bank[b[same]] = (pop.bank[a[same]] + 1) % pop.n_members
    pos = rng.integers(0, n_pairs, size=n)
    flip = rng.random(n) < 0.5
    src = np.where(flip, b[pos], a[pos])
    dst = np.where(flip, a[pos], b[pos])
    t = rng.integers(0, days, size=n) * DAY + _daytime(rng, n)
    usd = rng.choice([100.0, 200.0, 250.0, 500.0, 1000.0, 2000.0, 5000.0], size=n)
    out.add(src, dst, t, usd, _pick_formats(rng, n, {ACH: 0.75, WIRE: 0.25}))


def _reinvestment(rng, pop: _Population, n: int, days: int, out: _Edges) -> None:
    """As in AMLworld, a company reinvests into its own account (source = destination)."""
    co = pop.companies[rng.integers(0, len(pop.companies), size=n)]
    t = rng.integers(0, days, size=n) * DAY + rng.integers(8 * HOUR, 18 * HOUR, size=n)
    usd = np.clip(rng.lognormal(np.log(8000), 1.0, size=n), 100.0, 500_000.0)
    out.add(co, co, t, usd, REINVEST)


def _lookalikes(rng, pop: _Population, n_one_off: int, n_forward: int, days: int,
                out: _Edges) -> None:
    """Ordinary payments shaped like single laundering legs: sizeable one-off transfers to new
    counterparties at other banks (half of them abroad-linked) and accounts that receive such a
    transfer and pass most of it on within hours (a remittance, a house deposit, a friend
    settling a shared bill). Same amounts, formats and times of day as laundering legs, so one
    bank's view of a mule's leg looks like these; what they lack is the next hop: the money
    stops with the first recipient."""
    eligible = pop.persons
    group = np.select([np.isin(eligible, pop.roles["pass"]), np.isin(eligible, pop.roles["recv"])],
                      [1, 2], 0)
    abroad = np.flatnonzero(np.isin(pop.bank, [pop.bank_ids.index(b) for b in NON_MEMBER_BANKS])
                            & (pop.role != MERCHANT))
    fmt_codes = np.array(list(_LAUNDER_FORMATS), dtype=np.int8)
    fmt_p = np.array(list(_LAUNDER_FORMATS.values()))

    def amounts(k):
        return np.clip(rng.lognormal(np.log(9_000), 0.6, k), 2_500, 120_000)

    def parties(k, foreign_share, role):
        pool = eligible[group == role]
        acc = pool[rng.integers(0, len(pool), k)]
        if len(abroad):
            far = rng.random(k) < foreign_share
            acc[far] = abroad[rng.integers(0, len(abroad), far.sum())]
        return acc

    def fmts(k):
        return rng.choice(fmt_codes, size=k, p=fmt_p / fmt_p.sum())

    # One-off transfers.
    k = n_one_off
    src, dst = parties(k, 0.15, 0), parties(k, 0.1, 2)
    t = _leg_times(rng.integers(0, days * DAY, k), _awake_episodes(rng, k))
    # Sized like laundering legs: a whole hop's sum, or a third of one (a fan's leg).
    usd = amounts(k) * np.where(rng.random(k) < 0.6, rng.beta(6, 12, k), 1.0)
    # A fifth sit just under the 10,000 USD reporting line (a used car, a deposit): one such
    # payment is ordinary; a cluster of them on one party across banks is structuring.
    band = rng.random(k) < 0.2
    usd[band] = rng.uniform(8_500, 9_990, band.sum())
    keep = src != dst
    out.add(src[keep], dst[keep], t[keep], usd[keep], fmts(k)[keep])

    # Forwarders: 1-2 payments in, 80-99.5 % of them out within 0.5-10 h to 1-2 others
    # (salary moved to one's own account elsewhere, a broker or notary paying out a client's
    # money, a payment intermediary settling). Sized like a chain hop or a fan's leg.
    episodes = max(1, n_forward // 3)
    fwd = parties(episodes, 0.0, 1)
    n_in = np.where(rng.random(episodes) < 0.7, 1, 2)
    n_out = np.where(rng.random(episodes) < 0.7, 1, 2)
    total = amounts(episodes) * np.where(rng.random(episodes) < 0.5, rng.beta(6, 12, episodes), 1.0)
    # Some pass on a sum just under the 10,000 USD line (what a smurf's bank sees).
    band = rng.random(episodes) < 0.15
    total[band] = rng.uniform(8_600, 10_500, band.sum())
    t_in = rng.integers(0, days * DAY, episodes)
    i_ep = np.repeat(np.arange(episodes), n_in)
    part = rng.dirichlet(np.full(2, 6.0), episodes)
    part[n_in == 1] = [1.0, 0.0]  # one payment in carries the whole sum
    a_in = total[i_ep] * part[i_ep, np.arange(len(i_ep)) - np.repeat(np.cumsum(n_in) - n_in, n_in)]
    ti = t_in[i_ep] + rng.integers(0, 6 * HOUR, len(i_ep))
    payer = parties(len(i_ep), 0.0, 0)
    awake = _awake_episodes(rng, episodes)  # one coin per episode, for its ins and outs
    ti_awake = _leg_times(ti, awake[i_ep])
    ok = (payer != fwd[i_ep]) & (ti_awake < days * DAY)
    share_in = np.bincount(i_ep[ok], weights=a_in[ok], minlength=episodes)
    out.add(payer[ok], fwd[i_ep][ok], ti_awake[ok], a_in[ok], fmts(len(i_ep))[ok])
    last_in = np.zeros(episodes, np.int64)
    np.maximum.at(last_in, i_ep, ti)
    o_ep = np.repeat(np.arange(episodes), n_out)
    o_part = rng.dirichlet(np.full(3, 6.0), episodes)
    pos = np.arange(len(o_ep)) - np.repeat(np.cumsum(n_out) - n_out, n_out)
    weight = o_part[o_ep, pos] / np.add.reduceat(o_part[o_ep, pos], np.cumsum(n_out) - n_out)[o_ep]
    # Pass on what a layering hop does: nearly everything (a fee), or 90-99.5 % (a mule's
    # leg), a few 80-90 %.
    u = rng.random(episodes)
    kept = np.select([u < 0.45, u < 0.9], [rng.uniform(0.97, 0.999, episodes),
                                          rng.uniform(0.90, 0.995, episodes)],
                     rng.uniform(0.80, 0.90, episodes))
    a_out = share_in[o_ep] * kept[o_ep] * weight
    to = last_in[o_ep] + rng.integers(HOUR // 2, 10 * HOUR, len(o_ep))
    to = _leg_times(to, awake[o_ep])
    payee = parties(len(o_ep), 0.0, 2)
    ok = (payee != fwd[o_ep]) & (to < days * DAY)
    out.add(fwd[o_ep][ok], payee[ok], to[ok], a_out[ok], fmts(len(o_ep))[ok])


def _assign_roles(rng, pop: _Population) -> None:
    """Senders, forwarders and final recipients of look-alike traffic: disjoint groups of
    persons (35 %, 30 %, 35 %), so look-alikes never chain into multi-hop flows by
    coincidence, and senders and recipients are spread thin enough not to pile up into
    stars. Persons only: a company pays its suppliers every day, and any sizeable inflow
    would chain with one of those payments by chance."""
    group = rng.choice(3, len(pop.persons), p=[0.35, 0.3, 0.35])
    pop.roles = {r: np.sort(pop.persons[group == g]) for g, r in enumerate(("send", "pass", "recv"))}


def _ordinary(rng, pop: _Population, days: int, out: _Edges) -> int:
    target = int(TXNS_PER_ACCOUNT_DAY * len(pop.bank) * days)
    before = sum(len(x) for x in out.src)
    _assign_roles(rng, pop)
    _payroll(rng, pop, days, out)
    _bills(rng, pop, days, out)
    structural = sum(len(x) for x in out.src) - before
    rest = max(0, target - structural)
    _self_transfers(rng, pop, int(0.01 * rest), days, out)
    _friends(rng, pop, int(0.07 * rest), days, out)  # two transactions per pair
    _supplier_payments(rng, pop, int(0.10 * rest), days, out)
    _reinvestment(rng, pop, int(0.005 * rest), days, out)
    _lookalikes(rng, pop, int(ONE_OFF_SHARE * target), int(FORWARDER_SHARE * target), days, out)
    done = sum(len(x) for x in out.src) - before
    _card_purchases(rng, pop, max(0, target - done), days, out)
    return target


# --- laundering ------------------------------------------------------------------------------------

class _Instance:
    """Edges of one laundering instance, with times relative to its start (seconds)."""

    def __init__(self):
        self.edges: list[tuple[int, int, float, float, int]] = []

    def pay(self, src, dst, t, usd, fmt) -> None:
        self.edges.append((int(src), int(dst), float(t), float(usd), int(fmt)))


# Laundering legs use the format mix of ordinary sizeable payments (supplier invoices,
# salaries, transfers), so the format alone says nothing.
_LAUNDER_FORMATS = {ACH: 0.50, WIRE: 0.30, CHEQUE: 0.14, CASH: 0.06}
# Share of star shapes (fans, gather-scatter hubs, structuring parties) centred abroad.
STAR_CENTER_ABROAD = 0.5
TWIN_CENTER_ABROAD = 0.1
# Share of participant draws from the ring of repeat launderers (the rest are one-off mules).
RING_SHARE = 0.1


class _Launderer:
    """Builds laundering instances; participants come from accounts that also trade normally."""

    def __init__(self, rng: np.random.Generator, pop: _Population):
        self.rng = rng
        self.pop = pop
        eligible = np.concatenate([pop.persons, pop.companies])
        # A ring of accounts that launder repeatedly, plus occasional one-off mules.
        ring = max(60, len(eligible) // 25)
        self.ring = rng.choice(eligible, size=min(ring, len(eligible)), replace=False)
        self.eligible = eligible
        self.usd_accounts = eligible[pop.currency[eligible] == _CUR["USD"]]
        abroad = np.isin(pop.bank, [pop.bank_ids.index(b) for b in NON_MEMBER_BANKS])
        self.abroad = np.flatnonzero(abroad & (pop.role != MERCHANT))
        self.member_persons = np.setdiff1d(pop.persons, self.abroad)
        # True while building an ordinary twin of a shape (`_decoys`): participants are
        # ordinary customers and the shape gets no laundering continuation.
        self.legit = False

    # participants ------------------------------------------------------------------------
    def accounts(self, k: int, min_banks: int = 2, pool: np.ndarray | None = None,
                 role: str | None = None) -> np.ndarray:
        """k distinct accounts laid across as many banks as possible: each next account is at
        the bank used least so far in this instance (never the previous account's bank when
        another is available), so any one bank sees only one or two legs of the pattern."""
        rng, bank = self.rng, self.pop.bank
        # Participants come from the look-alike role of their part (senders, forwarders,
        # recipients), so a mule's account has the everyday profile of an ordinary forwarder
        # and an ordinary twin's participants never chain into flows.
        base = self.pop.roles[role] if role and self.pop.roles else self.eligible
        if pool is None:
            src = self.ring if not self.legit and rng.random() < RING_SHARE else base
        else:
            src = pool if base is self.eligible else np.intersect1d(pool, base)
        cand = rng.choice(src, size=min(len(src), 8 * k + 40), replace=False)
        if len(np.unique(bank[cand])) < min(min_banks, k) and pool is None:
            cand = np.concatenate([cand, rng.choice(base, size=min(len(base), 4 * k + 20), replace=False)])
            cand = cand[np.sort(np.unique(cand, return_index=True)[1])]
        used: dict[int, int] = {}
        chosen: list[int] = []
        taken = np.zeros(len(cand), bool)
        prev = -1
        for _ in range(min(k, len(cand))):
            b = bank[cand]
            load = np.array([used.get(int(x), 0) for x in b], dtype=np.float64)
            load += np.where(b == prev, 0.5, 0.0) + np.where(taken, np.inf, 0.0)
            i = int(np.argmin(load))  # candidates are in random order: ties go to a random one
            taken[i] = True
            chosen.append(int(cand[i]))
            prev = int(b[i])
            used[prev] = used.get(prev, 0) + 1
        return np.array(chosen, dtype=np.int64)

    def center(self, others: np.ndarray, role: str | None = None,
               abroad_share: float | None = None) -> int:
        """The hub of a star shape. Often abroad (a non-member bank): money wired in from, or
        out to, a foreign account through many domestic accounts, so no member sees the star.
        Ordinary twins are seldom centred abroad: a twin is there to be seen by a member."""
        if abroad_share is None:
            abroad_share = STAR_CENTER_ABROAD if not self.legit else TWIN_CENTER_ABROAD
        pool = np.setdiff1d(self.abroad, others)
        if len(pool) and self.rng.random() < abroad_share:
            return int(self.rng.choice(pool))
        while True:
            c = int(self.accounts(1, 1, role=role)[0])
            if c not in others:
                return c

    def mule(self, ordinary: str) -> str:
        """Role of a leaf: a laundering leaf passes money on (a forwarder's profile); its
        ordinary twin keeps it (`ordinary`)."""
        return ordinary if self.legit else "pass"

    def fresh(self, k: int, exclude, role: str | None = None) -> np.ndarray:
        """k accounts laid across banks like `accounts`, none of them in `exclude`."""
        acc = self.accounts(k + len(exclude) + 2, 3, role=role)
        acc = acc[~np.isin(acc, np.asarray(exclude))]
        return acc[:k]

    # cross-bank continuations ------------------------------------------------------------
    # A laundering leg is seldom the whole story: the leaves of a fan-out are mules who pass
    # the money on within hours, the smurfs of a fan-in were funded just before. These hops
    # sit at the leaves' banks, so only the consortium sees them next to the star; each
    # leaf's own bank sees an ordinary-looking "received and passed on" (see `_lookalikes`).
    def _visible(self, accs, other: np.ndarray) -> np.ndarray:
        """A leaf abroad deals with a member bank's account: a hop between two foreign
        accounts would be in no member's data at all."""
        other = other.copy()
        far = np.isin(accs, self.abroad) & np.isin(other, self.abroad)
        if far.any():
            home = self.member_persons
            other[far] = home[self.rng.integers(0, len(home), far.sum())]
        return other

    def forward_on(self, inst: _Instance, accs, times, amounts) -> None:
        """Each account passes 90-99.5 % of what it just received on within 0.5-8 hours."""
        nxt = self.fresh(len(accs), [a for e in inst.edges for a in e[:2]], role="recv")
        nxt = self._visible(accs, nxt)
        for a, n, t, amt in zip(accs, nxt, times, amounts):
            inst.pay(a, n, t + self.hours(0.5, 8), amt * self.rng.uniform(0.90, 0.995), self.fmt())

    def fund_before(self, inst: _Instance, accs, times, amounts) -> None:
        """Each account received about what it pays (plus a fee) 0.5-8 hours before."""
        src = self.fresh(len(accs), [a for e in inst.edges for a in e[:2]], role="send")
        src = self._visible(accs, src)
        for a, f, t, amt in zip(accs, src, times, amounts):
            inst.pay(f, a, t - self.hours(0.5, 8), amt / self.rng.uniform(0.90, 0.995), self.fmt())

    def companies(self, k: int) -> np.ndarray:
        return self.rng.choice(self.pop.companies, size=k, replace=False)

    def fmt(self) -> int:
        return int(_pick_formats(self.rng, 1, _LAUNDER_FORMATS)[0])

    def amount(self) -> float:
        # The size of an ordinary sizeable payment (salaries, invoices, transfers): a mule's
        # inflow is not the largest payment its bank has ever seen it receive.
        return float(np.clip(self.rng.lognormal(np.log(9_000), 0.6), 2_500, 120_000))

    def fee(self) -> float:
        return float(self.rng.uniform(0.005, 0.03))

    def split(self, total: float, k: int, concentration: float = 6.0) -> np.ndarray:
        """Split a total into k roughly similar parts."""
        return total * self.rng.dirichlet(np.full(k, concentration))

    def hours(self, lo: float, hi: float) -> float:
        return float(self.rng.uniform(lo * HOUR, hi * HOUR))

    # the shapes --------------------------------------------------------------------------
    def _star(self, outward: bool) -> _Instance:
        """One hub paying (outward) or paid by 5-15 leaves within hours to days."""
        rng, inst = self.rng, _Instance()
        k = int(rng.integers(5, 16))
        leaves = self.accounts(k, 3, role=self.mule("recv" if outward else "send"))
        hub = self.center(leaves, role="send" if outward else "recv")
        window = self.hours(6, 48)
        times = np.sort(rng.uniform(0, window, k))
        # Legs about a third of a hop each, never so small that they drown in everyday spending.
        amounts = self.split(max(self.amount(), 4_500) * k / 3, k)
        for leaf, t, a in zip(leaves, times, amounts):
            src, dst = (hub, leaf) if outward else (leaf, hub)
            inst.pay(src, dst, t, a, self.fmt())
        if not self.legit:
            (self.forward_on if outward else self.fund_before)(inst, leaves, times, amounts)
        return inst

    def small_star(self) -> _Instance:
        """An ordinary person paying, or paid by, 2-6 new counterparties within days (a
        renovation, tuition, a deposit; rent from tenants): what one bank sees of a
        bipartite, stack or scatter-gather layer."""
        rng, inst = self.rng, _Instance()
        k = int(rng.integers(2, 7))
        outward = rng.random() < 0.5
        leaves = self.accounts(k, 3, role="recv" if outward else "send")
        hub = self.center(leaves, role="send" if outward else "recv")
        times = np.sort(rng.uniform(0, self.hours(6, 72), k))
        for leaf, t in zip(leaves, times):
            a = self.amount() / 3 * rng.uniform(0.8, 1.2)
            inst.pay(*((hub, leaf) if outward else (leaf, hub)), t, a, self.fmt())
        return inst

    def fan_out(self) -> _Instance:
        return self._star(outward=True)

    def fan_in(self) -> _Instance:
        return self._star(outward=False)

    def _chain(self, acc: np.ndarray, dwell: tuple[float, float], fee: tuple[float, float]) -> _Instance:
        inst, amount, t = _Instance(), self.amount(), 0.0
        for s, d in zip(acc[:-1], acc[1:]):
            inst.pay(s, d, t, amount, self.fmt())
            amount *= 1.0 - self.rng.uniform(*fee)
            t += self.hours(*dwell)
        return inst

    def cycle(self) -> _Instance:
        k = int(self.rng.integers(3, 9))
        acc = self.accounts(k, 2, role="pass")
        # The closing hop crosses a bank too: move the first account to a place between two
        # accounts at other banks when it shares a bank with the last.
        bank = self.pop.bank
        if len(acc) > 3 and bank[acc[0]] == bank[acc[-1]]:
            first, rest = acc[0], acc[1:]
            for j in range(1, len(rest)):
                if bank[first] not in (bank[rest[j - 1]], bank[rest[j]]) and bank[rest[-1]] != bank[rest[0]]:
                    acc = np.concatenate([rest[:j], [first], rest[j:]])
                    break
        return self._chain(np.append(acc, acc[0]), dwell=(0.5, 14), fee=(0.005, 0.03))

    def random_chain(self) -> _Instance:
        k = int(self.rng.integers(5, 11))
        return self._chain(self.accounts(k, 3, role="pass"), dwell=(0.25, 10), fee=(0.001, 0.02))

    def scatter_gather(self) -> _Instance:
        rng, inst = self.rng, _Instance()
        k = int(rng.integers(3, 9))
        mids = self.accounts(k, 3, role="pass")
        src = self.center(mids, role="send")
        dst = self.center(np.append(mids, src), role="recv")
        for m, a in zip(mids, self.split(self.amount() * k / 3, k)):
            t1 = self.hours(0, 24)
            inst.pay(src, m, t1, a, self.fmt())
            inst.pay(m, dst, t1 + self.hours(0.5, 12), a * (1 - self.fee()), self.fmt())
        return inst

    def gather_scatter(self) -> _Instance:
        rng, inst = self.rng, _Instance()
        k, m = int(rng.integers(3, 9)), int(rng.integers(3, 9))
        srcs = self.accounts(k, 3, role="send")
        dsts = self.accounts(m, 3, role=self.mule("recv"))
        dsts = dsts[~np.isin(dsts, srcs)]
        acc = np.concatenate([srcs, dsts])
        hub = self.center(acc, role="pass")
        # Legs about a third of a hop each, as in a star, so none drowns in everyday spending.
        total = max(self.amount(), 4_500) * max(k, m) / 3
        in_times = rng.uniform(0, self.hours(4, 36), k)
        for s, t, a in zip(srcs, in_times, self.split(total, k)):
            inst.pay(s, hub, t, a, self.fmt())
        start_out = in_times.max() + self.hours(1, 24)
        out_times = start_out + np.sort(rng.uniform(0, self.hours(2, 24), m))
        out_amounts = self.split(total * (1 - self.fee()), m)
        for d, t, a in zip(dsts, out_times, out_amounts):
            inst.pay(hub, d, t, a, self.fmt())
        if not self.legit:  # the receivers are mules too: they pass it on
            self.forward_on(inst, dsts, out_times, out_amounts)
        return inst

    def bipartite(self) -> _Instance:
        rng, inst = self.rng, _Instance()
        na, nb = int(rng.integers(2, 6)), int(rng.integers(2, 6))
        left = self.accounts(na, 3, role="send")
        right = self.accounts(nb, 3, role="recv")
        right = right[~np.isin(right, left)]
        nb = len(right)
        link = rng.random((na, nb)) < 0.7
        link[np.arange(na), rng.integers(0, nb, na)] = True    # every payer pays someone
        link[rng.integers(0, na, nb), np.arange(nb)] = True    # every payee is paid
        per_edge = self.amount() / 3  # legs the size of a fan's
        window = self.hours(12, 36)
        for i, j in zip(*np.nonzero(link)):
            inst.pay(left[i], right[j], rng.uniform(0, window), per_edge * rng.uniform(0.8, 1.2), self.fmt())
        return inst

    def stack(self) -> _Instance:
        """Layered bipartite: layer 1 pays layer 2, which forwards to layer 3."""
        rng, inst = self.rng, _Instance()
        sizes = rng.integers(2, 4, size=3)
        layers = [self.accounts(int(n), 3, role=r) for n, r in zip(sizes, ("send", "pass", "recv"))]
        layers[1] = layers[1][~np.isin(layers[1], layers[0])]
        layers[2] = layers[2][~np.isin(layers[2], np.concatenate(layers[:2]))]
        received = dict.fromkeys(layers[1].tolist(), 0.0)
        last_in = dict.fromkeys(layers[1].tolist(), 0.0)
        per_edge = self.amount() / 3
        for s in layers[0]:
            for m in layers[1]:
                t, a = self.hours(0, 24), per_edge * rng.uniform(0.8, 1.2)
                inst.pay(s, m, t, a, self.fmt())
                received[int(m)] += a
                last_in[int(m)] = max(last_in[int(m)], t)
        for m in layers[1]:
            start = last_in[int(m)] + self.hours(1, 24)
            parts = self.split(received[int(m)] * (1 - self.fee()), len(layers[2]))
            for d, a in zip(layers[2], parts):
                inst.pay(m, d, start + self.hours(0, 6), a, self.fmt())
        return inst

    def structuring(self) -> _Instance:
        """Many payments just under the 10,000 USD reporting threshold, across several banks."""
        rng, inst = self.rng, _Instance()
        k = int(rng.integers(6, 16))
        inbound = rng.random() < 0.6  # smurfs pay in to one party, or one party pays out
        others = self.accounts(k, 3, pool=self.usd_accounts,
                               role=self.mule("send" if inbound else "recv"))
        party = self.center(others, role="recv" if inbound else "send")
        k = len(others)
        window = self.hours(24, 96)
        fmts = _pick_formats(rng, len(others), _LAUNDER_FORMATS)
        payer_usd = self.pop.currency[party] == _CUR["USD"]
        inbound = inbound or not payer_usd
        times, amounts = rng.uniform(0, window, k), rng.uniform(8_500, 9_990, k)
        for o, f, t, a in zip(others, fmts, times, amounts):
            if inbound:
                inst.pay(o, party, t, a, f)
            else:
                inst.pay(party, o, t, a, f)
        if not self.legit:  # smurfs are handed the cash just before / pass it on just after
            (self.fund_before if inbound else self.forward_on)(inst, others, times, amounts)
        return inst

    def pass_through(self) -> _Instance:
        """A mule receives money and forwards 80-95 % of it within hours."""
        rng, inst = self.rng, _Instance()
        n_in, n_out = int(rng.integers(1, 4)), int(rng.integers(1, 4))
        acc = self.accounts(1 + n_in, 3, role="pass")
        mule, srcs = acc[0], acc[1:]
        placer = self.center(acc, role="send")
        dsts = self.fresh(n_out, np.append(acc, placer), role="recv")
        total = self.amount()
        in_times = rng.uniform(0, self.hours(1, 12), n_in) + self.hours(2, 10)
        for s, t, a in zip(srcs, in_times, self.split(total, n_in)):
            # Each payer was funded by the placer hours before: a link only the joint view sees.
            inst.pay(placer, s, t - self.hours(0.5, 2), a / (1 - self.fee()), self.fmt())
            inst.pay(s, mule, t, a, self.fmt())
        forward = total * rng.uniform(0.80, 0.95)
        start = in_times.max() + self.hours(0.5, 8)
        for d, a in zip(dsts, self.split(forward, n_out)):
            inst.pay(mule, d, start + self.hours(0, 2), a, self.fmt())
        return inst

    def disguised_payroll(self) -> _Instance:
        """A front company is funded, then 'pays salaries' to mules: payroll timing, similar
        amounts, but larger than its usual pay and to accounts that are not its employees."""
        rng, inst = self.rng, _Instance()
        k = int(rng.integers(5, 14))
        front = self.companies(1)[0]
        funder = self.center([front], role="send", abroad_share=0.3)
        payees = self.accounts(k, 3, role=self.mule("recv"))
        payees = payees[(payees != front) & (payees != funder)]
        salary = rng.uniform(3_000, 9_000)
        amounts = salary * rng.uniform(0.95, 1.05, len(payees))
        inst.pay(funder, front, self.hours(0, 12), amounts.sum() / rng.uniform(0.90, 0.97), WIRE)
        pay_at = DAY + rng.integers(7, 11) * HOUR  # next morning, payroll-style batch
        times = pay_at + rng.uniform(0, 900, len(payees))
        for p, t, a in zip(payees, times, amounts):
            inst.pay(front, p, t, a, ACH)
        if not self.legit:  # the "employees" are mules: the pay moves on within hours
            self.forward_on(inst, payees, times, amounts)
        return inst

    def disguised_supplier(self) -> _Instance:
        """A front company pays 'invoices' to a shell supplier, which forwards the money on."""
        rng, inst = self.rng, _Instance()
        front, shell = self.companies(2)
        # The money often leaves the consortium: half the beneficiaries bank abroad.
        abroad = np.setdiff1d(self.abroad, [front, shell])
        pool = abroad if len(abroad) and rng.random() < 0.5 else None
        beneficiary = front
        while beneficiary in (front, shell):
            beneficiary = self.accounts(1, 1, pool=pool)[0]
        n = int(rng.integers(2, 6))
        invoices = np.maximum(np.round(self.split(self.amount(), n, 10.0), -2), 100.0)  # round totals
        fmts = _pick_formats(rng, n, {WIRE: 0.5, ACH: 0.3, CHEQUE: 0.2})
        # Invoices settle in business hours over a few days, like the ordinary ones.
        times = np.sort(rng.integers(0, 5, n) * DAY + rng.uniform(9 * HOUR, 17 * HOUR, n))
        for t, a, f in zip(times, invoices, fmts):
            inst.pay(front, shell, t, a, f)
        inst.pay(shell, beneficiary, times[-1] + self.hours(2, 24), invoices.sum() * rng.uniform(0.9, 0.95), WIRE)
        return inst


# Ordinary twins per laundering instance (`_decoys`): enough that, inside one bank, the
# ordinary version of every shape a bank can see outnumbers the laundering one several times.
DECOYS_PER_INSTANCE = 6
# Shapes whose whole star one bank can see (the centre's bank): their ordinary twin is the very
# same shape without the laundering continuation. Layered shapes (bipartite, stack,
# scatter-gather) show each bank a small star; chains and cycles a forwarder (`_lookalikes`).
_TWINNED = ("fan_out", "fan_in", "gather_scatter", "structuring", "disguised_payroll")
_SMALL_STAR_VIEWS = ("bipartite", "stack", "scatter_gather")


def _awake(t: np.ndarray) -> np.ndarray:
    """Squeeze each time of day into 06:00-24:00, monotone so the order of hops is kept."""
    return t - t % DAY + 6 * HOUR + (t % DAY) * 3 // 4


def _awake_episodes(rng, n: int) -> np.ndarray:
    """Which of n episodes (instances) happen in waking hours (`_leg_times`)."""
    return rng.random(n) < AWAKE_SHARE


def _leg_times(t: np.ndarray, awake) -> np.ndarray:
    """The time-of-day law every laundering leg and every look-alike of one follows: an
    episode (instance) starts at a uniform time of day, its legs keep their offsets, and
    AWAKE_SHARE of episodes (`awake`, per leg) are squeezed into waking hours. One law for
    both, so the hour of a sizeable payment says nothing about whether it is laundering."""
    return np.where(awake, _awake(t), t)


def _place(rng, t: np.ndarray, span_limit: int, office_hours: bool) -> np.ndarray:
    """Place an instance (times relative to its start) inside the data range."""
    t = t - min(t.min(), 0.0)  # a hop "just before" the start may sit at negative times
    span = int(t.max()) + 1
    if span >= span_limit:  # compress it if the range is short
        t = t * (span_limit - 1) / span
        span = span_limit
    # Start at a day's midnight (the disguised kinds carry office hours of their own)
    # or at a uniform time of day (`_leg_times`).
    t0 = rng.integers(0, span_limit - span + 1)
    t0 -= t0 % DAY
    if not office_hours:
        t0 = min(t0 + int(rng.integers(0, DAY)), span_limit - span)
    t = t0 + t.astype(np.int64)
    if not office_hours:
        t = _leg_times(t, _awake_episodes(rng, 1)[0])
    return t


def _decoys(launderer: "_Launderer", name: str, span_limit: int, out: _Edges) -> None:
    """Ordinary twins of what one bank sees of a `name` instance, built by the same code with
    ordinary participants and without the cross-bank continuation (label 0): a firm paying a
    one-off batch of contractors after a client paid it, a wedding or renovation paid to many
    new payees, a landlord or a small shop collecting from several, an escrow agent collecting
    deposits and paying them out, several buyers' deposits just under 10,000 to a dealer."""
    if name in _TWINNED:
        make = getattr(launderer, name)
    elif name in _SMALL_STAR_VIEWS:
        make = launderer.small_star
    else:
        return
    launderer.legit = True
    try:
        for _ in range(DECOYS_PER_INSTANCE):
            inst = make()
            src, dst, t, usd, fmt = (np.array(c) for c in zip(*inst.edges))
            t = _place(launderer.rng, t, span_limit, name in DISGUISED)
            out.add(src, dst, t, usd, fmt)
    finally:
        launderer.legit = False


def _laundering(rng, pop: _Population, days: int, budget: int, out: _Edges) -> list[str]:
    """Add laundering instances round-robin over PATTERNS until the budget is spent and every
    pattern has at least MIN_INSTANCES_PER_PATTERN instances, each with its ordinary twins.
    Returns each instance's name."""
    launderer = _Launderer(rng, pop)
    names: list[str] = []
    n_txns = 0
    span_limit = days * DAY
    while n_txns < budget or len(names) < MIN_INSTANCES_PER_PATTERN * len(PATTERNS):
        for name in PATTERNS:
            inst = getattr(launderer, name)()
            src, dst, t, usd, fmt = (np.array(c) for c in zip(*inst.edges))
            t = _place(rng, t, span_limit, name in DISGUISED)
            out.add(src, dst, t, usd, fmt, instance=len(names))
            names.append(name)
            # Twins come with the laundering budget, not with the per-pattern minimum that
            # tops up tiny data sets (there they would swamp the ordinary traffic).
            if n_txns < budget:
                _decoys(launderer, name, span_limit, out)
            n_txns += len(src)
    return names


# --- assembling the tables ------------------------------------------------------------------------

_round_amounts = round_amounts


def _check_args(banks: int, accounts: int, days: int, seed: int) -> None:
    check_common_args(banks, accounts, days, seed)


def generate(
    banks: int = 8, accounts: int = 10_000, days: int = 60, seed: int = 0
) -> tuple[pa.Table, pa.Table]:
    """Return (transactions in TRANSACTION_SCHEMA, patterns in PATTERN_TABLE_SCHEMA)."""
    _check_args(banks, accounts, days, seed)
    rng = np.random.default_rng(seed)
    pop = _make_population(rng, banks, accounts)
    edges = _Edges()
    target = _ordinary(rng, pop, days, edges)
    names = _laundering(rng, pop, days, int(LAUNDERING_SHARE * target), edges)
    return assemble(edges.arrays(), names, pop.bank, pop.bank_ids, pop.currency)


def write_synthetic(
    out: Path, banks: int = 8, accounts: int = 10_000, days: int = 60, seed: int = 0
) -> dict:
    """Write out/transactions.parquet and out/patterns.parquet; return their row counts."""
    transactions, patterns = generate(banks=banks, accounts=accounts, days=days, seed=seed)
    return write_tables(out, transactions, patterns)
