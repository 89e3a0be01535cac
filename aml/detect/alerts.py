"""Cut pattern instances into per-bank alerts, scoped to what each bank may see.

The privacy rule (non-negotiable): an alert for bank B lists only B's own accounts and only
transactions B submitted itself. Everything else about the pattern is aggregate (total
amount, number of institutions, hops, time window), and the explanation names foreign
accounts only by placeholders keyed per alert, so two alerts cannot be linked through them.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections import defaultdict

import numpy as np
import pyarrow as pa

from aml.detect.typologies.base import PatternInstance
from aml.schema import ALERT_SCHEMA

_PLACEHOLDER_HEX = 6


def alert_id(pattern: str, txn_ids: list[str], bank: str) -> str:
    """Stable id: same pattern, same transactions, same bank -> same id on every rerun."""
    return _alert_id_for(_id_prefix(pattern, txn_ids), bank)


def _id_prefix(pattern: str, txn_ids: list[str]):
    """The part of alert_id's hash shared by every bank of one instance."""
    h = hashlib.sha256()
    for part in (pattern, *sorted(txn_ids)):
        h.update(part.encode("utf-8"))
        h.update(b"\x00")
    return h


def _alert_id_for(prefix, bank: str) -> str:
    h = prefix.copy()
    h.update(bank.encode("utf-8"))
    h.update(b"\x00")
    return h.hexdigest()[:20]


def empty_alert_table() -> pa.Table:
    return ALERT_SCHEMA.empty_table()


def format_amount(value: float, currency: str) -> str:
    return f"{value:,.0f} {currency}"


def format_duration(seconds: float) -> str:
    if seconds < 3600:
        return f"{max(seconds / 60, 1):.0f} minutes"
    if seconds < 2 * 86_400:
        return f"{seconds / 3600:.1f} hours"
    return f"{seconds / 86_400:.1f} days"


class _Namer:
    """Names nodes for one alert: the accounts listed in the alert (the bank's own, reached
    through payments it submitted) by id, every other account by placeholder."""

    def __init__(self, graph, named: set[int], key: bytes):
        self.graph, self.named, self.key = graph, named, key
        self.foreign: dict[int, str] = {}

    def __call__(self, node: int, own_prefix: str = "your account ") -> str:
        if node in self.named:
            return f"{own_prefix}{self.graph.node_account[node]}"
        return self.placeholder(node)

    def placeholder(self, node: int) -> str:
        if node not in self.foreign:
            digest = hmac.digest(self.key, str(int(node)).encode(), "sha256").hex()
            name, n = f"ext-{digest[:_PLACEHOLDER_HEX]}", _PLACEHOLDER_HEX
            while name in self.foreign.values():  # collision within one alert: lengthen
                n += 2
                name = f"ext-{digest[:n]}"
            self.foreign[node] = name
        return self.foreign[node]


def _explain(graph, inst: PatternInstance, edges: np.ndarray, bank: str, named: set[int],
             key: bytes,
             currency: str, amount: float, institutions: int, hops: int,
             max_placeholders: int, nodes: list[int] | None = None) -> str:
    name = _Namer(graph, named, key)
    ev = inst.evidence
    src, dst = graph.src[edges], graph.dst[edges]
    if nodes is None:  # the instance's accounts, sorted
        nodes = np.unique(np.concatenate([src, dst])).tolist()
    t = graph.t[edges]
    duration = format_duration(float(t.max() - t.min()))
    amt = format_amount(amount, currency)
    center = ev.get("center")
    sink = ev.get("sink")
    others = len(nodes) - (center is not None) - (sink is not None)
    p = inst.pattern
    if p == "fan_out":
        core = (f"Funds of {amt} fanned out from {name(center)} to {others} accounts "
                f"at {institutions} institutions within {duration}")
    elif p == "fan_in":
        core = (f"Funds of {amt} from {others} accounts at {institutions} institutions "
                f"were gathered into {name(center)} within {duration}")
    elif p == "scatter_gather":
        core = (f"Funds of {amt} were scattered from {name(center)} through {others} "
                f"intermediary accounts and gathered again into {name(sink)} "
                f"at {institutions} institutions within {duration}")
    elif p == "gather_scatter":
        n_src = len(np.unique(src[dst == center])) if center is not None else 0
        n_dst = len(np.unique(dst[src == center])) if center is not None else 0
        core = (f"Funds of {amt} from {n_src} accounts were gathered into "
                f"{name(center)} and scattered to {n_dst} accounts "
                f"at {institutions} institutions within {duration}")
    elif p == "cycle":
        core = (f"Funds of {amt} travelled around a cycle of {hops} payments through "
                f"{len(nodes)} accounts at {institutions} institutions and returned to their "
                f"origin within {duration}")
    elif p == "bipartite":
        core = (f"Funds of {amt} moved from {len(np.unique(src))} payers to "
                f"{len(np.unique(dst))} payees in a dense many-to-many pattern "
                f"at {institutions} institutions within {duration}")
    elif p == "stack":
        core = (f"Funds of {amt} moved through {ev.get('layers', hops + 1)} stacked layers of "
                f"{len(nodes)} accounts at {institutions} institutions within {duration}")
    elif p == "random_chain":
        core = (f"Funds of {amt} were passed along a chain of {hops} payments through "
                f"{len(nodes)} accounts at {institutions} institutions within {duration}, "
                f"each account forwarding nearly all it received")
    elif p == "structuring":
        direction = "paid into" if ev.get("direction") == "in" else "paid out of"
        core = (f"{len(edges)} payments just below the {ev.get('threshold', 10000):,.0f} "
                f"{currency} reporting threshold, totalling {amt}, were {direction} "
                f"{name(center)} involving {institutions} institutions within {duration}")
    elif p == "pass_through":
        who = name(center, own_prefix="Your account ")
        who = who if who.startswith("Your") else f"Account {who}"
        core = (f"{who} received "
                f"{format_amount(ev.get('inflow', amount), currency)} and forwarded "
                f"{100 * ev.get('forward_share', 1):.0f}% of it within {duration}")
    elif p == "model":
        core = (f"The pooled model scored {len(edges)} payment(s) totalling {amt} across "
                f"{institutions} institutions as likely laundering (score {inst.score:.2f})")
    else:
        core = (f"Funds of {amt} moved through {len(nodes)} accounts at {institutions} "
                f"institutions within {duration}")

    own = [n for n in nodes if n in named and n not in (center, sink)]
    foreign = [n for n in nodes if n not in named]
    tail = []
    if own:
        listed = ", ".join(str(graph.node_account[n]) for n in own[:max_placeholders])
        more = f" and {len(own) - max_placeholders} more" if len(own) > max_placeholders else ""
        tail.append(f"your accounts involved: {listed}{more}")
    if foreign:
        names = [name.placeholder(n) for n in foreign[:max_placeholders]]
        more = "…" if len(foreign) > max_placeholders else ""
        where = ("are at other banks" if bank not in set(graph.node_bank[foreign].tolist())
                 else "are anonymised")
        tail.append(f"{len(foreign)} of the accounts {where} (shown as {', '.join(names)}{more})")
    return core + ("; " + "; ".join(tail) if tail else "") + "."


def cut_alerts(graph, instances: list[PatternInstance], banks: list[str], *,
               currency: str = "USD", max_placeholders: int = 5,
               placeholder_key: bytes | None = None) -> dict[str, pa.Table]:
    """One ALERT_SCHEMA table per member bank (empty when it has none).

    A bank gets an alert for an instance only if the instance contains a transaction the bank
    submitted itself that touches one of its own accounts; the alert then lists those
    transactions and those accounts, and nothing identifying about anyone else.
    """
    run_key = placeholder_key if placeholder_key is not None else secrets.token_bytes(32)
    member = set(banks)
    rows: dict[str, list[dict]] = defaultdict(list)
    emitted: set[str] = set()  # the same edges under one pattern are one alert, not two
    instances = [i for i in instances if len(i.edge_idx)]
    # txn_id strings only for the payments in some instance, fetched in one go.
    pool = np.unique(np.concatenate([np.asarray(i.edge_idx, dtype=np.int64) for i in instances])) \
        if instances else np.zeros(0, np.int64)
    pool_txn = np.asarray([str(x) for x in graph.txn_ids(pool)], dtype=object)
    bank_code = graph.node_bank_code
    code_of = {b: int(c) for b, c in zip(graph.node_bank, bank_code)}
    for inst in sorted(instances, key=lambda i: -i.score):
        e = np.asarray(inst.edge_idx, dtype=np.int64)
        txn = pool_txn[np.searchsorted(pool, e)]
        id_prefix = _id_prefix(inst.pattern, txn.tolist())
        src, dst = graph.src[e], graph.dst[e]
        src_code, dst_code = bank_code[src], bank_code[dst]
        nodes_arr = np.unique(np.concatenate([src, dst]))
        nodes = nodes_arr.tolist()
        pattern_banks = set(graph.node_bank[nodes_arr].tolist())
        score = float(np.clip(inst.score, 0.0, 1.0))
        amount = float(inst.evidence.get("amount", graph.amount[e].sum()))
        hops = int(inst.evidence.get("hops", 1))
        t = graph.t[e]
        start = int(t.min())
        end = int(t.max())
        # Bank code of the payer's / payee's bank where that bank submitted the payment, else
        # -1: a bank's own payments are those where its code appears on either side.
        src_own = np.where(graph.src_submitted[e], src_code, -1)
        dst_own = np.where(graph.dst_submitted[e], dst_code, -1)
        own_codes = set(src_own.tolist()) | set(dst_own.tolist())
        for bank in sorted(pattern_banks & member):
            code = code_of[bank]
            if code not in own_codes:
                continue
            # Payments bank submitted itself, as payer's or payee's bank.
            own = (src_own == code) | (dst_own == code)
            # Its own accounts on those payments (at least the side it submitted for).
            named = set(src[own & (src_code == code)].tolist()) \
                | set(dst[own & (dst_code == code)].tolist())
            accounts = sorted({str(graph.node_account[n]) for n in named})
            aid = _alert_id_for(id_prefix, bank)
            if aid in emitted:
                continue
            emitted.add(aid)
            key = hmac.digest(run_key, aid.encode(), "sha256")
            rows[bank].append({
                "alert_id": aid,
                "bank": bank,
                "pattern": inst.pattern,
                "score": score,
                "accounts": accounts,
                "txn_ids": sorted(txn[own].tolist()),
                "start": start * 1_000_000,
                "end": end * 1_000_000,
                "amount": amount,
                "institutions": len(pattern_banks),
                "hops": hops,
                "explanation": _explain(graph, inst, e, bank, named, key, currency, amount,
                                        len(pattern_banks), hops, max_placeholders, nodes),
            })
    return {bank: _to_table(rows.get(bank, [])) for bank in banks}


def _to_table(rows: list[dict]) -> pa.Table:
    if not rows:
        return empty_alert_table()
    rows = sorted(rows, key=lambda r: (-r["score"], r["start"], r["alert_id"]))
    cols = {name: [r[name] for r in rows] for name in ALERT_SCHEMA.names}
    arrays = [pa.array(cols[f.name], type=f.type if not pa.types.is_timestamp(f.type)
                       else pa.int64()) for f in ALERT_SCHEMA]
    arrays = [a.cast(f.type) if pa.types.is_timestamp(f.type) else a
              for a, f in zip(arrays, ALERT_SCHEMA)]
    return pa.Table.from_arrays(arrays, schema=ALERT_SCHEMA)
