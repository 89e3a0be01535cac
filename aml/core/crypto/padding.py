"""Padmé padding (Nikitin et al., PETS 2019): round a length up so that it reveals only
O(log log L) bits, at most ~12% overhead. Alert files are padded so their size tells a bank
little about how many alerts other banks' data produced."""

from __future__ import annotations


def padme(length: int) -> int:
    """The Padmé bucket for `length`: keep the top floor(log2(E)) + 1 bits of the mantissa,
    where E = floor(log2(length)); round the rest up."""
    if length < 0:
        raise ValueError("length must be non-negative")
    if length < 2:
        return length
    exponent = length.bit_length() - 1  # floor(log2 L)
    mantissa_bits = exponent.bit_length()  # floor(log2 E) + 1
    mask = (1 << (exponent - mantissa_bits)) - 1
    return (length + mask) & ~mask
