"""The one exception hierarchy of enclave-aml.

Every error carries a short machine-readable ``code`` and an ``exit_code`` the CLI uses.
Messages say *what* failed and *why*; they must never contain transaction data (account ids,
amounts, names), because exception text can travel into Prefect's database and logs.
"""

from __future__ import annotations


class AmlError(Exception):
    """Base class. ``code`` is stable and safe to log; the message is one line."""

    code = "error"
    exit_code = 1

    def __init__(self, message: str, *, batch_id: str | None = None):
        super().__init__(message)
        self.batch_id = batch_id

    def __str__(self) -> str:  # one line, always
        return " ".join(super().__str__().split())


# --- exit code 2: the input is wrong (file missing, malformed, wrong options) -------------
class BadInputError(AmlError):
    code = "bad_input"
    exit_code = 2


class SchemaError(BadInputError):
    """A transaction file cannot be read as the canonical schema at all."""

    code = "schema"


class ConfigError(BadInputError):
    code = "config"


class TooLargeError(BadInputError):
    """A batch would decode to more than the configured limits (rows, bytes, string length):
    refused before it is decoded (a decompression bomb, or simply too big)."""

    code = "too_large"


class ResourceExhaustedError(BadInputError):
    """Unsealing a batch ran the enclave worker out of memory (or the worker died on it)."""

    code = "resource_exhausted"


class KeyFileError(BadInputError):
    """A key file is missing, malformed or has unsafe permissions."""

    code = "key_file"


# --- exit code 3: something failed verification (tampering, forgery, policy) --------------
class VerificationError(AmlError):
    code = "verification_failed"
    exit_code = 3


class FormatError(VerificationError):
    """A sealed file is not a well-formed container (bad magic, version, lengths)."""

    code = "format"


class TamperedError(VerificationError):
    """Authentication failed: header, wrapped key, a chunk, or the commitment was altered."""

    code = "tampered"


class TruncatedError(VerificationError):
    code = "truncated"


class TrailingDataError(VerificationError):
    code = "trailing_data"


class SignatureError(VerificationError):
    """The signature is not from the claimed sender (forged, other bank, or altered)."""

    code = "bad_signature"


class WrongRecipientError(VerificationError):
    code = "wrong_recipient"


class ExpiredError(VerificationError):
    code = "expired"


class ReplayError(VerificationError):
    """The batch was seen before, or its sequence number is not above the last accepted."""

    code = "replay"


class StaleAlertsError(ReplayError):
    """An alert file is older than one the bank already opened from the same enclave (replayed)."""

    code = "stale_alerts"


class MembershipError(VerificationError):
    code = "not_a_member"


class AttestationError(VerificationError):
    """The enclave's attestation does not verify or is outside the bank's pinned policy."""

    code = "attestation"


# --- exit code 4: our own fault ---------------------------------------------------------
class InternalError(AmlError):
    code = "internal"
    exit_code = 4


class EnclaveBoundaryError(InternalError):
    """Raised when code tries to cross the enclave boundary in a way that could leak data."""

    code = "boundary"


# --- added by the enclave runner / flow (aml/enclave/runner.py, flows/consortium.py) --------
class EnclaveTaskError(InternalError):
    """What crosses the enclave boundary in place of any exception raised inside it: the task's
    name, the original error's code and the batch id, never the original message."""

    code = "enclave_task"

    def __init__(self, task: str, cause_code: str, batch_id: str | None = None):
        where = f" on batch {batch_id}" if batch_id else ""
        super().__init__(f"enclave task {task} failed{where}: {cause_code}", batch_id=batch_id)
        self.task = task
        self.cause_code = cause_code

    def __reduce__(self):  # pickles as its three safe fields only
        return (type(self), (self.task, self.cause_code, self.batch_id))


class RunBusyError(AmlError):
    """Another consortium run holds the enclave's run lock."""

    code = "busy"


# --- added for the enclave's sealed state (aml/enclave/state.py) ------------------------------
class RollbackError(VerificationError):
    """The ledger, the history or the enclave's own state is older than (or differs from) what
    the enclave last sealed: rolled back, altered or lost."""

    code = "rollback"


class PendingRunError(AmlError):
    """An interrupted run is pending inside the enclave and this run leaves some of its batches
    out without their having been quarantined."""

    code = "pending_run"
    exit_code = 2
