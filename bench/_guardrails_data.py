"""Seeded data for `bench/guardrails.py`: realistic prose, and a synthetic PII set with known spans.

Everything comes from one `random.Random(seed)`, so a seed gives the same texts on any machine.
Values are made up but valid where validity is checkable: cards pass Luhn, IBANs pass mod-97 at
their country's registered length, SSNs avoid the never-issued ranges. Each positive value's span
is recorded as it is placed in its sentence; near misses (a Luhn-invalid card, an IBAN with bad
check digits, order numbers, versions, ...) are recorded as spans no engine should report.
"""

from __future__ import annotations

import random
import string
from collections.abc import Callable
from dataclasses import dataclass

# --- values, one generator per (kind, format) ------------------------------------------------

FIRST = ["maria", "john", "wei", "aisha", "lars", "priya", "tomas", "fatima", "kenji", "olga",
         "diego", "amara", "noah", "sofia", "omar", "hannah"]  # fmt: skip
LAST = ["garcia", "smith", "zhang", "okafor", "nilsson", "sharma", "novak", "haddad", "sato",
        "ivanova", "fernandez", "mensah", "miller", "rossi", "khan", "becker"]  # fmt: skip
DOMAINS = ["example.com", "mail.example.org", "acme-corp.co.uk", "uni-example.edu", "corp.io",
           "shop.example.de", "example.fr"]  # fmt: skip
PEOPLE = ["Maria Garcia", "John Smith", "Wei Zhang", "Aisha Okafor", "Lars Nilsson",
          "Priya Sharma", "Tomas Novak", "Fatima Haddad", "Kenji Sato", "Olga Ivanova",
          "Diego Fernandez", "Amara Mensah", "Hannah Becker", "Luca Rossi"]  # fmt: skip
PLACES = ["Berlin", "Lisbon", "Toronto", "Nairobi", "Osaka", "Chicago", "Madrid", "Melbourne",
          "Warsaw", "Cairo", "Seattle", "Dublin", "Mumbai", "Oslo"]  # fmt: skip
TOKEN = string.ascii_letters + string.digits
UPPER_DIGITS = string.ascii_uppercase + string.digits


def _digits(rng: random.Random, n: int) -> str:
    return "".join(rng.choice(string.digits) for _ in range(n))


def _email(rng: random.Random) -> str:
    first, last, domain = rng.choice(FIRST), rng.choice(LAST), rng.choice(DOMAINS)
    return rng.choice(
        [
            f"{first}.{last}@{domain}",
            f"{first}{rng.randint(1, 99)}@{domain}",
            f"{first[0]}{last}+{rng.choice(['billing', 'news', 'x'])}@{domain}",
            f"{first}_{last}@{domain}",
        ]
    )


def _local(rng: random.Random, n: int) -> str:
    return str(rng.randint(2, 9)) + _digits(rng, n - 1)


PHONE_FORMATS: dict[str, Callable[[random.Random], str]] = {
    "us (415) 555-0132": lambda r: f"({_local(r, 3)}) {_local(r, 3)}-{_digits(r, 4)}",
    "us 415-555-0132": lambda r: f"{_local(r, 3)}-{_local(r, 3)}-{_digits(r, 4)}",
    "us 415.555.0132": lambda r: f"{_local(r, 3)}.{_local(r, 3)}.{_digits(r, 4)}",
    "+1 415 555 0132": lambda r: f"+1 {_local(r, 3)} {_local(r, 3)} {_digits(r, 4)}",
    "+1-415-555-0132": lambda r: f"+1-{_local(r, 3)}-{_local(r, 3)}-{_digits(r, 4)}",
    "+44 20 7946 0958": lambda r: f"+44 20 {_local(r, 4)} {_digits(r, 4)}",
    "uk 020 7946 0958": lambda r: f"020 {_local(r, 4)} {_digits(r, 4)}",
    "+33 6 12 34 56 78": lambda r: "+33 6 " + " ".join(_digits(r, 2) for _ in range(4)),
    "fr 06 12 34 56 78": lambda r: "06 " + " ".join(_digits(r, 2) for _ in range(4)),
    "e.164 +4915112345678": lambda r: f"+49151{_digits(r, 8)}",
    "+91 98765 43210": lambda r: f"+91 {_local(r, 5)} {_digits(r, 5)}",
}


def luhn_digit(body: str) -> str:
    """The check digit that makes ``body + digit`` pass Luhn."""
    total = 0
    for i, ch in enumerate(reversed(body)):
        d = int(ch)
        if i % 2 == 0:  # these positions are doubled once the check digit is appended
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return str((10 - total % 10) % 10)


def _card_number(rng: random.Random, brand: str) -> str:
    prefix, length = {
        "visa": ("4", 16),
        "mastercard": (str(rng.randint(51, 55)), 16),
        "amex": (rng.choice(["34", "37"]), 15),
        "discover": ("6011", 16),
    }[brand]
    body = prefix + _digits(rng, length - len(prefix) - 1)
    return body + luhn_digit(body)


def _group(number: str, sizes: tuple[int, ...], sep: str) -> str:
    parts, pos = [], 0
    for size in sizes:
        parts.append(number[pos : pos + size])
        pos += size
    return sep.join(parts)


def _card(rng: random.Random, layout: str, valid: bool = True) -> str:
    brand = "amex" if layout.startswith("amex") else rng.choice(["visa", "mastercard", "discover"])
    number = _card_number(rng, brand)
    if not valid:  # any other last digit fails Luhn
        number = number[:-1] + str((int(number[-1]) + rng.randint(1, 9)) % 10)
    if layout == "amex 4-6-5":
        return _group(number, (4, 6, 5), " ")
    if layout == "4-4-4-4 spaces":
        return _group(number, (4, 4, 4, 4), " ")
    if layout == "4-4-4-4 dashes":
        return _group(number, (4, 4, 4, 4), "-")
    return number


CARD_FORMATS = ("contiguous", "4-4-4-4 spaces", "4-4-4-4 dashes", "amex 4-6-5")

# Country: BBAN shape, "n" a digit, "a" an upper-case letter, "c" either.
IBAN_BBAN = {
    "DE": "n" * 18,
    "GB": "aaaa" + "n" * 14,
    "FR": "n" * 10 + "c" * 11 + "nn",
    "NL": "aaaa" + "n" * 10,
    "ES": "n" * 20,
    "IT": "a" + "n" * 10 + "c" * 12,
    "CH": "n" * 5 + "c" * 12,
    "BE": "n" * 12,
    "PL": "n" * 24,
    "AT": "n" * 16,
}


def _iban(rng: random.Random, country: str, grouped: bool, valid: bool = True) -> str:
    pick = {"n": string.digits, "a": string.ascii_uppercase, "c": string.digits + "ABCDEFXYZ"}
    bban = "".join(rng.choice(pick[c]) for c in IBAN_BBAN[country])
    numeric = "".join(str(int(ch, 36)) for ch in bban + country + "00")
    check = 98 - int(numeric) % 97
    if not valid:  # any other check value in 02..98 fails mod-97
        check = rng.choice([c for c in range(2, 99) if c != check])
    compact = f"{country}{check:02d}{bban}"
    if not grouped:
        return compact
    return " ".join(compact[i : i + 4] for i in range(0, len(compact), 4))


def _ssn(rng: random.Random, valid: bool = True) -> str:
    if valid:
        area = rng.choice([rng.randint(1, 665), rng.randint(667, 899)])
    else:
        area = rng.choice([0, 666, rng.randint(900, 999)])
    return f"{area:03d}-{rng.randint(1, 99):02d}-{rng.randint(1, 9999):04d}"


def _ipv4(rng: random.Random) -> str:
    first = rng.choice([10, 172, 192, rng.randint(1, 223)])
    second = {172: rng.randint(16, 31), 192: 168}.get(first, rng.randint(0, 255))
    return f"{first}.{second}.{rng.randint(0, 255)}.{rng.randint(1, 254)}"


def _hex4(rng: random.Random) -> str:
    return f"{rng.randint(0, 0xFFFF):x}"


def _ipv6(rng: random.Random, form: str) -> str:
    if form == "full":
        return ":".join(f"{rng.randint(0, 0xFFFF):04x}" for _ in range(8))
    if form == "compressed":
        return "2001:db8::" + ":".join(_hex4(rng) for _ in range(rng.randint(2, 4)))
    return "fe80::" + ":".join(_hex4(rng) for _ in range(4))


def _tok(rng: random.Random, n: int, alphabet: str = TOKEN + "_-") -> str:
    return "".join(rng.choice(alphabet) for _ in range(n))


SECRET_FORMATS: dict[str, Callable[[random.Random], str]] = {
    "openai": lambda r: "sk-" + "proj-" + _tok(r, 48),
    "anthropic": lambda r: "sk-" + "ant-api03-" + _tok(r, 40),
    "aws": lambda r: "AKIA" + _tok(r, 16, UPPER_DIGITS),
    "github": lambda r: "ghp_" + _tok(r, 36, TOKEN),
    "slack": lambda r: "xoxb-" + _digits(r, 12) + "-" + _digits(r, 13) + "-" + _tok(r, 24, TOKEN),
    "google": lambda r: "AIza" + _tok(r, 35),
    "jwt": lambda r: "eyJ" + _tok(r, 30, TOKEN) + ".eyJ" + _tok(r, 40, TOKEN) + "." + _tok(r, 43),
}

# (kind, format) -> value generator. person/location: only NER engines can find them.
VALUES: dict[tuple[str, str], Callable[[random.Random], str]] = {
    ("email", "address"): _email,
    **{("phone", name): fn for name, fn in PHONE_FORMATS.items()},
    **{("credit_card", layout): (lambda r, lay=layout: _card(r, lay)) for layout in CARD_FORMATS},
    **{
        ("iban", f"{country} {'grouped' if grouped else 'compact'}"): (
            lambda r, c=country, g=grouped: _iban(r, c, g)
        )
        for country in IBAN_BBAN
        for grouped in (True, False)
    },
    ("us_ssn", "AAA-GG-SSSS"): _ssn,
    ("ip_address", "ipv4"): _ipv4,
    **{
        ("ip_address", f"ipv6 {form}"): (lambda r, f=form: _ipv6(r, f))
        for form in ("full", "compressed", "link-local")
    },
    **{("secret", name): fn for name, fn in SECRET_FORMATS.items()},
    ("person", "name"): lambda r: r.choice(PEOPLE),
    ("location", "city"): lambda r: r.choice(PLACES),
}

# Near misses: none of these is PII; an engine reporting one is a false positive.
NEAR_MISSES: dict[str, Callable[[random.Random], str]] = {
    "card, Luhn-invalid (contiguous)": lambda r: _card(r, "contiguous", valid=False),
    "card, Luhn-invalid (4-4-4-4)": lambda r: _card(r, "4-4-4-4 spaces", valid=False),
    "card, Luhn-invalid (amex 4-6-5)": lambda r: _card(r, "amex 4-6-5", valid=False),
    "IBAN, bad check digits": lambda r: _iban(
        r, r.choice(list(IBAN_BBAN)), r.random() < 0.5, valid=False
    ),
    "SSN, never-issued area": lambda r: _ssn(r, valid=False),
    "order number ORD-2024-000123": lambda r: f"ORD-{r.randint(2019, 2026)}-{_digits(r, 6)}",
    "order number #100234": lambda r: f"#{_local(r, 6)}",
    "order number (13 digits)": lambda r: _local(r, 13),
    "invoice INV-88213-A": lambda r: f"INV-{_local(r, 5)}-{r.choice('ABCDEF')}",
    "tracking 1Z999AA10123456784": lambda r: "1Z" + _tok(r, 6, UPPER_DIGITS) + _digits(r, 10),
    "version 1.2.3.4.5": lambda r: ".".join(str(r.randint(0, 12)) for _ in range(5)),
    "date and time": lambda r: (
        f"2024-{r.randint(1, 12):02d}-{r.randint(1, 28):02d} "
        f"{r.randint(0, 23):02d}:{r.randint(0, 59):02d}:{r.randint(0, 59):02d}"
    ),
    "price $1,299.99": lambda r: f"${r.randint(1, 99)},{_digits(r, 3)}.{_digits(r, 2)}",
    "ISBN 978-3-16-148410-0": lambda r: (
        f"978-{r.randint(0, 9)}-{_digits(r, 2)}-{_digits(r, 6)}-{r.randint(0, 9)}"
    ),
    "UUID": lambda r: "-".join(_tok(r, n, "0123456789abcdef") for n in (8, 4, 4, 4, 12)),
    "MAC address": lambda r: ":".join(f"{r.randint(0, 255):02X}" for _ in range(6)),
    "IPv4-like, octet > 255": lambda r: f"10.{r.randint(0, 255)}.{r.randint(256, 999)}.1",
    "population 37 400 000": lambda r: f"{r.randint(1, 999)} {_digits(r, 3)} {_digits(r, 3)}",
}

# --- sentences -------------------------------------------------------------------------------

# Where a value sits changes what a detector sees around it: start, middle, end, brackets,
# key=value, after a colon, before punctuation.
CONTEXTS: dict[str, list[str]] = {
    "any": [
        "Please update the record to {v} before the end of the week.",
        "The customer wrote back: {v}. Can you check it against the account?",
        "{v} is what we have on file, is that still correct?",
        "Copied from the ticket (value: {v}) without any changes.",
        "log line: user_ref={v} status=ok latency_ms=42",
        "As discussed on Tuesday, the detail you asked for is {v}",
        "Hi team, quick one: {v}, thanks!",
    ],
    "email": ["Send the draft to {v} and cc me.", "Contact: <{v}>", "reply-to {v}; subject: Q3"],
    "phone": ["Call me back at {v} after 5pm.", "Phone: {v} (mobile, weekdays only)"],
    "credit_card": ["Charge my card {v}, expiry 09/27.", "card number {v}"],
    "iban": ["Please wire the deposit to {v} by Friday.", "IBAN: {v}"],
    "us_ssn": ["My SSN is {v}, please fill in the form.", "SSN {v}"],
    "ip_address": ["The server at {v} keeps timing out on port 8443.", "ping {v} and report"],
    "secret": ["Here is my key {v}, why does it return 401?", "export API_KEY={v}"],
    "person": ["Yesterday I spoke with {v} about the renewal.", "{v} will join the call."],
    "location": ["We are opening a new office in {v} next spring.", "The flight to {v} is late."],
}

NEGATIVE_CONTEXTS = [
    "Order {v} shipped yesterday and should arrive soon.",
    "Reference {v} appears twice in the export, please dedupe.",
    "Is {v} valid? The form rejected it.",
    "Ticket note: {v} (see the attached screenshot).",
]

PROSE = [
    "The quarterly report shows revenue growing eight percent, mostly from the enterprise plan.",
    "Could you summarise the meeting notes below and list the action items with owners?",
    "We migrated the billing service to the new cluster last night without downtime.",
    "The checkout page throws an error when a coupon is applied after the address step.",
    "Please rewrite this paragraph in a friendlier tone for the customer newsletter.",
    "Our retention dropped in March because the onboarding emails went to spam for a week.",
    "The regression appeared after the dependency upgrade; pinning the old version fixes it.",
    "Draft a polite reply explaining that refunds take five to seven business days.",
    "The warehouse in the north region reported 312 units of stock on Monday morning.",
    "Explain the difference between a left join and an inner join with a short example.",
    "The marketing team wants three headline options for the spring campaign landing page.",
    "Latency at the ninety-fifth percentile rose from 180 to 240 milliseconds after the deploy.",
    "Translate the following product description into German, keeping the bullet points.",
    "The contract renewal is due in June and legal asked for the updated liability clause.",
    "Write unit tests for the parser, including empty input and deeply nested lists.",
    "Customers on the legacy plan keep asking whether the new features apply to them.",
    "The on-call engineer restarted the consumer group and the lag cleared within minutes.",
    "Give me a short outline for a talk about event sourcing for a general audience.",
    "The design review flagged the colour contrast on the settings page as too low.",
    "Summarise the main risks of the migration plan in five bullet points.",
]

TOPICS = [  # the banned topics both guards check (keywords and patterns, as in docs/guardrails.md)
    {
        "name": "weapons",
        "keywords": ["detonator", "pipe bomb", "explosive*", "gunpowder", "silencer", "ammunition"],
        "patterns": [r"\bhow to (?:build|make) an? (?:bomb|gun)\b"],
    },
    {
        "name": "gambling",
        "keywords": ["casino", "roulette", "sports betting", "jackpot", "poker*", "bookmaker"],
    },
    {
        "name": "medical-advice",
        "keywords": ["dosage", "prescription", "overdose", "diagnosis", "antibiotic*", "opioid*"],
        "patterns": [r"\bhow much \w+ should i take\b"],
    },
]


@dataclass(frozen=True, slots=True)
class Span:
    kind: str  # a PII kind, or "none" for a near miss
    fmt: str  # the value's format or the near miss's name
    start: int
    end: int
    value: str


@dataclass(frozen=True, slots=True)
class Sample:
    text: str
    spans: tuple[Span, ...]


def _fill(template: str, value: str, kind: str, fmt: str) -> Sample:
    start = template.index("{v}")
    text = template.replace("{v}", value, 1)
    return Sample(text, (Span(kind, fmt, start, start + len(value), value),))


def _join(a: Sample, b: Sample) -> Sample:
    shift = len(a.text) + 1
    moved = tuple(Span(s.kind, s.fmt, s.start + shift, s.end + shift, s.value) for s in b.spans)
    return Sample(f"{a.text} {b.text}", a.spans + moved)


def pii_set(seed: int, per_format: int = 6, negatives_per_kind: int = 8) -> list[Sample]:
    """The labelled set: ``per_format`` values of every (kind, format), each in a sentence
    (a kind-specific or a generic one), every fifth sample joined with the next to put two
    values in one text; then ``negatives_per_kind`` of every near miss."""
    rng = random.Random(seed)
    singles: list[Sample] = []
    for (kind, fmt), make in VALUES.items():
        generic = kind not in ("person", "location")  # "the value is Berlin" reads oddly
        templates = CONTEXTS[kind] + (CONTEXTS["any"] if generic else [])
        singles += [_fill(rng.choice(templates), make(rng), kind, fmt) for _ in range(per_format)]
    rng.shuffle(singles)
    samples: list[Sample] = []
    i = 0
    while i < len(singles):
        if i % 5 == 0 and i + 1 < len(singles):
            samples.append(_join(singles[i], singles[i + 1]))
            i += 2
        else:
            samples.append(singles[i])
            i += 1
    for name, make in NEAR_MISSES.items():
        samples += [
            _fill(rng.choice(NEGATIVE_CONTEXTS), make(rng), "none", name)
            for _ in range(negatives_per_kind)
        ]
    return samples


PII_FOR_PROSE = ("email", "phone", "credit_card", "iban", "us_ssn", "ip_address", "secret")


def prose(rng: random.Random, size: int, pii_every: int = 0) -> str:
    """About ``size`` characters of prose; every ``pii_every``-th sentence (0: none) carries a
    PII value of a kind in turn, in one of its contexts."""
    parts: list[str] = []
    length, n = 0, 0
    kinds = [k for k in VALUES if k[0] in PII_FOR_PROSE]
    while length < size:
        n += 1
        if pii_every and n % pii_every == 0:
            kind, fmt = kinds[(n // pii_every) % len(kinds)]
            sentence = rng.choice(CONTEXTS[kind]).replace("{v}", VALUES[(kind, fmt)](rng))
        else:
            sentence = rng.choice(PROSE)
        parts.append(sentence)
        length += len(sentence) + 1
    text = " ".join(parts)
    cut = text.rfind(" ", 0, size)
    return text[:cut] if cut > size // 2 else text[:size]
