"""Personal data: what is redacted and what is left alone, per-type actions, chunk boundaries, and
end to end: nothing planted in the landing zone reaches the corpus verbatim."""

import json

import pyarrow.dataset as ds
import pytest

from tests.helpers import clean, rows, write_batch
from training.config import CleaningConfig, PersonalDataConfig
from training.data.clean import verify_batch
from training.data.filters.code import check_code
from training.data.filters.pii import PersonalData, find_all, find_personal_data, is_card_number, redact
from training.data.landing import ready_batches
from training.data.records import Record

GITHUB_TOKEN = "ghp_" + "A1b2C3d4E5f6G7h8I9j0K1l2M3n4O5p6Q7r8"
PEM = "-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEAu1SU1LfVLPHCozMxH2Mo\n-----END RSA PRIVATE KEY-----"


@pytest.mark.parametrize(
    "text, expected, counts",
    [
        # e-mail
        ("Write to jane.doe+kiln@mail.example.org today.", "Write to <|email|> today.", {"email": 1}),
        ("<a href='mailto:ops@kiln.dev'>ops</a>", "<a href='mailto:<|email|>'>ops</a>", {"email": 1}),
        # phone
        ("Call +1 415 555 0132 now.", "Call <|phone|> now.", {"phone": 1}),
        ("Call (415) 555-0132 or 415.555.0132.", "Call <|phone|> or <|phone|>.", {"phone": 2}),
        ("Berlin: +49 30 12345678, 030 1234567; Paris 01 23 45 67 89.", "Berlin: <|phone|>, <|phone|>; Paris <|phone|>.", {"phone": 3}),
        ("London +44 (0)20 7946 0958 or +442079460958", "London <|phone|> or <|phone|>", {"phone": 2}),
        # ip
        ("The server at 93.184.216.34 answered.", "The server at <|ip|> answered.", {"ip": 1}),
        ("addr = '10.12.0.7'  # an internal host", "addr = '<|ip|>'  # an internal host", {"ip": 1}),
        ("see section 1.2.3.4 of the spec", "see section <|ip|> of the spec", {"ip": 1}),  # a valid dotted quad is an address
        ("ping 2a00:1450:4001:81b::200e twice", "ping <|ip|> twice", {"ip": 1}),
        ("mapped ::ffff:93.184.216.34.", "mapped ::ffff:<|ip|>.", {"ip": 1}),
        # card: a network's prefix and length with a valid Luhn checksum, grouped or not
        ("Card 4111 1111 1111 1111 expires 12/27.", "Card <|card|> expires 12/27.", {"card": 1}),
        ("amex 3782-822463-10005, mc 5555555555554444", "amex <|card|>, mc <|card|>", {"card": 2}),
        # secrets
        ("aws_access_key_id = AKIAIOSFODNN7EXAMPLE", "aws_access_key_id = <|secret|>", {"secret": 1}),
        (f"export GITHUB_TOKEN={GITHUB_TOKEN}", "export GITHUB_TOKEN=<|secret|>", {"secret": 1}),
        ("slack: xoxb-123456789012-1234567890123-AbCdEfGhIjKl", "slack: <|secret|>", {"secret": 1}),
        (f"key file:\n{PEM}\nthe end", "key file:\n<|secret|>\nthe end", {"secret": 1}),
        ("-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASC", "<|secret|>", {"secret": 1}),  # cut off: to the end
        ('api_key = "sk_live_4eC39HqLyjWDarjtT1zdp7dc"', 'api_key = "<|secret|>"', {"secret": 1}),
        ('{"password": "Tr0ub4dor&3-horse"}', '{"password": "<|secret|>"}', {"secret": 1}),
        ("DB_PASSWORD=s3cr3t-Passw0rd-2024", "DB_PASSWORD=<|secret|>", {"secret": 1}),
        ("aws_secret_access_key: wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY", "aws_secret_access_key: <|secret|>", {"secret": 1}),
        # several in one record
        ("jane@example.com, 93.184.216.34, +1 415 555 0132", "<|email|>, <|ip|>, <|phone|>", {"email": 1, "ip": 1, "phone": 1}),
        ("联系jane@example.com，电话 +86 10 6552 9988", "联系<|email|>，电话 <|phone|>", {"email": 1, "phone": 1}),
        ("Grüße an jürgen@example.de (Tel. 030 1234567)", "Grüße an <|email|> (Tel. <|phone|>)", {"email": 1, "phone": 1}),
    ],
)
def test_redaction_table(text, expected, counts):
    record = Record("x", "text", "b/text/a.jsonl:1", text=text)
    assert PersonalData(PersonalDataConfig())([record]) == [None]
    assert record.text == expected
    assert record.redactions == {t: counts.get(t, 0) for t in ("email", "phone", "ip", "card", "secret")}


@pytest.mark.parametrize(
    "text",
    [
        "Released on 2024-01-15, patched 15.01.2024 and again on 01/15/2024 at 12:30:45.",
        "ISBN 978-0-306-40615-7 and ISBN 0-306-40615-2 are the same book.",
        "commit 3f2a9c8b7d6e5f4a3b2c1d0e9f8a7b6c5d4e3f2a fixed it; sha256 e3b0c44298fc1c149afbf4c8996fb924",
        "Install v1.2.3.4, or pin package==1.2.3.4, lodash@4.17.21, version 2.0.0.1 and foo-1.2.3.4.tar.gz.",
        "The OID 1.3.6.1.4.1.311 and .NET 4.0.30319.42000 are not addresses; nor is 999.1.1.1.",
        "Bind to 0.0.0.0 or 127.0.0.1, mask 255.255.255.0, multicast 224.0.0.251, ::1 and fe80::1%eth0.",
        "Documentation examples 192.0.2.1, 198.51.100.7, 203.0.113.9 and 2001:db8::1 name no host.",
        "Population 8336817, id 12345678901, timestamp 1700000000000, total 1,234,567.89 and 4111 1111 1111 1112.",
        "A random run 1234567812345678 and a signed number +35236450 are not cards or phones.",
        "std::vector<int> v; x[1::2]; a::b::c; Foo::Bar(); MAC 00:1a:2b:3c:4d:5e",
        "icon@2x.png, @property, @Override, npm i @types/node, user@localhost",
        "password = settings.DB_PASSWORD; token = os.environ; api_key: ${API_KEY}; secret = '<your-secret-here>'",
        "password: hunter2, token = 'short', key = 'xxxxxxxxxxxxxxxxxxxx', sort_key = 'a_long_sort_key_value_123'",
        "Tel: 123, call 555-0132 (7 digits), room 0-306, page 01 234.",
    ],
)
def test_lookalikes_are_kept_verbatim(text):
    assert find_personal_data(text) == []


def test_luhn_and_network_decide_cards():
    assert is_card_number("4111111111111111")
    assert not is_card_number("4111111111111112")  # one digit off: checksum fails
    assert is_card_number("378282246310005")  # Amex, 15 digits
    assert not is_card_number("3782822463100050")  # Amex prefix, wrong length
    assert not is_card_number("1234567812345670")  # valid checksum, no network starts with 1


@pytest.mark.parametrize("kind", ["email", "phone", "ip", "card", "secret"])
def test_each_type_can_be_rejected_or_kept(kind):
    text = "jane@example.com 415-555-0132 93.184.216.34 4111111111111111 AKIAIOSFODNN7EXAMPLE"
    others = {t: "redact" for t in ("email", "phone", "ip", "card", "secret") if t != kind}

    rejecting = Record("x", "text", "b/text/a.jsonl:1", text=text)
    [verdict] = PersonalData(PersonalDataConfig(**others, **{kind: "reject"}))([rejecting])
    assert verdict.reason == "personal_data" and verdict.detail == f"{kind} (1)"
    assert rejecting.text == text and rejecting.redactions is None  # a rejected record is left as it landed

    keeping = Record("x", "text", "b/text/a.jsonl:1", text=text)
    assert PersonalData(PersonalDataConfig(**others, **{kind: "keep"}))([keeping]) == [None]
    assert keeping.redactions[kind] == 0 and sum(keeping.redactions.values()) == 4
    assert {"email": "jane@example.com", "phone": "415-555-0132", "ip": "93.184.216.34", "card": "4111111111111111",
            "secret": "AKIAIOSFODNN7EXAMPLE"}[kind] in keeping.text


def test_a_rejection_names_types_never_values():
    record = Record("x", "text", "b/text/a.jsonl:1", text="jane@example.com and joe@example.com, 4111 1111 1111 1111")
    [verdict] = PersonalData(PersonalDataConfig(email="reject", card="reject"))([record])
    assert verdict.detail == "email (2), card (1)"


@pytest.mark.parametrize("kwargs", [{"email": "drop"}, {"secret": "REDACT"}, {"min_secret_chars": 4}])
def test_config_is_validated(kwargs):
    with pytest.raises(ValueError):
        PersonalDataConfig(**kwargs)


def test_records_of_a_chunk_are_searched_apart():
    """One byte string per chunk: no match may run from one record into the next."""
    texts = [
        "-----BEGIN EC PRIVATE KEY-----\nMHcCAQEEIBkg",  # cut off: redacted to its own end only
        "next record keeps its words 4111",
        "1111 1111 1111 and 93.184",
        ".216.34 are halves",
        "Grüße, ☃ and jane@example.com",  # non-ASCII: byte offsets become character offsets
    ]
    found = find_all(texts)
    assert found == [find_personal_data(t) for t in texts]
    assert [redact(t, f) for t, f in zip(texts, found)] == [
        "<|secret|>", texts[1], texts[2], texts[3], "Grüße, ☃ and <|email|>",
    ]


def test_redacted_code_still_parses():
    source = 'API_KEY = "sk_live_4eC39HqLyjWDarjtT1zdp7dc"\nADMIN = "jane@example.com"  # ops: +1 415 555 0132\nHOST = "93.184.216.34"\n'
    record = Record("x", "code", "b/code/settings.py", text=source, language="python")
    PersonalData(PersonalDataConfig())([record])
    assert record.text == 'API_KEY = "<|secret|>"\nADMIN = "<|email|>"  # ops: <|phone|>\nHOST = "<|ip|>"\n'
    assert check_code("python", record.text)[0] is None


PLANTED = {
    "email": "jane.doe@example.com",
    "phone": "+1 415 555 0132",
    "ip": "93.184.216.34",
    "ipv6": "2a00:1450:4001:81b::200e",
    "card": "4111 1111 1111 1111",
    "aws": "AKIAIOSFODNN7EXAMPLE",
    "github": GITHUB_TOKEN,
    "password": "Tr0ub4dor&3-horse-battery",
}


def test_no_planted_value_reaches_the_corpus(tmp_path):
    landing = tmp_path / "landing"
    texts = [
        f"Please send the signed contract to {PLANTED['email']} before Friday, or call {PLANTED['phone']} and ask for Jane.",
        f"The staging server moved to {PLANTED['ip']} last week; its IPv6 address is {PLANTED['ipv6']} for the new network.",
        f"Her old card number {PLANTED['card']} was printed on the receipt, which is why the bank cancelled it at once.",
        "A paragraph about kilns and glazes with nothing personal in it at all, just clay, heat and patience.",
    ]
    code = {
        "settings.py": f'AWS_KEY = "{PLANTED["aws"]}"\nGITHUB_TOKEN = "{PLANTED["github"]}"\nDB_PASSWORD = "{PLANTED["password"]}"\n',
        "contact.py": f'# maintainer: {PLANTED["email"]}\ndef host():\n    return "{PLANTED["ip"]}"\n',
    }
    b = write_batch(landing, "b1", texts, code=code)
    (b / "images" / "captions.jsonl").write_text(
        json.dumps({"image": "red.png", "caption": f"a red square, photo by {PLANTED['email']}"}) + "\n"
        + json.dumps({"image": "blue.png", "caption": "a red square"}) + "\n"
    )
    clean(landing, tmp_path)

    corpus = ds.dataset(tmp_path / "kept", format="parquet").to_table()
    assert corpus.num_rows == 4 + 2 + 1
    for text in corpus.column("text").to_pylist():
        for value in PLANTED.values():
            assert value not in text
    by_source = {r["source"]: r for r in corpus.to_pylist()}
    assert by_source["b1/text/a.jsonl:1"]["redactions"] == {"email": 1, "phone": 1, "ip": 0, "card": 0, "secret": 0}
    assert by_source["b1/text/a.jsonl:4"]["redactions"] is None
    assert by_source["b1/code/settings.py"]["redactions"]["secret"] == 3
    assert by_source["b1/images/red.png"]["text"] == "a red square, photo by <|email|>"

    manifest = json.loads((tmp_path / "batches" / "b1" / "_manifest.json").read_text())
    assert manifest["redactions"] == {
        "text": {"email": 1, "phone": 1, "ip": 2, "card": 1},
        "code": {"email": 1, "ip": 1, "secret": 3},
        "image_text": {"email": 1},
    }
    [batch] = ready_batches(landing)
    assert all(row.ok for row in verify_batch(batch, tmp_path / "batches", tmp_path / "rejected", CleaningConfig()))


def test_personal_data_settings_are_in_every_modality_cache_key(tmp_path):
    landing = tmp_path / "landing"
    write_batch(landing, "b1", ["Nothing personal here, only a sentence about clay and fire and time."])
    clean(landing, tmp_path)
    again = clean(landing, tmp_path, CleaningConfig(personal_data=PersonalDataConfig(email="reject")))
    assert {r.modality for r in again.results if not r.cached} == {"text", "code", "image_text"}


def test_the_redactions_column_reads_as_columns_in_polars(tmp_path):
    pl = pytest.importorskip("polars")
    landing = tmp_path / "landing"
    write_batch(landing, "b1", ["Mail jane@example.com or joe@example.com about the kiln schedule today."])
    clean(landing, tmp_path)
    frame = pl.read_parquet(tmp_path / "batches" / "b1" / "text.parquet")
    assert frame.select(pl.col("redactions").struct.field("email").sum()).item() == 2
    assert rows(tmp_path / "rejected")[0]["redactions"] is None
