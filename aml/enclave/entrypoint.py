"""The enclave image's entry point: ``python -m aml.enclave.entrypoint``.

Paths are fixed inside the image (the contract mounts the encrypted data volume on
/var/lib/enclave-aml); settings come from the contract's env section:

    AML_MEMBERS                  JSON {bank id: key_id}; the member key files must match it
    AML_ATTESTATION_SIGNING_KEY  base64 Ed25519 key (see aml/core/crypto/hyperprotect.py); when set,
                                 Hyper Protect evidence is required and a simulated start refused
    AML_CRON                     schedule of the consortium run (default 02:00 daily)

Start-up: first boot creates the enclave keys (`init_enclave`); every boot re-measures the
image, binds the keys to this boot's IBM attestation record (`build_document`) and publishes
``OUTBOX/attestation.json`` for the banks; then it serves the consortium flow (`aml.operator.run.serve`).
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Mapping
from pathlib import Path

from aml.core.errors import AmlError, AttestationError, BadInputError, MembershipError

DATA_ROOT = Path("/var/lib/enclave-aml")
# Set by `main` (never read from the contract): while set, the consortium flow and the enclave
# worker use this layout's paths and ignore the paths a Prefect run was started with.
FIXED_ROOT_ENV = "AML_IMAGE_DATA_ROOT"
HYPERPROTECT_DIR = Path("/var/hyperprotect")  # se-checksums.txt, se-signature.bin (mounted read-only)


def layout(root: Path) -> dict[str, Path]:
    return {
        "enclave": root / "enclave",  # keys and sealed history: on the encrypted volume only
        "inbox": root / "inbox",
        "outbox": root / "outbox",
        "members": root / "inbox" / "members",  # ID.pub files, checked against AML_MEMBERS
        "chain": root / "inbox" / "hyperprotect-chain.pem",  # IBM attestation cert + intermediate
    }


def fixed_layout() -> dict[str, Path] | None:
    """The image's fixed paths when running in the enclave image, else None."""
    root = os.environ.get(FIXED_ROOT_ENV)
    return layout(Path(root)) if root else None


def _check_members(members_dir: Path, expected_json: str | None) -> None:
    """The member key files (delivered by the untrusted operator) must be exactly the ones the
    contract names, by key id."""
    if expected_json is None:
        return
    from aml.core.crypto.keys import load_public

    try:
        expected = json.loads(expected_json)
    except ValueError:
        raise BadInputError("AML_MEMBERS is not valid JSON") from None
    if not isinstance(expected, dict) or not expected:
        raise BadInputError("AML_MEMBERS must be a JSON object {bank id: key_id}")
    found = {p.stem: load_public(p).key_id for p in sorted(Path(members_dir).glob("*.pub"))}
    if set(found) != set(expected):
        raise MembershipError(
            f"member key files ({len(found)}) do not match the contract's AML_MEMBERS ({len(expected)}): "
            f"missing {sorted(set(expected) - set(found))}, extra {sorted(set(found) - set(expected))}")
    for bank, key_id in expected.items():
        if found[bank] != key_id:
            raise MembershipError(f"member '{bank}' key id {found[bank]} differs from the contract's {key_id}")


def prepare(root: Path = DATA_ROOT, hyperprotect_dir: Path = HYPERPROTECT_DIR,
            environ: Mapping[str, str] = os.environ) -> Path:
    """Identity and attestation for this boot; returns the published attestation path."""
    from aml.enclave.identity import init_enclave, project_root
    from aml.core.measure import measure_tree

    paths = layout(Path(root))
    for key in ("enclave", "inbox", "outbox"):
        paths[key].mkdir(parents=True, exist_ok=True)
    _check_members(paths["members"], environ.get("AML_MEMBERS"))
    attestation = paths["enclave"] / "attestation.json"
    if not attestation.exists():
        init_enclave(paths["enclave"], paths["members"])
    document = json.loads(attestation.read_text())
    statement = dict(document["statement"])
    statement["measurement"] = measure_tree(project_root())  # this boot's image, not the first one's
    statement["issued"] = int(time.time())

    signing_key = environ.get("AML_ATTESTATION_SIGNING_KEY")
    if signing_key:
        from aml.core.crypto.hyperprotect import attestation_key_from_b64, build_document

        try:
            record = (Path(hyperprotect_dir) / "se-checksums.txt").read_text()
            signature = (Path(hyperprotect_dir) / "se-signature.bin").read_bytes()
            chain = paths["chain"].read_text()
        except OSError as exc:
            raise AttestationError(
                f"Hyper Protect evidence is missing ({Path(exc.filename).name}); refusing a simulated start "
                "while AML_ATTESTATION_SIGNING_KEY is set") from None
        document = build_document(statement, attestation_key_from_b64(signing_key), record, signature, [chain])
        tmp = attestation.with_name("attestation.json.tmp")
        tmp.write_text(json.dumps(document, indent=1, sort_keys=True) + "\n")
        os.replace(tmp, attestation)
    else:
        print("aml: WARNING: no AML_ATTESTATION_SIGNING_KEY: SIMULATED attestation, not confidential",
              file=sys.stderr)
    published = paths["outbox"] / "attestation.json"
    published.write_bytes(attestation.read_bytes())
    return published


# Needed once, at start-up, to sign this boot's statement; every process the enclave starts
# afterwards (Prefect's server, the enclave workers, Dask workers) must not inherit it.
START_UP_SECRETS = ("AML_ATTESTATION_SIGNING_KEY",)


def take_settings(environ: dict = os.environ) -> dict[str, str]:
    """A copy of the contract's settings, with the start-up secrets removed from `environ`
    (the process environment), so no child process inherits them."""
    settings = dict(environ)
    for name in START_UP_SECRETS:
        environ.pop(name, None)
    return settings


def main(argv: list[str] | None = None) -> int:
    environ = take_settings()
    try:
        # Overwrites whatever the contract's env section says: the flow runs (started by Prefect,
        # with parameters anyone with API access can set) inherit it and use the image's paths.
        # Set in the process environment itself (`environ` is take_settings' copy).
        os.environ[FIXED_ROOT_ENV] = environ[FIXED_ROOT_ENV] = str(DATA_ROOT)
        published = prepare(DATA_ROOT, HYPERPROTECT_DIR, environ)
        print(f"aml: enclave attestation published at {published}", file=sys.stderr)
        from aml.operator.run import serve

        paths = layout(DATA_ROOT)
        return int(serve(paths["enclave"], paths["inbox"], paths["outbox"],
                         cron=environ.get("AML_CRON") or "0 2 * * *", name="nightly") or 0)
    except AmlError as exc:
        print(f"aml: enclave: {exc.code}: {exc}", file=sys.stderr)
        return exc.exit_code


if __name__ == "__main__":
    sys.exit(main())
