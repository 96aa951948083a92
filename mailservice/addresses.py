"""One email address checked with email-validator, special-use domains allowed or not.

email-validator refuses every address on a special-use or reserved domain (RFC 6761, RFC 6762:
`.local`, `.test`, `localhost`, ...) and offers no switch for it but `test_environment` (`.test`
alone) and its module-level `SPECIAL_USE_DOMAIN_NAMES`, which every caller in the process
shares. Internal relays use such domains, so `validate_address(value, special_use=True)`
accepts them, and names without a dot (`alerts@mailhub`), with every other rule of the library
kept: the address is checked with a stand-in for its special-use suffix, which the result then
gets back.
"""

from __future__ import annotations

from email_validator import (
    SPECIAL_USE_DOMAIN_NAMES,
    EmailNotValidError,
    ValidatedEmail,
    validate_email,
)

# Not special-use, and as plain as a label can be: IDNA and case folding leave it as it is.
_STAND_IN = "example"
# ICANN reserved `.internal` for private networks in 2024, after email-validator's list was made.
_SPECIAL_USE = (*SPECIAL_USE_DOMAIN_NAMES, "internal")


def _special_suffix(domain: str) -> str | None:
    """The special-use name this domain is, or ends in (`local` for `host.LOCAL`), or None."""
    lowered = domain.lower()
    for name in _SPECIAL_USE:
        if lowered == name or lowered.endswith("." + name):
            return name
    return None


def validate_address(
    value: str, *, special_use: bool = False, strict: bool = False
) -> ValidatedEmail:
    """email-validator's check without DNS; EmailNotValidError when the address is not one.

    `special_use`: accept special-use and reserved domains and names without a dot, which are
    not deliverable on the Internet but are on an internal relay.
    """
    if not special_use:
        result = validate_email(value, check_deliverability=False, strict=strict)
        if _special_suffix(result.ascii_domain) is not None:  # `.internal`: not in the library's
            raise EmailNotValidError(
                "The part after the @-sign is a special-use or reserved name that cannot be used "
                "with email."
            )
        return result
    local, at, domain = value.rpartition("@")
    suffix = _special_suffix(domain) if at else None
    if suffix is None:
        return validate_email(
            value, check_deliverability=False, strict=strict, globally_deliverable=False
        )
    stand_in = f"{local}@{domain[: -len(suffix)]}{_STAND_IN}"
    result = validate_email(
        stand_in, check_deliverability=False, strict=strict, globally_deliverable=False
    )

    def restored(text: str | None) -> str | None:
        return None if text is None else text.removesuffix(_STAND_IN) + suffix

    result.normalized = restored(result.normalized) or ""
    result.domain = restored(result.domain) or ""
    result.ascii_domain = restored(result.ascii_domain) or ""
    result.ascii_email = restored(result.ascii_email)
    return result
