"""Carriers' email-to-SMS gateways: a text message to `<number>@<gateway domain>` (API.md
section 7, `POST /api/v1/sms/send-email-sms/`).

The built-in table is the older FastAPI service's own (`app/utils/providers.py` of
email-service-v2), reduced to the one domain that service actually sent to: the carrier's MMS
gateway where it has one (its author found MMS more dependable, and SMS gateways split long
messages), else its SMS gateway. SMS_GATEWAYS adds carriers and overrides built-in ones
(`verizon=vtext.com` for Verizon's SMS gateway). Carriers are looked up by
`config.sms_provider_key`: case and punctuation do not matter (`AT&T`, `At&T`, `ATT`).
"""

from __future__ import annotations

from mailservice.config_values import parse_sms_gateways, sms_provider_key
from mailservice.errors import ConfigError

BUILT_IN: dict[str, str] = {
    sms_provider_key(name): domain
    for name, domain in (
        ("AT&T", "mms.att.net"),
        ("Boost Mobile", "myboostmobile.com"),
        ("C-Spire", "cspire1.com"),
        ("Cricket Wireless", "mms.cricketwireless.net"),
        ("Consumer Cellular", "mailmymobile.net"),
        ("Google Project Fi", "msg.fi.google.com"),
        ("Metro PCS", "mymetropcs.com"),
        ("Mint Mobile", "mailmymobile.net"),
        ("Page Plus", "mypixmessages.com"),
        ("Republic Wireless", "text.republicwireless.com"),
        ("Sprint", "pm.sprint.com"),
        ("Straight Talk", "mypixmessages.com"),
        ("T-Mobile", "tmomail.net"),
        ("Ting", "message.ting.com"),
        ("Tracfone", "mmst5.tracfone.com"),
        ("U.S. Cellular", "mms.uscc.net"),
        ("Verizon", "vzwpix.com"),
        ("Virgin Mobile", "vmpix.com"),
        ("Xfinity Mobile", "mypixmessages.com"),
    )
}
SEPARATORS = str.maketrans("", "", " -.()")
MIN_DIGITS, MAX_DIGITS = 7, 15  # E.164 allows at most 15


def gateway_table(sms_gateways: str) -> dict[str, str]:
    """The built-in table with SMS_GATEWAYS over it; ConfigError for a malformed value."""
    try:
        extra = parse_sms_gateways(sms_gateways)
    except ValueError as exc:
        raise ConfigError(f"SMS_GATEWAYS={sms_gateways!r} is not valid: {exc}") from exc
    return BUILT_IN | extra


def gateway_domain(provider: str, table: dict[str, str]) -> str | None:
    """The gateway domain of a carrier, or None for one the table does not know."""
    return table.get(sms_provider_key(provider))


def phone_digits(phone_number: str) -> str:
    """The number's digits, with spaces, hyphens, dots and parentheses taken out; ValueError
    for anything else or a length no phone number has."""
    digits = phone_number.translate(SEPARATORS)
    if not (digits.isascii() and digits.isdigit()):
        raise ValueError("must be digits, optionally separated by spaces, hyphens, dots or ()")
    if not MIN_DIGITS <= len(digits) <= MAX_DIGITS:
        raise ValueError(f"must have {MIN_DIGITS} to {MAX_DIGITS} digits")
    return digits
