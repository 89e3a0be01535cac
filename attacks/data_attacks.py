"""Attacks a member bank makes with data it signs itself (issue 14):

- `decompression_bomb` (finding 4): small batches that decode to far more than the budget; each
  must be refused before decoding (container level: the enclave's own unsealing steps);
- `txn_id_reuse` (finding 1): the bank reuses other banks' txn_ids to erase or rewrite their
  payments.

`txn_id_reuse` runs in process In process, through the enclave's own steps: `validate` with
the sender's bank id, `merge_batches` (with the history of an earlier night), `run_detection`.

Each case adds one kind of forged rows from the `evil` member to an honest night and checks:
every payment between two other banks is in the merge exactly once and unchanged, and (for
rows that touch no other bank's account) every other bank's typology alerts are exactly the
honest run's. Before the fix, a reused txn_id made the honest payment vanish (its copies "disagreed").
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from aml.enclave.merge import merge_batches
from aml.core.schema import TRANSACTION_SCHEMA, validate

from attacks.harness import ClassResult, Consortium, check_file
from attacks.payloads import bomb_payloads

KEY = 32 * b"k"  # fixed placeholder key: alerts of two runs compare byte for byte


def _alerts(batches, members, history=None) -> tuple[pa.Table, dict[str, set]]:
    from aml.enclave.detect.pipeline import run_detection

    merged = merge_batches(batches, history)
    result = run_detection(merged.merged, members=members, alert_key=KEY, placeholder_key=KEY)
    out = {}
    for bank in members:
        # Typology alerts only: the pooled model learns from every bank's rows, so rows a bank
        # may legitimately send about its own accounts move its scores a little.
        out[bank] = {(a["alert_id"], a["pattern"], tuple(a["txn_ids"]), tuple(a["accounts"]))
                     for a in result.alerts_for(bank).to_pylist() if a["pattern"] != "model"}
    return merged.merged, out


def _between_others(night: dict[str, pa.Table], evil: str) -> pa.Table:
    """Every payment of the night between two banks other than `evil`, once."""
    rows = [t for b, t in night.items() if b != evil]
    table = pa.concat_tables(rows).cast(TRANSACTION_SCHEMA)
    mask = pc.and_(pc.not_equal(table["src_bank"], evil), pc.not_equal(table["dst_bank"], evil))
    table = table.filter(mask)
    keys = pc.binary_join_element_wise(table["txn_id"], table["src_bank"], table["dst_bank"], "\x1f")
    _, first = np.unique(keys.to_numpy(zero_copy_only=False), return_index=True)
    return table.take(pa.array(np.sort(first)))


def _view(table: pa.Table) -> set[tuple]:
    cols = ["txn_id", "timestamp", "src_bank", "src_account", "dst_bank", "dst_account", "amount",
            "currency", "payment_format"]
    return set(zip(*(table[c].to_pylist() for c in cols)))


def _with(table: pa.Table, **columns) -> pa.Table:
    for name, values in columns.items():
        i = table.schema.get_field_index(name)
        table = table.set_column(i, table.schema.field(name), values)
    return table


def merge_classes(members: list[str], night: dict[str, pa.Table], later: dict[str, pa.Table] | None,
                  canary: str) -> list[ClassResult]:
    """The `txn_id_reuse` class. `night`: every member's honest batch; `later`: the next night's
    (the attack then comes a night late, against the history)."""
    evil = members[0]
    honest = {b: t.cast(TRANSACTION_SCHEMA) for b, t in night.items()}
    batches = sorted(honest.items())
    others = _between_others(honest, evil)
    n = others.num_rows
    res = ClassResult("txn_id_reuse", "merge")
    if n == 0:
        res.not_run = "no payment between two other banks in the data"
        return [res]
    _, reference = _alerts(batches, members)
    forged_accounts = pa.array([f"{canary}-evil-{i}" for i in range(n)])
    evil_bank = pa.array([evil] * n)
    cases = {
        # the same txn_ids (and times) on payments inside the evil bank: valid rows of its own
        "reuse_ids_inside_own_bank": (_with(others, src_bank=evil_bank, dst_bank=evil_bank,
                                            src_account=forged_accounts, dst_account=forged_accounts,
                                            amount=pc.add(others["amount"], 1.0)), True),
        # exact copies of the other banks' rows under the evil bank's name: foreign rows
        "copies_of_others_rows": (others, True),
        # the same, altered, and past validation (a merge-level backstop): copies that are not
        # the sender's payment count for nothing
        "altered_copies_unvalidated": (_with(others, amount=pc.multiply(others["amount"], 3.0)), False),
    }
    for name, (forged, validated) in cases.items():
        rows = validate(forged, bank_id=evil).good if validated else forged
        for when in ("same_night", "next_night") if later else ("same_night",):
            if when == "same_night":
                merged, alerts = _alerts(batches + [(evil, rows)], members)
            else:  # the honest night is history; the forged rows come with the next night
                first = merge_batches(batches)
                nxt = sorted((b, t.cast(TRANSACTION_SCHEMA)) for b, t in later.items())
                merged, alerts = _alerts(nxt + [(evil, rows)], members, first.history())
            kept = _view(others) <= _view(merged)
            counted = _once(merged, others)
            same = all(alerts[b] == reference[b] for b in members if b != evil) if when == "same_night" else True
            res.record(f"{name}/{when}", f"kept={kept} once={counted} alerts_same={same}",
                       "kept=True once=True alerts_same=True", kept and counted and same)
    # a disputed copy of its own payments: the counterparty's copy must survive, unchanged
    own = pa.concat_tables([t for b, t in batches if b == evil])
    cross = own.filter(pc.and_(pc.not_equal(own["src_bank"], own["dst_bank"]),
                               pc.or_(pc.equal(own["src_bank"], evil), pc.equal(own["dst_bank"], evil))))
    if cross.num_rows:
        disputed = _with(cross, amount=pc.multiply(cross["amount"], 2.0))
        merged = merge_batches(batches + [(evil, disputed)]).merged
        counter = pa.concat_tables([t for b, t in batches if b != evil])
        mine = counter.filter(pc.or_(pc.equal(counter["src_bank"], evil), pc.equal(counter["dst_bank"], evil)))
        kept = _view(mine) <= _view(merged)
        res.record("disputed_own_payments", f"counterparty copies kept={kept}", "kept=True", kept)
    return [res]


def _once(merged: pa.Table, others: pa.Table) -> bool:
    """Each payment between other banks appears in exactly one merged row."""
    keys = pc.binary_join_element_wise(merged["txn_id"], merged["src_bank"], merged["dst_bank"], "\x1f")
    want = set(pc.binary_join_element_wise(others["txn_id"], others["src_bank"], others["dst_bank"],
                                           "\x1f").to_pylist())
    counts: dict[str, int] = {}
    for k in keys.to_pylist():
        if k in want:
            counts[k] = counts.get(k, 0) + 1
    return set(counts) == want and all(v == 1 for v in counts.values())


def bomb_class(con: Consortium, base: pa.Table, bank: str, first_sequence: int) -> list[ClassResult]:
    """`decompression_bomb` at container level: each bomb, signed and sealed by `bank`, through
    the enclave's checks (`check_file`): refused with the expected code, quickly."""
    import time

    members, keys = con.members(), con.enclave_keys()
    res = ClassResult("decompression_bomb", "container")
    for i, p in enumerate(bomb_payloads(base.cast(TRANSACTION_SCHEMA))):
        data = con.craft(bank, first_sequence + i, p.data, p.row_count)[1]
        start = time.perf_counter()
        got = check_file(data, members, keys)
        seconds = time.perf_counter() - start
        ok = got.matches(p.expected, p.rows if "accepted" in p.expected else None) and seconds < 5
        res.record(p.name, f"{got.code} in {seconds:.2f} s ({len(data)} B sealed)", p.expected, ok)
    return [res]
