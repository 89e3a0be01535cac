"""Cut pattern instances into per-bank alerts, scoped to what each bank may see.

The privacy rule (non-negotiable): an alert for bank B lists only B's own accounts and only
transactions B submitted itself, and every measured value in it (time window, amount, the
figures in the explanation) is computed from those transactions alone. About the rest of the
pattern B learns only coarse counts (institutions, hops, accounts) and the typology's own
definition ("passed most of it on shortly afterwards"), never another bank's amount, time,
share or id. Foreign accounts appear only as placeholders keyed per alert, so two alerts
cannot be linked through them. Alert ids are a keyed MAC (the key exists only inside the
enclave), so they cannot be brute-forced back to the transaction ids of the pattern.
"""

from __future__ import annotations

import hmac
import secrets
from collections import defaultdict

import numpy as np
import pyarrow as pa
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from aml.enclave.detect.typologies.base import PatternInstance
from aml.core.schema import ALERT_SCHEMA

_PLACEHOLDER_HEX = 6
_ID_HEX = 20
# Scores are published in steps of 0.05: detector scores are formulas of measurements (a
# foreign account's dwell time, a cycle's conservation), which full precision would hand out.
SCORE_STEP = 0.05
_ID_KEY_INFO = b"aml-alerts/1 alert-id key"
_PLACEHOLDER_LABEL = b"aml-alerts/1 placeholder key"


def alert_key(enclave_secret: bytes) -> bytes:
    """The alert-id key: HKDF-SHA256 of a secret that exists only inside the enclave (its
    storage key). The same enclave identity gives the same key, so a rerun (after a crash)
    gives byte-identical alerts; nobody outside the enclave can recompute an id."""
    if len(enclave_secret) < 32:
        raise ValueError("the enclave secret must be at least 32 bytes")
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_ID_KEY_INFO).derive(enclave_secret)


def alert_id(key: bytes, pattern: str, txn_ids: list[str], bank: str) -> str:
    """Stable id: same key, pattern, transactions and bank -> same id on every rerun."""
    return _alert_id_for(_id_prefix(key, pattern, txn_ids), bank)


def _id_prefix(key: bytes, pattern: str, txn_ids: list[str]):
    """The part of alert_id's MAC shared by every bank of one instance."""
    h = hmac.new(key, digestmod="sha256")
    for part in (pattern, *sorted(txn_ids)):
        h.update(part.encode("utf-8"))
        h.update(b"\x00")
    return h


def _alert_id_for(prefix, bank: str) -> str:
    h = prefix.copy()
    h.update(bank.encode("utf-8"))
    h.update(b"\x00")
    return h.hexdigest()[:_ID_HEX]


def quantise_score(score: float) -> float:
    return round(round(float(np.clip(score, 0.0, 1.0)) / SCORE_STEP) * SCORE_STEP, 2)


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
            # Keyed by the account itself (not its node number in this run's graph), so a rerun
            # over the same batches spells the same placeholder.
            account = f"{self.graph.node_bank[node]}\x1f{self.graph.node_account[node]}"
            digest = hmac.digest(self.key, account.encode("utf-8"), "sha256").hex()
            name, n = f"ext-{digest[:_PLACEHOLDER_HEX]}", _PLACEHOLDER_HEX
            while name in self.foreign.values():  # collision within one alert: lengthen
                n += 2
                name = f"ext-{digest[:n]}"
            self.foreign[node] = name
        return self.foreign[node]


def _own_part(graph, own_edges: np.ndarray, currency: str) -> str:
    """What the bank's own payments in the alert add up to: its own figures only."""
    total = format_amount(float(graph.amount[own_edges].sum()), currency)
    if len(own_edges) == 1:
        return f"your payment in it: {total}"
    t = graph.t[own_edges]
    return (f"your {len(own_edges)} payments in it: {total} in total "
            f"over {format_duration(float(t.max() - t.min()))}")


def _explain(graph, inst: PatternInstance, edges: np.ndarray, own: np.ndarray, bank: str,
             named: set[int], key: bytes, currency: str, institutions: int, hops: int,
             score: float, max_placeholders: int, nodes: list[int] | None = None) -> str:
    """The alert's sentence. Figures (amounts, durations) come from the bank's own payments
    (`edges[own]`) only; the rest of the pattern is described by counts and by what the
    typology means, never by a measurement of another bank's payments."""
    name = _Namer(graph, named, key)
    ev = inst.evidence
    src, dst = graph.src[edges], graph.dst[edges]
    if nodes is None:  # the instance's accounts, sorted
        nodes = np.unique(np.concatenate([src, dst])).tolist()
    center = ev.get("center")
    sink = ev.get("sink")
    others = len(nodes) - (center is not None) - (sink is not None)
    at = f"at {institutions} institutions"
    p = inst.pattern
    if p == "fan_out":
        core = f"Funds fanned out from {name(center)} to {others} accounts {at}"
    elif p == "fan_in":
        core = f"Funds from {others} accounts {at} were gathered into {name(center)}"
    elif p == "scatter_gather":
        core = (f"Funds were scattered from {name(center)} through {others} intermediary "
                f"accounts and gathered again into {name(sink)} {at}")
    elif p == "gather_scatter":
        n_src = len(np.unique(src[dst == center])) if center is not None else 0
        n_dst = len(np.unique(dst[src == center])) if center is not None else 0
        core = (f"Funds from {n_src} accounts were gathered into {name(center)} and "
                f"scattered to {n_dst} accounts {at}")
    elif p == "cycle":
        core = (f"Funds travelled around a cycle of {hops} payments through {len(nodes)} "
                f"accounts {at} and returned to their origin")
    elif p == "bipartite":
        core = (f"Funds moved from {len(np.unique(src))} payers to {len(np.unique(dst))} "
                f"payees in a dense many-to-many pattern {at}")
    elif p == "stack":
        core = (f"Funds moved through {ev.get('layers', hops + 1)} stacked layers of "
                f"{len(nodes)} accounts {at}")
    elif p == "random_chain":
        core = (f"Funds were passed along a chain of {hops} payments through {len(nodes)} "
                f"accounts {at}, each account passing on most of what it received")
    elif p == "structuring":
        direction = "paid into" if ev.get("direction") == "in" else "paid out of"
        core = (f"{len(edges)} payments just below the {ev.get('threshold', 10000):,.0f} "
                f"{currency} reporting threshold were {direction} {name(center)} "
                f"involving {institutions} institutions")
    elif p == "pass_through":
        if center in named:  # the bank's own account: its own in- and outflow
            mine = edges[own]
            got = format_amount(float(graph.amount[mine[graph.dst[mine] == center]].sum()), currency)
            gave = format_amount(float(graph.amount[mine[graph.src[mine] == center]].sum()), currency)
            core = (f"Your account {graph.node_account[center]} received {got} and passed "
                    f"{gave} of it on shortly afterwards")
        else:  # another bank's (or an unlisted) account: the typology's definition, no figures
            core = (f"Account {name(center)} received funds and passed most of them on shortly "
                    f"afterwards, involving {institutions} institutions")
    elif p == "model":
        core = (f"The pooled model scored {int(own.sum())} of your payment(s) as likely "
                f"laundering (score {score:.2f}) in a pattern across {institutions} institutions")
    else:
        core = f"Funds moved through {len(nodes)} accounts {at}"

    tail = [_own_part(graph, edges[own], currency)]
    listed_own = [n for n in nodes if n in named and n not in (center, sink)]
    foreign = [n for n in nodes if n not in named]
    if listed_own:
        listed = ", ".join(str(graph.node_account[n]) for n in listed_own[:max_placeholders])
        more = (f" and {len(listed_own) - max_placeholders} more"
                if len(listed_own) > max_placeholders else "")
        tail.append(f"your accounts involved: {listed}{more}")
    if foreign:
        names = [name.placeholder(n) for n in foreign[:max_placeholders]]
        more = "…" if len(foreign) > max_placeholders else ""
        where = ("are at other banks" if bank not in set(graph.node_bank[foreign].tolist())
                 else "are anonymised")
        tail.append(f"{len(foreign)} of the accounts {where} (shown as {', '.join(names)}{more})")
    return core + "; " + "; ".join(tail) + "."


def cut_alerts(graph, instances: list[PatternInstance], banks: list[str], *,
               currency: str = "USD", max_placeholders: int = 5,
               alert_key: bytes | None = None,
               placeholder_key: bytes | None = None) -> dict[str, pa.Table]:
    """One ALERT_SCHEMA table per member bank (empty when it has none).

    A bank gets an alert for an instance only if the instance contains a transaction the bank
    submitted itself that touches one of its own accounts; the alert then lists those
    transactions and those accounts, its times and amounts are theirs, and it says nothing
    identifying or measured about anyone else.

    `alert_key` keys the alert ids (the enclave passes `alert_key(storage key)`); without it a
    fresh random key is used, so ids are stable only within this call. Placeholders are keyed
    by `placeholder_key` (tests), else by a key derived from the alert key.
    """
    id_key = alert_key if alert_key is not None else secrets.token_bytes(32)
    ph_key = placeholder_key if placeholder_key is not None \
        else hmac.digest(id_key, _PLACEHOLDER_LABEL, "sha256")
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
        id_prefix = _id_prefix(id_key, inst.pattern, txn.tolist())
        src, dst = graph.src[e], graph.dst[e]
        src_code, dst_code = bank_code[src], bank_code[dst]
        nodes_arr = np.unique(np.concatenate([src, dst]))
        nodes = nodes_arr.tolist()
        pattern_banks = set(graph.node_bank[nodes_arr].tolist())
        score = quantise_score(inst.score)
        hops = int(inst.evidence.get("hops", 1))
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
            key = hmac.digest(ph_key, aid.encode(), "sha256")
            t_own = graph.t[e[own]]
            rows[bank].append({
                "alert_id": aid,
                "bank": bank,
                "pattern": inst.pattern,
                "score": score,
                "accounts": accounts,
                "txn_ids": sorted(txn[own].tolist()),
                "start": int(t_own.min()) * 1_000_000,
                "end": int(t_own.max()) * 1_000_000,
                "amount": float(graph.amount[e[own]].sum()),
                "institutions": len(pattern_banks),
                "hops": hops,
                "explanation": _explain(graph, inst, e, own, bank, named, key, currency,
                                        len(pattern_banks), hops, score, max_placeholders,
                                        nodes),
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
