"""Seal / unseal throughput next to raw AES-256-GCM over the same bytes, in the same run.

    .venv/bin/python benchmarks/bench_seal.py [--size-mib 1024] [--chunk-mib 1] [--dir /tmp]

Two baselines, so the ratio means something:
  raw GCM, memory     AESGCM.encrypt_into over the bytes already in RAM (the CPU ceiling)
  raw GCM, file->file read 1 MiB, encrypt_into a reused buffer, write, fsync (the same I/O
                      and durability as seal_file)
  SHA-256, memory     hashlib over the same bytes: the signature's digest pass, which the
                      format requires over the whole ciphertext (a serial hash)
  seal_bytes          aml.core.crypto.container.seal_bytes, memory to memory (compare: raw memory)
  seal / open         aml.core.crypto.container.seal_file / open_file, streamed file to file
                      (compare: raw file->file)
Sealing adds one SHA-256 pass over the ciphertext (the signature's digest), chunk by chunk
into reused buffers. Overlapping that hash with the encryption in a second thread was tried
and measured no faster (docs/scaling.md), so sealing stays single-threaded. Opening hashes the whole file before it decrypts anything (verify first). On a CPU
with VAES, AES-GCM is the cheap part: SHA-256 and the I/O set the pace, so against raw GCM in
memory sealing is bounded by SHA-256 / AES-GCM speed (the "SHA-256 ceiling" line).
Target: sealing >= 0.5x raw file-to-file GCM.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import tempfile
import time
from pathlib import Path

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from aml.core.crypto.container import Header, open_file, seal_bytes, seal_file
from aml.core.crypto.keys import BankKeyPair


def make_source(path: Path, size: int) -> None:
    block = os.urandom(64 << 20)
    with open(path, "wb") as f:
        left = size
        while left:
            n = min(left, len(block))
            f.write(block[:n])
            left -= n


def raw_gcm_memory(path: Path, chunk: int) -> float:
    data = path.read_bytes()
    view = memoryview(data)
    aead = AESGCM(os.urandom(32))
    out = bytearray(chunk + 16)
    start = time.perf_counter()
    for i, at in enumerate(range(0, len(data), chunk)):
        part = view[at : at + chunk]
        aead.encrypt_into(i.to_bytes(12, "big"), part, None, memoryview(out)[: len(part) + 16])
    elapsed = time.perf_counter() - start
    del view, data
    return elapsed


def raw_gcm_file(src: Path, dst: Path, chunk: int) -> float:
    aead = AESGCM(os.urandom(32))
    plain, cipher = memoryview(bytearray(chunk)), memoryview(bytearray(chunk + 16))
    start = time.perf_counter()
    with open(src, "rb") as fin, open(dst, "wb") as fout:
        i = 0
        while n := fin.readinto(plain):
            aead.encrypt_into(i.to_bytes(12, "big"), plain[:n], None, cipher[: n + 16])
            fout.write(cipher[: n + 16])
            i += 1
        fout.flush()
        os.fsync(fout.fileno())
    return time.perf_counter() - start


def sha256_memory(path: Path, chunk: int) -> float:
    data = path.read_bytes()
    view = memoryview(data)
    h = hashlib.sha256()
    start = time.perf_counter()
    for at in range(0, len(data), chunk):
        h.update(view[at : at + chunk])
    elapsed = time.perf_counter() - start
    del view, data
    return elapsed


def seal_memory(path: Path, header, recipient, sender) -> float:
    data = path.read_bytes()
    start = time.perf_counter()
    sealed = seal_bytes(data, header, recipient, sender)
    elapsed = time.perf_counter() - start
    del sealed, data
    return elapsed


def file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(8 << 20):
            h.update(block)
    return h.hexdigest()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--chunk-mib", type=float, default=1.0)
    ap.add_argument("--dir", default=None, help="scratch directory (needs ~4x the size free)")
    a = ap.parse_args()
    size, chunk = a.size_mib << 20, int(a.chunk_mib * (1 << 20))
    bank, enclave = BankKeyPair.generate("B01"), BankKeyPair.generate()
    now = int(time.time())
    header = Header(kind="batch", sender="B01", recipient="enclave", batch_id="bench", sequence=1, created=now,
                    expires=now + 3600, schema_version=1, row_count=0, recipient_key_id=enclave.key_id,
                    sender_key_id=bank.key_id, chunk_size=chunk)
    with tempfile.TemporaryDirectory(dir=a.dir) as tmp:
        d = Path(tmp)
        src, raw, sealed, back = d / "src.bin", d / "raw.bin", d / "sealed.amlb", d / "back.bin"
        make_source(src, size)
        raw_gcm_file(src, raw, chunk)  # warm the page cache and the allocator
        raw.unlink()
        t_mem = raw_gcm_memory(src, chunk)
        t_sha = sha256_memory(src, chunk)
        t_seal_mem = seal_memory(src, header, enclave.public, bank)
        t_raw = raw_gcm_file(src, raw, chunk)
        raw.unlink()
        start = time.perf_counter()
        seal_file(src, sealed, header, enclave.public, bank)
        t_seal = time.perf_counter() - start
        start = time.perf_counter()
        open_file(sealed, back, enclave, bank.public, "enclave")
        t_open = time.perf_counter() - start
        assert file_digest(back) == file_digest(src), "round trip changed the payload"

    mbps = lambda t: size / t / 1e6  # noqa: E731
    print(f"payload {size / 2**20:.0f} MiB, chunk {chunk / 2**20:g} MiB, cpus {os.cpu_count()}")
    print(f"{'raw AES-256-GCM, memory':28s} {mbps(t_mem):9.0f} MB/s")
    print(f"{'SHA-256, memory':28s} {mbps(t_sha):9.0f} MB/s   (ceiling for sealing: {t_mem / t_sha:.2f}x raw memory)")
    print(f"{'seal_bytes, memory':28s} {mbps(t_seal_mem):9.0f} MB/s   {t_mem / t_seal_mem:.2f}x raw memory")
    print(f"{'raw AES-256-GCM, file->file':28s} {mbps(t_raw):9.0f} MB/s")
    print(f"{'seal_file, file->file':28s} {mbps(t_seal):9.0f} MB/s   {t_raw / t_seal:.2f}x raw file->file "
          f"(target >= 0.5x: {'met' if t_raw / t_seal >= 0.5 else 'NOT met'}), {t_mem / t_seal:.2f}x raw memory")
    print(f"{'open_file, file->file':28s} {mbps(t_open):9.0f} MB/s   {t_raw / t_open:.2f}x raw file->file, "
          f"{t_mem / t_open:.2f}x raw memory")

if __name__ == "__main__":
    main()
