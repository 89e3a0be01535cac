"""Each typology detector finds a hand-built instance and stays quiet on its ordinary
look-alike (payroll, merchants, pay-backs, bills...)."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pyarrow as pa
import pytest
from sklearn.base import clone

from aml.enclave.detect.config import DetectionConfig
from aml.enclave.detect.graph import TransactionGraph
from aml.enclave.detect.typologies import DETECTORS, build_detectors
from aml.core.schema import ALERT_PATTERNS, TRANSACTION_SCHEMA

T0 = dt.datetime(2026, 1, 5, tzinfo=dt.timezone.utc)


@pytest.fixture(scope="module")
def config():
    return DetectionConfig.load()


class Book:
    """Builds a small transaction table; accounts are named, banks assigned round-robin."""

    def __init__(self):
        self.rows = []

    def pay(self, src, dst, hours, amount, fmt="Wire", label=None, currency="USD"):
        self.rows.append(dict(
            txn_id=f"T{len(self.rows):06d}", timestamp=T0 + dt.timedelta(hours=hours),
            src_bank=self.bank(src), src_account=src, dst_bank=self.bank(dst), dst_account=dst,
            amount=float(amount), currency=currency, amount_received=None,
            receiving_currency=None, payment_format=fmt, label=label))
        return len(self.rows) - 1

    @staticmethod
    def bank(account):
        return f"B0{1 + sum(map(ord, account)) % 4}"

    def graph(self, config):
        return TransactionGraph.from_table(
            pa.Table.from_pylist(self.rows, schema=TRANSACTION_SCHEMA), config)


def detect(name, book, config):
    g = book.graph(config)
    return g, DETECTORS[name].from_config(config).fit(g).detect(g)


def txns(g, inst):
    return set(g.edges.txn_id.to_numpy()[inst.edge_idx])


def assert_found(name, book, config, expected_rows):
    g, found = detect(name, book, config)
    expected = {f"T{i:06d}" for i in expected_rows}
    hits = [i for i in found if expected <= txns(g, i)]
    assert hits, f"{name} missed its instance"
    assert all(0.0 <= i.score <= 1.0 and i.pattern == name for i in found)
    return hits[0]


def assert_quiet(name, book, config):
    _, found = detect(name, book, config)
    assert found == [], f"{name} fired on a look-alike: {[i.evidence for i in found]}"


# ----------------------------------------------------------------- estimator idiom
def test_registry_covers_the_ten_typologies(config):
    assert set(DETECTORS) == set(ALERT_PATTERNS) - {"model"}
    assert [d.name for d in build_detectors(config)] == list(DETECTORS)


def test_detectors_are_sklearn_estimators(config):
    d = DETECTORS["fan_out"].from_config(config)
    assert d.get_params()["min_degree"] == config.section("fan_out")["min_degree"]
    d2 = clone(d).set_params(min_degree=7)
    assert d2.min_degree == 7 and d.min_degree != 7 or d.min_degree == 7
    for cls in DETECTORS.values():
        params = cls.from_config(config).get_params()
        assert params and "min_score" in params


# ----------------------------------------------------------------- fan-out / fan-in
def test_fan_out_found(config):
    b = Book()
    rows = [b.pay("A0000001", f"A00001{k:02d}", 1 + 1.5 * k, 6000 + 10 * k) for k in range(8)]
    for k in range(8):  # the payees are mules: each passes the money on within hours
        b.pay(f"A00001{k:02d}", f"A00009{k:02d}", 2 + 1.5 * k, (6000 + 10 * k) * 0.98)
    inst = assert_found("fan_out", b, config, rows)
    assert inst.evidence["counterparties"] == 8


def test_fan_out_quiet_on_ordinary_star(config):
    b = Book()  # a renovation paid to eight firms: the money stops with its payees
    for k in range(8):
        b.pay("A0000001", f"A00001{k:02d}", 1 + 1.5 * k, 6000 + 10 * k)
    assert_quiet("fan_out", b, config)


def test_fan_out_quiet_on_monthly_payroll(config):
    b = Book()
    for month in range(3):  # same staff, same day each month, one batch within minutes
        for k in range(12):
            b.pay("A0000001", f"A00002{k:02d}", month * 30 * 24 + 9 + k * 0.01, 4200 + k,
                  fmt="ACH", label=0 if month < 2 else None)
    assert_quiet("fan_out", b, config)


def test_fan_in_found(config):
    b = Book()
    rows = [b.pay(f"A00003{k:02d}", "A0000002", 2 + 2 * k, 3000 + 50 * k) for k in range(7)]
    for k in range(7):  # each payer was handed the money just before
        b.pay(f"A00008{k:02d}", f"A00003{k:02d}", 1 + 2 * k, (3000 + 50 * k) / 0.97)
    assert_found("fan_in", b, config, rows)


def test_fan_in_quiet_on_merchant(config):
    b = Book()
    for k in range(60):
        b.pay(f"A00004{k:02d}", "A0000003", 0.3 * k, 20 + k % 30, fmt="Credit Card")
    assert_quiet("fan_in", b, config)


# ----------------------------------------------------------------- scatter / gather
def test_scatter_gather_found(config):
    b = Book()
    rows = []
    for k in range(4):
        mid = f"A00005{k:02d}"
        rows.append(b.pay("A0000010", mid, 1 + k, 10000))
        rows.append(b.pay(mid, "A0000011", 6 + k, 9800))
    inst = assert_found("scatter_gather", b, config, rows)
    assert inst.evidence["intermediaries"] == 4


def test_scatter_gather_quiet_when_amounts_not_conserved(config):
    b = Book()
    for k in range(4):  # friends each pass a small share on to a common contact
        mid = f"A00005{k:02d}"
        b.pay("A0000010", mid, 1 + k, 10000)
        b.pay(mid, "A0000011", 6 + k, 900)
    assert_quiet("scatter_gather", b, config)


def test_gather_scatter_found(config):
    b = Book()
    rows = [b.pay(f"A00006{k:02d}", "A0000020", 1 + k, 8000) for k in range(4)]
    rows += [b.pay("A0000020", f"A00007{k:02d}", 12 + k, 7700) for k in range(4)]
    for k in range(4):  # the receivers pass it on
        b.pay(f"A00007{k:02d}", f"A00009{k:02d}", 14 + k, 7600)
    assert_found("gather_scatter", b, config, rows)


def test_gather_scatter_quiet_when_nothing_moves_on(config):
    b = Book()
    for k in range(4):
        b.pay(f"A00006{k:02d}", "A0000020", 1 + k, 8000)
    for k in range(4):  # small onward spending only
        b.pay("A0000020", f"A00007{k:02d}", 12 + k, 600)
    assert_quiet("gather_scatter", b, config)


# ----------------------------------------------------------------- cycle
def test_cycle_found(config):
    b = Book()
    ring = ["A0000030", "A0000031", "A0000032", "A0000033"]
    amount, rows = 50000.0, []
    for k in range(4):
        rows.append(b.pay(ring[k], ring[(k + 1) % 4], 3 * k, amount))
        amount *= 0.99
    inst = assert_found("cycle", b, config, rows)
    assert inst.evidence["hops"] == 4


def test_cycle_quiet_on_friends_paybacks(config):
    b = Book()
    # A pays for B, B pays back part of it days later; and a 3-way split of a dinner bill.
    b.pay("A0000040", "A0000041", 0, 800, fmt="ACH")
    b.pay("A0000041", "A0000040", 70, 800, fmt="ACH")
    b.pay("A0000040", "A0000042", 1, 1200, fmt="ACH")
    b.pay("A0000042", "A0000043", 100, 600, fmt="ACH")
    b.pay("A0000043", "A0000040", 130, 1000, fmt="ACH")
    assert_quiet("cycle", b, config)


# ----------------------------------------------------------------- bipartite / stack
def test_bipartite_found(config):
    b = Book()
    rows = [b.pay(f"A00008{i}0", f"A00009{j}0", 2 + i + 0.5 * j, 5000)
            for i in range(3) for j in range(3)]
    inst = assert_found("bipartite", b, config, rows)
    assert inst.evidence["sources"] == 3 and inst.evidence["destinations"] == 3


def test_bipartite_quiet_on_regular_customers_of_suppliers(config):
    b = Book()
    for week in range(4):  # the same customers pay the same suppliers every week
        for i in range(3):
            for j in range(3):
                b.pay(f"A00008{i}0", f"A00009{j}0", week * 168 + 2 + i + 0.5 * j, 5000,
                      label=0 if week < 3 else None)
    g, found = detect("bipartite", b, config)
    assert not any(g.is_new[i.edge_idx].any() for i in found)


def test_bipartite_leaves_out_other_business_of_ring_members(config):
    b = Book()
    rows = [b.pay(f"A00008{i}0", f"A00009{j}0", 2 + i + 0.5 * j, 5000 + 300 * (i - j))
            for i in range(3) for j in range(3)]
    other = b.pay("A0000800", "A0000910", 9, 40000)  # a first payment of another size
    g, found = detect("bipartite", b, config)
    inst = assert_found("bipartite", b, config, rows)
    assert f"T{other:06d}" not in txns(g, inst)


def test_bipartite_quiet_on_chance_meetings_of_unlike_payments(config):
    b = Book()
    amounts = [[600, 5000, 14000], [2500, 900, 30000], [11000, 1200, 4000]]
    for i in range(3):
        for j in range(3):
            b.pay(f"A00008{i}0", f"A00009{j}0", 2 + i + 0.5 * j, amounts[i][j])
    assert_quiet("bipartite", b, config)


def test_stack_found(config):
    b = Book()
    layers = [["A0000101", "A0000102"], ["A0000111", "A0000112", "A0000113"],
              ["A0000121", "A0000122"]]
    rows = [b.pay(s, m, 1 + 0.3 * k, 6000) for k, (s, m) in
            enumerate((s, m) for s in layers[0] for m in layers[1])]
    rows += [b.pay(m, d, 12 + 0.3 * k, 5900) for k, (m, d) in
             enumerate((m, d) for m in layers[1] for d in layers[2])]
    inst = assert_found("stack", b, config, rows)
    assert inst.evidence["layers"] == 3


def test_stack_quiet_on_plain_bipartite(config):
    b = Book()
    for i in range(3):
        for j in range(3):
            b.pay(f"A00008{i}0", f"A00009{j}0", 2 + i + 0.5 * j, 5000)
    assert_quiet("stack", b, config)


# ----------------------------------------------------------------- chains
def test_random_chain_found(config):
    b = Book()
    amount, rows = 30000.0, []
    for k in range(5):
        rows.append(b.pay(f"A00012{k:02d}", f"A00012{k + 1:02d}", 2.5 * k, amount))
        amount *= 0.99
    inst = assert_found("random_chain", b, config, rows)
    assert inst.evidence["hops"] == 5


def test_random_chain_quiet_on_slow_respending(config):
    b = Book()
    amount = 30000.0
    for k in range(5):  # each account keeps half and moves the rest on days later
        b.pay(f"A00012{k:02d}", f"A00012{k + 1:02d}", 100 * k, amount)
        amount *= 0.5
    assert_quiet("random_chain", b, config)


def test_pass_through_found(config):
    b = Book()
    b.pay("A0000129", "A0000130", -1, 20300)  # the payer was funded just before: a linked hop
    rows = [b.pay("A0000130", "A0000131", 0, 20000),
            b.pay("A0000131", "A0000132", 2, 9000), b.pay("A0000131", "A0000133", 3, 8500)]
    inst = assert_found("pass_through", b, config, rows)
    assert inst.evidence["forward_share"] == pytest.approx(17500 / 20000)


def test_pass_through_quiet_on_a_one_hop_remittance(config):
    """The same forwarding with nothing before or after it: an ordinary remittance. Only the
    joint view can tell it from a mule, by the hop before or after."""
    b = Book()
    b.pay("A0000135", "A0000136", 0, 20000)
    b.pay("A0000136", "A0000137", 2, 9000)
    b.pay("A0000136", "A0000138", 3, 8500)
    assert_quiet("pass_through", b, config)


def test_pass_through_quiet_on_salary_and_bills(config):
    b = Book()
    b.pay("A0000140", "A0000141", 0, 4200, fmt="ACH")
    for k in range(5):
        b.pay("A0000141", f"A00015{k:02d}", 3 + k, 250, fmt="ACH")
    assert_quiet("pass_through", b, config)


# ----------------------------------------------------------------- structuring
def test_structuring_found_across_banks(config):
    b = Book()
    rows = [b.pay(f"A00016{k:02d}", "A0000160", 3 * k, 9200 + 100 * k, fmt="Cash")
            for k in range(7)]
    for k in range(7):  # each smurf was handed the cash just before
        b.pay(f"A00019{k:02d}", f"A00016{k:02d}", 3 * k - 1, (9200 + 100 * k) / 0.97)
    inst = assert_found("structuring", b, config, rows)
    assert inst.evidence["institutions"] >= 2 and inst.evidence["direction"] == "in"


def test_structuring_quiet_on_monthly_rent_and_large_payments(config):
    b = Book()
    for k in range(7):
        b.pay(f"A00017{k:02d}", "A0000170", 24 * 30 * k, 9500, fmt="ACH")  # monthly
        b.pay(f"A00018{k:02d}", "A0000180", 3 * k, 15000, fmt="Wire")      # above the line
    assert_quiet("structuring", b, config)


def test_code_defaults_match_the_shipped_toml(config):
    for name, cls in DETECTORS.items():
        assert cls().get_params() == dict(config.section(name)), name


def test_misspelt_config_key_is_refused(tmp_path):
    from aml.enclave.detect.config import DEFAULT_CONFIG_PATH
    from aml.core.errors import ConfigError

    text = DEFAULT_CONFIG_PATH.read_text().replace("min_degree = 5", "min_degre = 5", 1)
    p = tmp_path / "c.toml"
    p.write_text(text)
    with pytest.raises(ConfigError):
        build_detectors(DetectionConfig.load(p))
