"""A run's alert files, one per member bank, all of one size.

Padmé padding alone still let a file's size say whether its bank got no alert, one, or ten
(3,471 / 4,239 / 4,751 bytes). Every member's file of a run is therefore padded to the same
total size: the largest Padmé bucket of the run, and at least `ALERT_FILE_FLOOR` bytes. The
operator learns only that bucket (an upper bound over all banks), never which bank it belongs
to, and nothing at all in runs that stay under the floor.
"""

from __future__ import annotations

import time

from aml.core.crypto import container

# Every alert file is at least this big (bytes on disk). An empty file is about 3.5 KiB and
# each alert adds roughly 60-150 bytes compressed, so runs where no bank gets more than a few
# dozen alerts all look the same.
ALERT_FILE_FLOOR = 16 << 10


def _payload_len_for(header: container.Header, size: int) -> int | None:
    """The plaintext length that makes a file with this header exactly `size` bytes, or None
    when `size` falls in the gap where one more chunk adds a tag."""
    fixed = container.sealed_length(header, 0) - container.stream_length(0, header.chunk_size)
    rest = size - fixed  # = payload_len + TAG_LEN * chunk_count(payload_len)
    chunk = header.chunk_size
    k = max(1, -(-rest // (chunk + container.TAG_LEN)))
    for n_chunks in (k, k + 1):
        payload_len = rest - container.TAG_LEN * n_chunks
        if payload_len >= container.LENGTH_PREFIX_LEN \
                and container.chunk_count(payload_len, chunk) == n_chunks:
            return payload_len
    return None


def seal_run_alerts(tables: dict, members: dict, enclave_keys, run_id: str, sequence: int,
                    provenance: dict, now: int | None = None,
                    floor: int = ALERT_FILE_FLOOR) -> dict[str, bytes]:
    """bank -> its sealed alert file (`identity.seal_alerts`), every file the same size.

    `tables`: bank -> ALERT_SCHEMA table (missing: no alerts); `members`: bank -> PublicKeys.
    Files are sealed once at their own Padmé size, then those below the run's largest (or the
    floor) are sealed again with the padding that brings them to it."""
    from aml.enclave.identity import seal_alerts
    from aml.core.schema import ALERT_SCHEMA

    created = int(time.time()) if now is None else now  # one header shape for the whole run

    def seal(bank: str, pad_to: int = 0) -> bytes:
        table = tables.get(bank)
        table = table if table is not None else ALERT_SCHEMA.empty_table()
        return seal_alerts(table, bank, members[bank], enclave_keys, run_id, sequence, provenance,
                           now=created, pad_to=pad_to)

    sealed = {bank: seal(bank) for bank in sorted(members)}
    headers = {bank: container.read_header(data) for bank, data in sealed.items()}
    target = max([floor, *(len(d) for d in sealed.values())])
    # Headers differ in length only by the bank id; a target a chunk tag cannot reach for
    # some bank (a chunk boundary) moves up a few bytes.
    while any(len(d) != target and _payload_len_for(headers[b], target) is None
              for b, d in sealed.items()):
        target += 1
    for bank, data in sealed.items():
        if len(data) != target:
            sealed[bank] = seal(bank, pad_to=_payload_len_for(headers[bank], target))
    return sealed
