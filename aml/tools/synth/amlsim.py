"""The AMLSim-style world (`aml synth --world amlsim`).

Built from the public IBM/AMLSim repository (github.com/IBM/AMLSim, commit 7338a4b), read as
follows (docs/synthetic-data.md has the details and what is ours):

- Normal activity is a set of *normal models* (`paramFiles/*/normalModels.csv`; Java classes
  `src/main/java/amlsim/model/normal/*TransactionModel.java`), equally many of each type:
  `single` (one payment, once), `fan_out` (a main account pays its 5-20 beneficiaries in turn,
  one per interval), `fan_in` (5-20 originators pay the main account in turn), `forward`
  (A pays B, B passes it to C), `mutual` (two accounts pay each other back) and `periodical`
  (a main account pays one beneficiary every interval). The interval of a model is drawn from
  the file's min_period..max_period (5-20 steps; one step is one day).
- Alerts are *typologies* (`paramFiles/*/alertPatterns.csv`; Java classes under
  `src/main/java/amlsim/model/aml/`): fan_in, fan_out, cycle, bipartite, stack, random,
  scatter_gather, gather_scatter, each over a period of 5-20 days with 5-10 members
  (scatter_gather 7, gather_scatter 11 as in `paramFiles/typologies`). The main account of an
  alert is a hub (a high-degree account); with no bank_id the members come from other banks
  (scripts/transaction_graph_generator.py `add_aml_typology`). Each typology's timing follows
  its Java class at schedule id 2 (the one the parameter files use).
- `is_sar=False` rows of alertPatterns.csv are alerts that are not laundering: the same shapes,
  unlabelled. We add FALSE_ALERTS_PER_SAR of them per laundering alert: the look-alikes.
- Amounts: `TargetedTransactionAmount` draws uniformly between conf.json's min_amount and
  max_amount (100-1,000) whenever the target (a balance of 50,000-100,000 or a share of it) is
  above them: normal and laundering payments come from the same law. Scatter-gather legs are
  the alert's max_amount exactly (the target minus the minimum is within 100).
- One transaction type (`transactionType.csv`: TRANSFER) and one country: all rows are USD
  wires here.

Row counts and bank sizes are ours: TXNS_PER_ACCOUNT_DAY rows per account and day, and the
alert count keeps paramFiles/10K's ratio of alerts to normal rows.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from aml.tools.synth.common import CUR, DAY, WIRE, assemble, check_common_args

DEFAULT_BANKS = 14  # 12+ so `aml split` keeps the 8 largest (ours)
TXNS_PER_ACCOUNT_DAY = 1.0  # ours: sizes comparable to the other worlds
MIN_AMOUNT, MAX_AMOUNT = 100.0, 1_000.0  # conf.json "default" min_amount / max_amount
MIN_PERIOD, MAX_PERIOD = 5, 20  # normalModels.csv / alertPatterns.csv min_period / max_period
MARGIN_RATIO = 0.1  # conf.json margin_ratio
SCATTER_GATHER_AMOUNT = 200.0  # alertPatterns.csv max_amount
# paramFiles/10K: 100 alerts (30 fan_in, 30 fan_out, 40 cycle) against 3,000 normal models
# over 720 steps, which make about 243,000 normal rows.
ALERTS_PER_NORMAL_ROW = 100 / 243_000
FALSE_ALERTS_PER_SAR = 4  # is_sar=False alerts per SAR alert (ours)
NORMAL_TYPES = ("single", "fan_out", "fan_in", "forward", "mutual", "periodical")
ALERT_TYPES = ("fan_in", "fan_out", "cycle", "bipartite", "stack", "random",
               "scatter_gather", "gather_scatter")
# AMLSim typology name -> this project's typology name (docs/synthetic-data.md).
TYPOLOGY_NAMES = {"fan_in": "fan_in", "fan_out": "fan_out", "cycle": "cycle",
                  "bipartite": "bipartite", "stack": "stack", "random": "random_chain",
                  "scatter_gather": "scatter_gather", "gather_scatter": "gather_scatter"}
_MEMBERS = {"scatter_gather": (7, 7), "gather_scatter": (11, 11)}  # paramFiles/typologies
_DEFAULT_MEMBERS = (5, 10)  # paramFiles/10K min_accounts / max_accounts


def _uniform_amount(rng, n: int, target=None) -> np.ndarray:
    """TargetedTransactionAmount: uniform in [min, min(max, target)], the target itself when
    it is within 100 of the minimum."""
    hi = np.full(n, MAX_AMOUNT) if target is None else np.minimum(MAX_AMOUNT, target)
    lo = np.minimum(MIN_AMOUNT, hi)
    return np.where(hi - lo <= 100, hi, lo + rng.random(n) * (hi - lo))


class _World:
    def __init__(self, rng, banks: int, accounts: int, days: int) -> None:
        self.rng, self.n, self.days = rng, accounts, days
        w = 1.0 / np.arange(1, banks + 1) ** 1.0  # bank sizes (ours)
        self.bank = rng.choice(banks, size=accounts, p=w / w.sum())
        self.bank_ids = [f"B{i + 1:02d}" for i in range(banks)]
        # Scale-free degrees (degree.csv comes from scripts/generate_scalefree.py): a
        # heavy-tailed weight decides how often an account is picked for a model.
        self.weight = rng.pareto(1.5, accounts) + 1.0
        self.p = self.weight / self.weight.sum()
        self.src, self.dst, self.step, self.usd, self.instance = [], [], [], [], []
        self.hubs = np.zeros(0, dtype=np.int64)

    def emit(self, src, dst, step, usd, instance=-1) -> None:
        src = np.asarray(src, dtype=np.int64)
        self.src.append(src)
        self.dst.append(np.asarray(dst, dtype=np.int64))
        self.step.append(np.asarray(step, dtype=np.int64))
        self.usd.append(np.asarray(usd, dtype=np.float64))
        self.instance.append(np.full(len(src), instance, dtype=np.int32))

    def rows(self) -> int:
        return int(sum(len(s) for s in self.src))

    # --- normal models, vectorised per type --------------------------------------------
    def normal(self, models_per_type: int) -> None:
        rng, days, m = self.rng, self.days, models_per_type
        for kind in NORMAL_TYPES:
            main = rng.choice(self.n, m, p=self.p)
            interval = rng.integers(MIN_PERIOD, MAX_PERIOD + 1, m)
            start = rng.integers(0, interval)  # generateStartStep(interval)
            if kind == "single":
                bene = rng.choice(self.n, m, p=self.p)
                ok = bene != main
                self.emit(main[ok], bene[ok], rng.integers(0, days, m)[ok], _uniform_amount(rng, int(ok.sum())))
                continue
            # Events of each model: start, start + interval, ... < days.
            n_ev = np.maximum((days - 1 - start) // interval + 1, 0)
            model = np.repeat(np.arange(m), n_ev)
            k = np.arange(len(model)) - np.repeat(np.cumsum(n_ev) - n_ev, n_ev)
            step = start[model] + k * interval[model]
            if kind in ("fan_out", "fan_in"):
                size = rng.integers(5, 21, m) - 1  # 5-20 accounts including the main one
                width = int(size.max())
                members = rng.choice(self.n, size=(m, width), p=self.p)
                other = members[model, k % size[model]]  # round robin (`index`)
                src, dst = (main[model], other) if kind == "fan_out" else (other, main[model])
                self.hubs = np.union1d(self.hubs, main)
            elif kind == "forward":
                a = rng.choice(self.n, m, p=self.p)
                c = rng.choice(self.n, m, p=self.p)
                amount = _uniform_amount(rng, len(model))
                self.emit(a[model], main[model], step, amount)
                src, dst = main[model], c[model]
            elif kind == "mutual":  # the two pay each other in turn
                b = rng.choice(self.n, m, p=self.p)
                flip = k % 2 == 1
                src = np.where(flip, b[model], main[model])
                dst = np.where(flip, main[model], b[model])
            else:  # periodical
                b = rng.choice(self.n, m, p=self.p)
                src, dst = main[model], b[model]
            ok = src != dst
            self.emit(src[ok], dst[ok], step[ok], _uniform_amount(rng, int(ok.sum())))

    # --- alert typologies ------------------------------------------------------------------
    def _from_bank(self, bank: int, k: int, exclude=()) -> np.ndarray:
        pool = np.setdiff1d(np.flatnonzero(self.bank == bank), np.asarray(exclude, dtype=np.int64))
        if len(pool) < k:
            pool = np.setdiff1d(np.arange(self.n), np.asarray(exclude, dtype=np.int64))
        return self.rng.choice(pool, k, replace=False)

    def _other_bank(self, *not_these) -> int:
        banks = np.setdiff1d(np.arange(len(self.bank_ids)), list(not_these))
        return int(self.rng.choice(banks))

    def alert(self, kind: str, instance: int) -> None:
        rng, days = self.rng, self.days
        lo, hi = _MEMBERS.get(kind, _DEFAULT_MEMBERS)
        n = int(rng.integers(lo, hi + 1))
        period = int(rng.integers(MIN_PERIOD, MAX_PERIOD + 1))
        start = int(rng.integers(0, max(1, days - period + 1)))
        end = min(start + period - 1, days - 1)
        steps = lambda k: rng.integers(start, end + 1, k)  # noqa: E731  getRandomStep()
        main = int(rng.choice(self.hubs)) if len(self.hubs) else int(rng.integers(0, self.n))
        main_bank = int(self.bank[main])
        if kind in ("fan_out", "fan_in"):  # subs from one other bank
            subs = self._from_bank(self._other_bank(main_bank), n - 1, [main])
            if kind == "fan_out":  # UNORDERED: random steps; one amount for all legs
                amount = _uniform_amount(rng, 1)[0]
                self.emit(np.full(n - 1, main), subs, steps(n - 1), np.full(n - 1, amount), instance)
            else:  # FanInTypology's own ids: 2 = FIXED_INTERVAL
                interval = max((end - start + 1) // (n - 1), 1)
                st = np.minimum(start + interval * np.arange(n - 1), end)
                self.emit(subs, np.full(n - 1, main), st, _uniform_amount(rng, n - 1), instance)
        elif kind == "cycle":  # members spread over all banks; UNORDERED steps
            ring = rng.choice(self.n, n, replace=False)
            st = steps(n)
            st[0], st[1] = start, end
            amount = _uniform_amount(rng, n)
            self.emit(ring, np.roll(ring, -1), st, amount, instance)
        elif kind == "random":  # a walk over members taken from the banks in turn
            nodes = rng.choice(self.n, n, replace=False)
            hops = len(np.unique(steps(n))) - 1
            hops = max(hops, 1)
            st = np.sort(rng.choice(np.arange(start, end + 1), min(hops, end - start + 1), replace=False))
            h = len(st)
            self.emit(nodes[:h], nodes[1:h + 1], st, _uniform_amount(rng, h), instance)
        elif kind in ("bipartite", "stack"):
            # Only the main account registers transactions (Account.handleAction): it pays
            # the beneficiaries (bipartite) or the middle layer (stack) on every step.
            b1 = self._other_bank(main_bank)
            k = n - n // 2 if kind == "bipartite" else max(n // 3, 1)
            benes = self._from_bank(b1, k, [main])
            st = np.arange(start, end + 1)
            src = np.full(len(st) * k, main)
            self.emit(src, np.tile(benes, len(st)), np.repeat(st, k),
                      _uniform_amount(rng, len(src)), instance)  # target: balance / k, above max
        elif kind == "scatter_gather":  # three banks: origin, intermediaries, beneficiary
            b1 = self._other_bank(main_bank)
            b2 = self._other_bank(main_bank, b1)
            mids = self._from_bank(b1, n - 2, [main])
            bene = self._from_bank(b2, 1, [main])[0]
            middle = (start + end) // 2
            s1 = rng.integers(start, max(middle, start + 1), n - 2)
            s1[0] = start
            s2 = rng.integers(middle + 1, max(end, middle + 2), n - 2)
            s2[0] = end
            amt = np.full(n - 2, SCATTER_GATHER_AMOUNT)
            self.emit(np.concatenate([np.full(n - 2, main), mids]), np.concatenate([mids, np.full(n - 2, bene)]),
                      np.concatenate([s1, s2]), np.concatenate([amt, amt]), instance)
        elif kind == "gather_scatter":
            b1 = self._other_bank(main_bank)
            b2 = self._other_bank(main_bank, b1)
            n_orig = (n - 1) // 2
            n_bene = n - 1 - n_orig
            origs = self._from_bank(b1, n_orig, [main])
            benes = self._from_bank(b2, n_bene, [main])
            middle = (start + end) // 2
            g = rng.integers(start, max(middle, start + 1), n_orig)
            g[0] = start
            s = rng.integers(middle + 1, max(end, middle + 2), n_bene)
            s[0] = end
            got = _uniform_amount(rng, n_orig)
            share = got.sum() * (1 - MARGIN_RATIO) / n_bene
            self.emit(np.concatenate([origs, np.full(n_bene, main)]), np.concatenate([np.full(n_orig, main), benes]),
                      np.concatenate([g, s]),
                      np.concatenate([got, _uniform_amount(rng, n_bene, np.full(n_bene, share))]), instance)
        else:
            raise ValueError(kind)


def generate(banks: int = DEFAULT_BANKS, accounts: int = 10_000, days: int = 60,
             seed: int = 0) -> tuple[pa.Table, pa.Table]:
    """Return (transactions, patterns) of an AMLSim-style data set."""
    check_common_args(banks, accounts, days, seed, min_banks=3)
    rng = np.random.default_rng(seed)
    world = _World(rng, banks, accounts, days)
    # Rows a model of each type makes (single: 1; forward and mutual: about 2 per interval;
    # the others about 1 per interval), so the total lands near TXNS_PER_ACCOUNT_DAY.
    per_interval = days * np.mean(1.0 / np.arange(MIN_PERIOD, MAX_PERIOD + 1))
    rows_per_set = 1 + per_interval * (1 + 1 + 2 + 1 + 1)
    world.normal(max(1, int(TXNS_PER_ACCOUNT_DAY * accounts * days / rows_per_set)))

    n_alerts = max(len(ALERT_TYPES), int(round(ALERTS_PER_NORMAL_ROW * world.rows())))
    names: list[str] = []
    for i in range(n_alerts):
        kind = ALERT_TYPES[i % len(ALERT_TYPES)]
        world.alert(kind, len(names))
        names.append(TYPOLOGY_NAMES[kind])
        for _ in range(FALSE_ALERTS_PER_SAR):
            world.alert(kind, -1)

    step = np.concatenate(world.step)
    e = {"src": np.concatenate(world.src), "dst": np.concatenate(world.dst),
         # AMLSim has daily steps: each payment gets a uniform time within its day (ours).
         "t": step * DAY + rng.integers(0, DAY, len(step)),
         "usd": np.concatenate(world.usd), "fmt": np.full(len(step), WIRE, dtype=np.int8),
         "instance": np.concatenate(world.instance)}
    currency = np.full(accounts, CUR["USD"], dtype=np.int64)
    return assemble(e, names, world.bank, world.bank_ids, currency)
