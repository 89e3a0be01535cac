"""`aml report`: one self-contained, offline HTML file of a bank's alerts.

Runs at the bank; banks' analyst machines are offline, so the file makes no network request:
no scripts, no fonts, no stylesheets or images from anywhere, not even an `http` string.
Pictures are networkx + matplotlib drawings saved as SVG (text as <text>, so no glyph paths)
and inlined. matplotlib is imported here only, never by the other commands.

What each alert's picture shows is what scoping allows: the bank's own accounts by id; with
`--transactions` (the bank's own batch), each own payment as an arrow labelled with its amount
and time, and a direct counterparty at another bank as "counterparty-N" (numbered per alert,
never its id or bank); accounts further away only as the enclave's placeholders and counts.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import html
import io
import re
from collections import Counter, defaultdict
from pathlib import Path

from aml.bank.alerts_file import ALERT_COLUMNS, read_alerts, read_own_transactions
from aml.core.errors import BadInputError

PLACEHOLDER = re.compile(r"ext-[0-9a-f]{6,}")
OWN, FOREIGN, CLOUD = "#1f5fa8", "#9a9a9a", "#d9d9d9"
CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;margin:0;color:#1d2330;background:#f4f5f7}
header{background:#1d2330;color:#fff;padding:18px 28px}header h1{margin:0;font-size:22px}
header p{margin:4px 0 0;color:#c9cfdb;font-size:13px}main{padding:18px 28px;max-width:1180px}
section{background:#fff;border-radius:8px;padding:14px 18px;margin:0 0 16px;box-shadow:0 1px 2px #0002}
h2{font-size:17px;margin:0 0 10px}h3{font-size:15px;margin:0 0 6px}
table{border-collapse:collapse;font-size:13px;width:100%}th,td{padding:4px 8px;border-bottom:1px solid #e3e6eb;text-align:left}
th{background:#f0f2f5}td.n{text-align:right;font-variant-numeric:tabular-nums}
.bar{display:inline-block;height:10px;background:#1f5fa8;border-radius:2px;vertical-align:middle}
.tag{display:inline-block;padding:1px 7px;border-radius:9px;font-size:12px;background:#e8eefb;color:#1f5fa8}
.st-new{background:#fdecea;color:#a8321f}.st-in_review{background:#fff4d6;color:#8a6100}.st-closed{background:#e3f4e8;color:#21703a}
.why{background:#f7f9fc;border-left:3px solid #1f5fa8;padding:8px 12px;font-size:14px;margin:8px 0}
.pics{display:flex;flex-wrap:wrap;gap:12px;align-items:flex-start}.pics figure{margin:0}
figcaption{font-size:12px;color:#5b6475}svg{max-width:100%;height:auto}
dl{display:grid;grid-template-columns:max-content 1fr;gap:2px 12px;font-size:12px;margin:6px 0 0}
dt{color:#5b6475}dd{margin:0;font-family:ui-monospace,monospace;word-break:break-all}
a{color:#1f5fa8}.muted{color:#5b6475;font-size:12px}
"""


def _e(x) -> str:
    return html.escape(str(x), quote=True)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# --- pictures ----------------------------------------------------------------------------
def _svg(fig, salt: str) -> str:
    """The figure as inline SVG with nothing that looks like a URL: matplotlib's XML prolog,
    DOCTYPE, metadata and namespace declarations are dropped (HTML's parser does not need them)."""
    import matplotlib.pyplot as plt

    buf = io.StringIO()
    with plt.rc_context({"svg.fonttype": "none", "svg.hashsalt": salt}):
        fig.savefig(buf, format="svg", bbox_inches="tight", metadata={"Date": None, "Creator": None})
    plt.close(fig)
    svg = buf.getvalue()
    svg = svg[svg.index("<svg"):]
    svg = re.sub(r"<metadata>.*?</metadata>", "", svg, flags=re.S)
    svg = re.sub(r'\s+xmlns(:\w+)?="[^"]*"', "", svg)
    return svg


def _own_payments(alert: dict, txns: dict[str, dict] | None, bank: str) -> list[dict] | None:
    """The alert's own payments with foreign sides replaced by per-alert placeholders."""
    if txns is None:
        return None
    names: dict[tuple, str] = {}
    out = []
    for t in sorted((txns[i] for i in alert["txn_ids"] if i in txns), key=lambda r: (r["timestamp"], r["txn_id"])):
        ends = []
        for b, acc in ((t["src_bank"], t["src_account"]), (t["dst_bank"], t["dst_account"])):
            ends.append(acc if b == bank else names.setdefault((b, acc), f"counterparty-{len(names) + 1}"))
        out.append({"src": ends[0], "dst": ends[1], "src_own": t["src_bank"] == bank,
                    "dst_own": t["dst_bank"] == bank, "time": t["timestamp"], "amount": float(t["amount"]),
                    "currency": t["currency"], "format": t.get("payment_format") or ""})
    return out


def subgraph_svg(alert: dict, payments: list[dict] | None) -> str:
    import matplotlib

    matplotlib.use("svg", force=True)
    import matplotlib.pyplot as plt
    import networkx as nx

    g = nx.DiGraph()
    own = set(alert["accounts"])
    dashed, labels = [], {}
    if payments:
        pair = defaultdict(list)
        for p in payments:
            for side, is_own in (("src", p["src_own"]), ("dst", p["dst_own"])):
                g.add_node(p[side], own=is_own)
                own |= {p[side]} if is_own else set()
            pair[(p["src"], p["dst"])].append(p)
        for (s, d), ps in pair.items():
            g.add_edge(s, d)
            cur = ps[0]["currency"]
            if len(ps) == 1:
                when = f"\n{ps[0]['time']:%m-%d %H:%M}" if len(payments) <= 8 else ""
                labels[(s, d)] = f"{ps[0]['amount']:,.0f} {cur}{when}"
            else:
                labels[(s, d)] = f"{len(ps)}× {sum(p['amount'] for p in ps):,.0f} {cur}\n{ps[0]['time']:%m-%d}..{ps[-1]['time']:%m-%d}"
    else:
        hub = f"{alert['pattern']}\n{alert['amount']:,.0f} total\n{alert['institutions']} institutions, {alert['hops']} hops"
        g.add_node(hub, own=None)
        for a in alert["accounts"]:
            g.add_node(a, own=True)
            g.add_edge(a, hub)
            dashed.append((a, hub))
        shown = list(dict.fromkeys(PLACEHOLDER.findall(alert["explanation"])))
        m = re.search(r"(\d+) of the accounts are", alert["explanation"])
        n_foreign = int(m.group(1)) if m else len(shown)
        for ph in shown:
            g.add_node(ph, own=False)
            g.add_edge(hub, ph)
            dashed.append((hub, ph))
        if n_foreign > len(shown):
            more = f"+{n_foreign - len(shown)} more\n(other banks)"
            g.add_node(more, own=False)
            g.add_edge(hub, more)
            dashed.append((hub, more))

    # Layers, left to right. Own payments: by generation when they form no cycle (payers, then
    # those they paid, ...), else who only pays in / own accounts / the rest. Without payments:
    # own accounts, the pattern, the foreign placeholders.
    if payments and nx.is_directed_acyclic_graph(g):
        layer = {n: i for i, gen in enumerate(nx.topological_generations(g)) for n in gen}
    elif payments:
        layer = {n: 1 if a["own"] else (0 if g.in_degree(n) == 0 else 2) for n, a in g.nodes(data=True)}
    else:
        layer = {n: {True: 0, None: 1, False: 2}[a["own"]] for n, a in g.nodes(data=True)}
    nx.set_node_attributes(g, layer, "layer")
    pos = nx.multipartite_layout(g, subset_key="layer", align="vertical")
    biggest = max(Counter(layer.values()).values())
    fig, ax = plt.subplots(figsize=(8.6, max(2.8, 0.62 * biggest + 1)))
    ax.axis("off")
    colours = [OWN if a["own"] else (CLOUD if a["own"] is None else FOREIGN) for _, a in g.nodes(data=True)]
    solid = [e for e in g.edges if e not in dashed]
    nx.draw_networkx_nodes(g, pos, ax=ax, node_color=colours, node_size=[
        1600 if a["own"] is None else 420 for _, a in g.nodes(data=True)], edgecolors="#ffffff")
    nx.draw_networkx_edges(g, pos, ax=ax, edgelist=solid, arrows=True, arrowstyle="-|>", arrowsize=14,
                           edge_color="#1d2330", width=1.2, connectionstyle="arc3,rad=0.06", node_size=420)
    nx.draw_networkx_edges(g, pos, ax=ax, edgelist=dashed, arrows=False, style="dashed",
                           edge_color="#9a9a9a", width=1.0)
    span = max((y for _, y in pos.values()), default=0) - min((y for _, y in pos.values()), default=0)
    above = {n: (x, y + 0.045 * max(span, 0.5)) for n, (x, y) in pos.items()}
    nx.draw_networkx_labels(g, above, ax=ax, font_size=8, labels={
        n: ("" if a["own"] is None else n) for n, a in g.nodes(data=True)}, verticalalignment="bottom",
        bbox=dict(boxstyle="round,pad=0.1", fc="#ffffff", ec="none", alpha=0.8))
    for n, a in g.nodes(data=True):  # big label boxes for the aggregate node(s)
        if a["own"] is None:
            ax.text(*pos[n], n, ha="center", va="center", fontsize=7.5,
                    bbox=dict(boxstyle="round", fc=CLOUD, ec="#9a9a9a"))
    if labels:
        nx.draw_networkx_edge_labels(g, pos, ax=ax, edge_labels=labels, font_size=6.5, label_pos=0.45,
                                     bbox=dict(boxstyle="round,pad=0.15", fc="#ffffff", ec="none", alpha=0.85))
    if payments:  # beyond the bank's own payments the enclave tells counts only
        ax.set_title(f"your payments in the alert; the rest of the pattern ({alert['institutions']} institutions, "
                     f"{alert['hops']} hops) is not shown", fontsize=8, color="#5b6475", loc="left")
    ax.margins(0.12, 0.12)
    return _svg(fig, alert["alert_id"] + "g")


def timeline_svg(alert: dict, payments: list[dict] | None, bank: str) -> str:
    import matplotlib

    matplotlib.use("svg", force=True)
    import matplotlib.dates as mdates
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8.6, 2.2))
    ax.axvspan(alert["start"], alert["end"] if alert["end"] > alert["start"] else
               alert["start"] + dt.timedelta(minutes=30), color="#e8eefb", label="alert window")
    if payments:
        for direction, colour, marker in (("in", "#21703a", "v"), ("out", "#a8321f", "^"), ("internal", OWN, "o")):
            pts = [p for p in payments if (p["src_own"], p["dst_own"]) == {
                "in": (False, True), "out": (True, False), "internal": (True, True)}[direction]]
            if pts:
                ax.scatter([p["time"] for p in pts], [p["amount"] for p in pts], c=colour, marker=marker,
                           s=28, label=f"{direction} ({len(pts)})", zorder=3)
                ax.vlines([p["time"] for p in pts], 0, [p["amount"] for p in pts], colors=colour, lw=0.6)
        ax.set_ylabel("amount", fontsize=8)
        ax.set_ylim(bottom=0)
    else:
        ax.set_yticks([])
        ax.text(0.5, 0.5, f"{len(alert['txn_ids'])} own payment(s), {alert['amount']:,.0f} in total "
                "(give --transactions for each payment)", transform=ax.transAxes, ha="center", fontsize=8)
    ax.legend(fontsize=7, loc="lower left", bbox_to_anchor=(0, 1.0), frameon=False, ncol=4)
    ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(ax.xaxis.get_major_locator()))
    ax.tick_params(labelsize=7)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    return _svg(fig, alert["alert_id"] + "t")


# --- the page ----------------------------------------------------------------------------
def _summary(alerts: list[dict]) -> str:
    by = defaultdict(list)
    for a in alerts:
        by[a["pattern"]].append(a)
    top = max(len(v) for v in by.values())
    rows = []
    for pattern, items in sorted(by.items(), key=lambda kv: (-len(kv[1]), kv[0])):
        scores = sorted(a["score"] for a in items)
        rows.append(f"<tr><td>{_e(pattern)}</td><td class=n>{len(items)}</td>"
                    f"<td><span class=bar style='width:{120 * len(items) // top}px'></span></td>"
                    f"<td class=n>{scores[0]:.2f}</td><td class=n>{scores[len(scores) // 2]:.2f}</td>"
                    f"<td class=n>{scores[-1]:.2f}</td><td class=n>{sum(a['amount'] for a in items):,.0f}</td></tr>")
    bands = Counter(min(int(a["score"] * 5), 4) for a in alerts)
    hist = "".join(f"<tr><td>{b / 5:.1f} – {(b + 1) / 5:.1f}</td><td class=n>{bands.get(b, 0)}</td>"
                   f"<td><span class=bar style='width:{120 * bands.get(b, 0) // max(bands.values())}px'></span></td></tr>"
                   for b in range(4, -1, -1))
    return ("<section><h2>Summary</h2><div class=pics><div style='flex:2'><h3>By typology</h3><table>"
            "<tr><th>typology</th><th>alerts</th><th></th><th>min score</th><th>median</th><th>max</th>"
            "<th>own amount</th></tr>" + "".join(rows) + "</table></div><div style='flex:1'><h3>By score</h3>"
            "<table><tr><th>score</th><th>alerts</th><th></th></tr>" + hist + "</table></div></div></section>")


def _case_list(alerts: list[dict], cases: dict[str, dict]) -> str:
    rows = []
    for a in alerts:
        c = cases.get(a["alert_id"], {})
        status = c.get("status") or "new"
        rows.append(f"<tr><td><a href='#a-{_e(a['alert_id'])}'>{_e(a['alert_id'])}</a></td><td>{_e(a['pattern'])}</td>"
                    f"<td class=n>{a['score']:.2f}</td><td class=n>{a['amount']:,.0f}</td>"
                    f"<td>{a['start']:%Y-%m-%d %H:%M}</td><td class=n>{len(a['accounts'])}</td>"
                    f"<td class=n>{len(a['txn_ids'])}</td><td><span class='tag st-{_e(status)}'>{_e(status)}</span></td>"
                    f"<td>{_e(c.get('disposition') or '-')}</td><td>{_e(c.get('assignee') or '-')}</td></tr>")
    note = "" if cases else "<p class=muted>No case store given (--db): every alert shows as new.</p>"
    return ("<section><h2>Cases</h2>" + note + "<table><tr><th>alert</th><th>typology</th><th>score</th>"
            "<th>own amount</th><th>first payment</th><th>own accounts</th><th>own payments</th><th>status</th>"
            "<th>disposition</th><th>assignee</th></tr>" + "".join(rows) + "</table></section>")


def _alert_section(alert: dict, payments, bank: str, case: dict, provenance: dict) -> str:
    extra = {k: v for k, v in alert.items() if k not in ALERT_COLUMNS}
    prov = {"alert id": alert["alert_id"], **provenance, **{k: v for k, v in extra.items()}}
    if case:
        prov["case"] = f"{case.get('status')}, {case.get('disposition') or 'no disposition'}"
    facts = (f"{len(alert['accounts'])} own account(s), {len(alert['txn_ids'])} own payment(s), "
             f"{alert['amount']:,.2f} in total (base currency), {alert['start']:%Y-%m-%d %H:%M} – "
             f"{alert['end']:%Y-%m-%d %H:%M} UTC; the whole pattern spans {alert['institutions']} "
             f"institutions and {alert['hops']} hops.")
    how = ("own payments from your batch file" if payments else
           "alert-level facts only (give --transactions for each payment)")
    return (f"<section id='a-{_e(alert['alert_id'])}'><h2>{_e(alert['pattern'])} "
            f"<span class=tag>score {alert['score']:.2f}</span> <span class=muted>{_e(alert['alert_id'])}</span></h2>"
            f"<div class=why>{_e(alert['explanation'])}</div><p class=muted>{_e(facts)}</p><div class=pics>"
            f"<figure>{subgraph_svg(alert, payments)}<figcaption>The money's path: your accounts (blue, by id), "
            f"accounts at other banks (grey, placeholders only); {_e(how)}.</figcaption></figure>"
            f"<figure>{timeline_svg(alert, payments, bank)}<figcaption>Timeline of your own payments in the alert."
            f"</figcaption></figure></div><h3>Provenance</h3><dl>"
            + "".join(f"<dt>{_e(k)}</dt><dd>{_e(v)}</dd>" for k, v in prov.items()) + "</dl></section>")


def build_report(alerts: list[dict], bank: str, sources: list[Path], transactions: dict | None = None,
                 transactions_path: Path | None = None, cases: dict[str, dict] | None = None,
                 now: dt.datetime | None = None) -> str:
    """The whole HTML page (a string); alerts highest score first."""
    from aml import __version__

    cases = cases or {}
    now = now or dt.datetime.now(dt.timezone.utc)
    alerts = sorted(alerts, key=lambda a: (-a["score"], a["alert_id"]))
    provenance = {f"alerts file {p.name}": f"sha256 {_sha256(p)}" for p in sources}
    if transactions_path is not None:
        provenance[f"own batch {transactions_path.name}"] = f"sha256 {_sha256(transactions_path)}"
    provenance["report written"] = now.strftime("%Y-%m-%d %H:%M UTC") + f" by enclave-aml {__version__}"
    body = [_summary(alerts), _case_list(alerts, cases)] if alerts else [
        "<section><h2>No alerts</h2><p>The enclave raised no alert about this bank's accounts.</p></section>"]
    for a in alerts:
        body.append(_alert_section(a, _own_payments(a, transactions, bank), bank, cases.get(a["alert_id"], {}),
                                   provenance))
    title = f"AML alerts for bank {bank}"
    return ("<!DOCTYPE html><html lang=en><head><meta charset=utf-8>"
            "<meta name=viewport content='width=device-width,initial-scale=1'>"
            # belt and braces: even a stray reference could not be fetched
            "<meta http-equiv=Content-Security-Policy content=\"default-src 'none'; style-src 'unsafe-inline'; "
            "img-src data:\">"
            f"<title>{_e(title)}</title><style>{CSS}</style></head><body><header><h1>{_e(title)}</h1>"
            f"<p>{len(alerts)} alert(s) from the consortium's enclave; written {now:%Y-%m-%d %H:%M} UTC. "
            "Bank-local and confidential: your own accounts and payments only; other banks' accounts appear "
            "only as placeholders and counts.</p></header><main>" + "".join(body) + "</main></body></html>\n")


def report_command(a) -> int:
    sources = [Path(p) for p in a.alerts]
    alerts = read_alerts(sources, bank=a.bank)
    out = Path(a.out)
    if out.suffix.lower() not in (".html", ".htm"):
        raise BadInputError(f"report '{out.name}' must end in .html")
    txns = read_own_transactions(Path(a.transactions), a.bank) if a.transactions else None
    cases = {}
    if a.db:
        from aml.bank.cases import CaseStore

        with CaseStore(Path(a.db)) as store:
            cases = {c["alert_id"]: c for c in store.cases()}
    page = build_report(alerts, a.bank, sources, txns, Path(a.transactions) if a.transactions else None, cases)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(page, encoding="utf-8")
    tmp.replace(out)
    print(f"wrote {out} ({len(alerts)} alerts, {len(page) // 1024} KiB, offline: no external references)")
    return 0
