from __future__ import annotations

import itertools

import pytest

from sluicegate.processors.guard_pii import (
    KINDS,
    PiiFinding,
    iban_valid,
    luhn_valid,
    redact,
    scan_pii,
)

pytestmark = pytest.mark.unit

# Fake credentials are assembled at runtime so no secret scanner flags this file.
OPENAI_KEY = "sk-" + "proj-" + "A1b2C3d4E5f6G7h8I9j0K1l2M3n4"
OPENAI_LEGACY = "sk-" + "Zx9" * 12
ANTHROPIC_KEY = "sk-" + "ant-api03-" + "Qw3rTy" * 5
AWS_KEY = "AKIA" + "IOSFODNN7EXAMPLE"
GITHUB_PAT = "ghp_" + "aB3dE6gH9jK2mN5pQ8sT1vW4yZ7bC0eF3hJ6"
GITHUB_FINE = "github_pat_" + "11ABCDEFG0123456789_abcdefghijklmnop"
SLACK_TOKEN = "xoxb-" + "123456789012-1234567890123-AbCdEfGhIjKlMnOp"
GOOGLE_KEY = "AIza" + "SyD-1234567890abcdefghijklmnopqrstu"
JWT = (
    "eyJ" + "hbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9"
    ".eyJ" + "zdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkpvaG4ifQ"
    ".SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c"
)
PEM = (
    "-----BEGIN " + "RSA PRIVATE KEY-----\nMIIEpAIBAAKCAQEA1234abcd\nZm9vYmFy==\n"
    "-----END " + "RSA PRIVATE KEY-----"
)


def kinds_of(text: str, kinds: frozenset[str] | None = None) -> list[str]:
    return [f.kind for f in scan_pii(text, kinds)]


def values_of(text: str, kind: str) -> list[str]:
    return [f.value for f in scan_pii(text, frozenset({kind}))]


# --- email -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "text, expected",
    [
        ("mail bob.smith+tag@example.co.uk please", ["bob.smith+tag@example.co.uk"]),
        ("a_b-c%d@sub-domain.example.org.", ["a_b-c%d@sub-domain.example.org"]),
        ("<jane@corp.io>", ["jane@corp.io"]),
    ],
)
def test_email_positive(text, expected):
    assert values_of(text, "email") == expected


@pytest.mark.parametrize(
    "text", ["user@localhost", "@handle on twitter", "a@b", "pip install pkg@1.2", "x@.com"]
)
def test_email_negative(text):
    assert values_of(text, "email") == []


# --- phone -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "text, expected",
    [
        ("call +1 (555) 123-4567 now", "+1 (555) 123-4567"),
        ("UK: +44 20 7946 0958.", "+44 20 7946 0958"),
        ("E.164 +4915112345678", "+4915112345678"),
        ("office (555) 123-4567", "(555) 123-4567"),
        ("ring 555.123.4567", "555.123.4567"),
        ("London 020 7946 0958", "020 7946 0958"),
        ("Paris 06 12 34 56 78", "06 12 34 56 78"),
        ("+33 6 12 34 56 78", "+33 6 12 34 56 78"),
    ],
)
def test_phone_positive(text, expected):
    assert values_of(text, "phone") == [expected]


@pytest.mark.parametrize(
    "text",
    [
        "In 2023 revenue grew",
        "It costs $1,299.99 or 1.299,99 EUR",
        "order 1234567890123",
        "order id ORD-2024-000123",
        "ticket 12345-67890",
        "population 123 456 789",
        "dated 2024-01-15 at 10:30",
        "2024-03-14 10:30:45 ERROR consumer lag",
        "at 2024-03-14 10:30 the job failed",
        "ISBN 978-3-16-148410-0",
        "+1 555 12",
        "between 1999 and 2024",
    ],
)
def test_phone_negative(text):
    assert values_of(text, "phone") == []


# --- credit card -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    "text, expected",
    [
        ("card 4242 4242 4242 4242 exp 12/34", "4242 4242 4242 4242"),
        ("card 4111-1111-1111-1111", "4111-1111-1111-1111"),
        ("amex 3782 822463 10005", "3782 822463 10005"),
        ("raw 5555555555554444.", "5555555555554444"),
        ("with cvv 4242 4242 4242 4242 123", "4242 4242 4242 4242"),
    ],
)
def test_card_positive(text, expected):
    assert values_of(text, "credit_card") == [expected]


@pytest.mark.parametrize(
    "text",
    [
        "card 4242 4242 4242 4243",  # one digit off: Luhn fails
        "card 4111-1111-1111-1112",
        "id 1234567890123",
        "4242 4242-4242 4242",  # mixed separators are not a card layout
    ],
)
def test_card_negative(text):
    assert values_of(text, "credit_card") == []


def test_a_luhn_valid_international_number_is_a_phone_not_a_card():
    text = "Call me back at +4915164003761 after 5pm."  # the 13 digits pass Luhn
    assert [(f.kind, f.value) for f in scan_pii(text)] == [("phone", "+4915164003761")]


def test_luhn():
    assert luhn_valid("4242424242424242")
    assert not luhn_valid("4242424242424241")


# --- IBAN ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "text, expected",
    [
        ("pay DE89 3704 0044 0532 0130 00 today", "DE89 3704 0044 0532 0130 00"),
        ("GB82 WEST 1234 5698 7654 32 TO PAY", "GB82 WEST 1234 5698 7654 32"),
        ("compact: DE89370400440532013000.", "DE89370400440532013000"),
        ("FR14 2004 1010 0505 0001 3M02 606", "FR14 2004 1010 0505 0001 3M02 606"),
    ],
)
def test_iban_positive(text, expected):
    assert values_of(text, "iban") == [expected]


@pytest.mark.parametrize(
    "text",
    [
        "DE88 3704 0044 0532 0130 00",  # wrong check digits
        "GB83 WEST 1234 5698 7654 32",
        "DE89 3704 0044 0532 0130 0",  # too short for DE
        "DE8937040044053201300012",  # too long, no token boundary
    ],
)
def test_iban_negative(text):
    assert values_of(text, "iban") == []


def test_iban_validator():
    assert iban_valid("GB82WEST12345698765432")
    assert not iban_valid("GB82WEST1234569876543")
    assert not iban_valid("GB82WEST1234569876543!")


# --- US SSN ----------------------------------------------------------------------------------
def test_ssn_positive():
    assert values_of("SSN 123-45-6789.", "us_ssn") == ["123-45-6789"]


@pytest.mark.parametrize(
    "ssn",
    ["000-12-3456", "666-12-3456", "900-12-3456", "999-12-3456", "123-00-4567", "123-45-0000"],
)
def test_ssn_invalid_ranges(ssn):
    assert kinds_of(f"SSN {ssn}") == []


def test_ssn_embedded_in_longer_number_is_ignored():
    assert values_of("ref 1123-45-67890", "us_ssn") == []


# --- IP addresses ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    "text, expected",
    [
        ("host 192.168.1.10.", "192.168.1.10"),
        ("from 0.0.0.0 to 255.255.255.255", "0.0.0.0"),
        (
            "v6 2001:0db8:85a3:0000:0000:8a2e:0370:7334 ok",
            "2001:0db8:85a3:0000:0000:8a2e:0370:7334",
        ),
        ("v6 2001:db8::8a2e:370:7334", "2001:db8::8a2e:370:7334"),
        ("mapped ::ffff:192.0.2.1", "::ffff:192.0.2.1"),
        ("link fe80::1ff:fe23:4567:890a", "fe80::1ff:fe23:4567:890a"),
    ],
)
def test_ip_positive(text, expected):
    assert values_of(text, "ip_address")[0] == expected


@pytest.mark.parametrize(
    "text",
    [
        "256.1.1.1",
        "1.2.3.999",
        "version 1.2.3.4.5",
        "v1.2.3.4",
        "at 12:30:45",
        "mac 00:1A:2B:3C:4D:5E",
        "slice a[1::2]",
        "std::vector",
    ],
)
def test_ip_negative(text):
    assert values_of(text, "ip_address") == []


# --- secrets ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "token, provider",
    [
        (OPENAI_KEY, "openai"),
        (OPENAI_LEGACY, "openai"),
        (ANTHROPIC_KEY, "anthropic"),
        (AWS_KEY, "aws"),
        (GITHUB_PAT, "github"),
        (GITHUB_FINE, "github"),
        (SLACK_TOKEN, "slack"),
        (GOOGLE_KEY, "google"),
        (JWT, "jwt"),
        (PEM, "private_key"),
    ],
)
def test_secret_positive(token, provider):
    findings = scan_pii(f"here is my key: {token} thanks")
    assert [(f.kind, f.value, f.detail) for f in findings] == [("secret", token, provider)]


def test_truncated_pem_is_still_a_secret():
    text = "-----BEGIN " + "PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASC"
    assert kinds_of(text) == ["secret"]


@pytest.mark.parametrize(
    "text",
    [
        "risk-assessment-for-the-quarterly-report",
        "sk-short",
        "AKIA1234",
        "eyJhbGciOi is a base64 prefix",
        "task-ant-colony-simulation-parameters-x",
    ],
)
def test_secret_negative(text):
    assert values_of(text, "secret") == []


# --- overlaps and API contract ---------------------------------------------------------------
def test_ip_beats_phone_for_dotted_quads():
    assert kinds_of("server 192.168.100.200 is down") == ["ip_address"]


def test_iban_beats_phone_and_card_inside_it():
    text = "DE89 3704 0044 0532 0130 00"
    assert kinds_of(text) == ["iban"]


def test_ssn_beats_phone():
    assert kinds_of("123-45-6789") == ["us_ssn"]


def test_secret_beats_email_and_others_inside_jwt():
    assert kinds_of(f"Authorization: Bearer {JWT}") == ["secret"]


def test_findings_sorted_and_non_overlapping():
    text = f"a@b.io 4242424242424242 {AWS_KEY} 10.0.0.1 +1 555 123 4567"
    findings = scan_pii(text)
    assert [f.kind for f in findings] == ["email", "credit_card", "secret", "ip_address", "phone"]
    for prev, cur in itertools.pairwise(findings):
        assert prev.end <= cur.start
    for f in findings:
        assert text[f.start : f.end] == f.value


def test_kinds_filter_and_unknown_kind():
    text = "bob@example.com 10.0.0.1"
    assert kinds_of(text, frozenset({"ip_address"})) == ["ip_address"]
    assert scan_pii(text, frozenset()) == []
    with pytest.raises(ValueError):
        scan_pii(text, frozenset({"passport"}))
    assert "email" in KINDS


def test_empty_text():
    assert scan_pii("") == []


def test_finding_is_frozen():
    f = PiiFinding("email", 0, 1, "x")
    with pytest.raises(AttributeError):
        f.kind = "phone"  # type: ignore[misc]


# --- unicode ---------------------------------------------------------------------------------
def test_unicode_around_matches():
    text = "联系我bob@example.com谢谢，卡号4242 4242 4242 4242。Ünïcødé 10.0.0.1 — fin"  # noqa: RUF001
    findings = scan_pii(text)
    assert [(f.kind, f.value) for f in findings] == [
        ("email", "bob@example.com"),
        ("credit_card", "4242 4242 4242 4242"),
        ("ip_address", "10.0.0.1"),
    ]
    for f in findings:
        assert text[f.start : f.end] == f.value


def test_non_ascii_digits_are_not_digits():
    assert scan_pii("٤٢٤٢٤٢٤٢٤٢٤٢٤٢٤٢") == []


# --- redact / mask ---------------------------------------------------------------------------
REDACT_TEXT = (
    f"Email jane.doe@example.com, card 4242 4242 4242 4242, SSN 123-45-6789, "
    f"IBAN GB82 WEST 1234 5698 7654 32, ip 10.0.0.1, phone +1 555 123 4567, key {OPENAI_KEY}."
)


def test_redact_style():
    out = redact(REDACT_TEXT, scan_pii(REDACT_TEXT), "redact")
    assert out == (
        "Email [EMAIL], card [CREDIT_CARD], SSN [US_SSN], IBAN [IBAN], ip [IP_ADDRESS], "
        "phone [PHONE], key [SECRET]."
    )


def test_mask_style():
    out = redact(REDACT_TEXT, scan_pii(REDACT_TEXT), "mask")
    assert out == (
        "Email [EMAIL @example.com], card [CREDIT_CARD ****4242], SSN [US_SSN ***-**-6789], "
        "IBAN [IBAN GB****5432], ip [IP_ADDRESS v4], phone [PHONE ***67], key [SECRET]."
    )
    assert "proj" not in out and "A1b2" not in out


def test_redact_without_findings_and_bad_style():
    assert redact("nothing here", [], "mask") == "nothing here"
    with pytest.raises(ValueError):
        redact("x", [], "shred")  # type: ignore[arg-type]


def test_redact_skips_overlapping_findings():
    findings = [PiiFinding("email", 0, 5, "abcde"), PiiFinding("phone", 2, 7, "cdefg")]
    assert redact("abcdefgh", findings) == "[EMAIL]fgh"


# --- realistic corpus ------------------------------------------------------------------------
CORPUS: list[tuple[str, list[str]]] = [
    ("Summarise the attached quarterly report for 2023.", []),
    ("Write a haiku about autumn leaves in Kyoto.", []),
    ("My email is maria.garcia@gmail.com, can you draft a reply to my landlord?", ["email"]),
    ("Please call me back at (415) 555-0132 after 5pm.", ["phone"]),
    ("Our support line is +44 20 7946 0958, open weekdays.", ["phone"]),
    ("The laptop costs $1,299.99 and shipping is $15.", []),
    ("Order #100234 shipped on 2024-03-14 via UPS.", []),
    ("Charge my Visa 4111 1111 1111 1111, expiry 09/27.", ["credit_card"]),
    ("Is 4111 1111 1111 1112 a valid card number?", []),
    ("Wire the deposit to DE89 3704 0044 0532 0130 00 by Friday.", ["iban"]),
    ("My SSN is 078-05-1120, fill in the W-4 for me.", ["us_ssn"]),
    ("Explain why 666-12-3456 can never be a valid SSN.", []),
    ("The server at 10.12.0.254 keeps timing out on port 8443.", ["ip_address"]),
    ("Ping 2001:db8::1:0:0:1 and report the latency.", ["ip_address"]),
    ("Python 3.11.4 fails on version 1.2.3 of the package.", []),
    (f"Here is my OpenAI key {OPENAI_KEY}, why does it 401?", ["secret"]),
    (f"export ANTHROPIC_API_KEY={ANTHROPIC_KEY}", ["secret"]),
    (f"aws_access_key_id = {AWS_KEY}", ["secret"]),
    (f"git remote set-url origin https://{GITHUB_PAT}@github.com/org/repo", ["secret"]),
    (f"Decode this token: {JWT}", ["secret"]),
    (f"Why does ssh reject this key?\n{PEM}\n", ["secret"]),
    ("Contact bob@acme.io or +1-202-555-0199 about invoice 55012.", ["email", "phone"]),
    ("Meeting at 10:30 in room 4.12 with 12 people.", []),
    ("Translate 'je m'appelle Zoé, mon numéro est 06 12 34 56 78' to English.", ["phone"]),
    ("Ihre IBAN lautet GB82 WEST 1234 5698 7654 32, bitte prüfen.", ["iban"]),
    ("Compute 12345 * 67890 and show the steps.", []),
    ("The population of Tokyo is about 37,400,000 people.", []),
    (
        "User 192.168.0.7 logged in as ops@example.org with card 5555 5555 5555 4444.",
        ["ip_address", "email", "credit_card"],
    ),
    ("Tracking number 1Z999AA10123456784 is delayed.", []),
    ("请把结果发送到 li.wei@example.cn，谢谢！", ["email"]),  # noqa: RUF001
]


@pytest.mark.parametrize("text, expected", CORPUS, ids=[str(i) for i in range(len(CORPUS))])
def test_corpus(text, expected):
    assert kinds_of(text) == expected
