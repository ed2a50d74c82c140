import base64
import hashlib
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from zen_coder.history.secrets import PLACEHOLDERS, redact, redact_edit


def _key_body(seed: str, lines: int = 6) -> str:
    """Base64 lines that look like the body of a real key (and are the same on every run)."""
    raw = b"".join(hashlib.sha256(f"{seed}{i}".encode()).digest() for i in range(lines * 2))
    encoded = base64.b64encode(raw).decode()
    return "\n".join(encoded[i : i + 64] for i in range(0, len(encoded), 64))


RSA_BODY = _key_body("rsa")
RSA_BLOCK = f"-----BEGIN RSA PRIVATE KEY-----\n{RSA_BODY}\n-----END RSA PRIVATE KEY-----"

TOKENS = {
    "aws access key id": "AKIAIOSFODNN7EXAMPLE",
    "aws temporary key id": "ASIAY34FZKBOKMUTVV7A",
    "google api key": "AIzaSyD-9tSrke72PouQMnMX-a7eZSW0jkFMBWY",
    "github classic": "ghp_4Fg7hJkL9mNpQrStUvWxYz0123456789AbCd",
    "github oauth": "gho_16C7e42F292c6912E7710c838347Ae178B4a",
    "github fine-grained": "github_pat_11ABCDEFG0123456789abc_defghijklmnopqrstuvwxyzABCDEF",
    "gitlab": "glpat-x4Tq9Zr2Vb7Nm1Lk8Hj3",
    "slack": "xoxb-123456789012-1234567890123-AbCdEfGhIjKlMnOpQrStUvWx",
    "stripe live": "sk_live_51HxYzAbCdEfGhIjKlMnOpQr",
    "stripe restricted": "rk_live_51HxYzAbCdEfGhIjKlMnOpQr",
    "stripe test": "sk_test_4eC39HqLyjWDarjtT1zdp7dc",
    "openai": "sk-proj-Ab3dEf6hIj9kLm2nOp5qRs8tUv1wXy4z",
    "anthropic": "sk-ant-api03-Xy7Zq2Wv9Ut4Sr1Qp6On3Ml8Kj5Ih0Gf",
    "hugging face": "hf_aBcDeFgHiJkLmNoPqRsTuVwXyZ0123456789",
    "npm": "npm_a1B2c3D4e5F6g7H8i9J0k1L2m3N4o5P6q7R8",
    "pypi": "pypi-AgEIcHlwaS5vcmcCJGE3ZDEyMzQ1LTY3ODktNGFiYy1kZWYwLTEyMzQ1Njc4OWFiYwACKlsz",
    "sendgrid": "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",
    "jwt": (
        "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9"
        ".eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkpvaG4gRG9lIn0"
        ".SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c"
    ),
}


def test_placeholders_name_every_kind():
    assert PLACEHOLDERS == {
        "private_key": "<PRIVATE_KEY>",
        "key": "<KEY>",
        "password": "<PASSWORD>",
        "email": "<EMAIL>",
    }


# Private keys


def test_private_key_block_becomes_one_placeholder():
    text = f"key = '''\n{RSA_BLOCK}\n'''\nprint(key)\n"
    assert redact(text) == ("key = '''\n<PRIVATE_KEY>\n'''\nprint(key)\n", {"private_key": 1})


@pytest.mark.parametrize("label", ["PRIVATE KEY", "EC PRIVATE KEY", "OPENSSH PRIVATE KEY"])
def test_private_key_labels(label):
    text = f"-----BEGIN {label}-----\n{_key_body(label)}\n-----END {label}-----\n"
    assert redact(text) == ("<PRIVATE_KEY>\n", {"private_key": 1})


def test_armored_key_with_headers_and_blank_lines_is_redacted_whole():
    text = (
        "-----BEGIN PGP PRIVATE KEY BLOCK-----\nVersion: GnuPG v2\n\n"
        f"{_key_body('pgp')}\n=XyZ1\n-----END PGP PRIVATE KEY BLOCK-----\ndone\n"
    )
    assert redact(text) == ("<PRIVATE_KEY>\ndone\n", {"private_key": 1})


def test_private_key_in_a_json_string_with_escaped_newlines():
    block = f"-----BEGIN PRIVATE KEY-----\n{_key_body('json')}\n-----END PRIVATE KEY-----\n"
    text = json.dumps({"private_key": block})  # newlines escaped: the block is one line
    assert redact(text) == ('{"private_key": "<PRIVATE_KEY>"}', {"private_key": 1})


def test_truncated_private_key_runs_to_the_next_blank_line():
    text = f"-----BEGIN RSA PRIVATE KEY-----\n{RSA_BODY}\n\nnext paragraph\n"
    assert redact(text) == ("<PRIVATE_KEY>\n\nnext paragraph\n", {"private_key": 1})


def test_truncated_private_key_runs_to_the_end_of_the_text():
    text = f"start\n-----BEGIN OPENSSH PRIVATE KEY-----\n{RSA_BODY[:100]}"
    assert redact(text) == ("start\n<PRIVATE_KEY>", {"private_key": 1})


def test_truncated_armored_key_with_a_blank_line_after_begin():
    text = f"-----BEGIN PGP PRIVATE KEY BLOCK-----\n\n{_key_body('pgp')}\n\nafter\n"
    assert redact(text) == ("<PRIVATE_KEY>\n\nafter\n", {"private_key": 1})


def test_truncated_key_skips_headers_and_blank_line_before_its_body():
    text = (
        "-----BEGIN RSA PRIVATE KEY-----\nProc-Type: 4,ENCRYPTED\nDEK-Info: AES-128-CBC,00FF\n\n"
        f"{RSA_BODY}\n\nafter\n"
    )
    assert redact(text) == ("<PRIVATE_KEY>\n\nafter\n", {"private_key": 1})


def test_public_key_and_certificate_are_kept():
    text = "-----BEGIN PUBLIC KEY-----\nMIIBIjANBgkqh\n-----END PUBLIC KEY-----\n"
    assert redact(text) == (text, {})


# Tokens


@pytest.mark.parametrize("token", TOKENS.values(), ids=TOKENS.keys())
@pytest.mark.parametrize(
    ("before", "after"),
    [
        ("", ""),
        ('CONFIG = {"value": "', '"}\n'),
        ("curl -H 'Authorization: Bearer ", "' https://api.example.com/v1/things\n"),
        ("see the docs; the credential ", " was rotated on Monday.\n"),
    ],
)
def test_tokens_become_key_placeholders(token, before, after):
    assert redact(before + token + after) == (before + "<KEY>" + after, {"key": 1})


@pytest.mark.parametrize(
    "text",
    [
        "x = 'task-management-for-engineering-teams'",  # `sk-` inside a word
        "AKIA is the prefix of an access key id: AKIA1234",  # too short
        "ghp_short and sk_live_short",
        "XAKIAIOSFODNN7EXAMPLE",  # glued to a word
        "import sklearn; sk = 1",
        "header = b'eyJ'",
        "msg.attribute_name",
    ],
)
def test_token_look_alikes_are_kept(text):
    assert redact(text) == (text, {})


def test_token_assigned_to_a_secret_name_counts_as_key():
    assert redact('api_key = "AKIAIOSFODNN7EXAMPLE"') == ('api_key = "<KEY>"', {"key": 1})


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "aws_secret_access_key = wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY\n",
            "aws_secret_access_key = <KEY>\n",
        ),
        (
            'AWS_SECRET_ACCESS_KEY = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"',
            'AWS_SECRET_ACCESS_KEY = "<KEY>"',
        ),
        (
            "awsSecretAccessKey: wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
            "awsSecretAccessKey: <KEY>",
        ),
    ],
)
def test_aws_secret_access_key(text, expected):
    assert redact(text) == (expected, {"key": 1})


def test_token_in_a_long_line_of_base64():
    blob = base64.b64encode(hashlib.sha512(b"blob").digest() * 200).decode()
    text = f"data = '{blob}' + ' {TOKENS['aws access key id']} ' + '{blob}'\n"
    assert redact(text) == (text.replace(TOKENS["aws access key id"], "<KEY>"), {"key": 1})


# Passwords and other assigned secrets


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('password = "hunter22"', 'password = "<PASSWORD>"'),
        ("DB_PASSWORD: 'hunter22'", "DB_PASSWORD: '<PASSWORD>'"),
        ('{"user": "bob", "password": "hunter22"}', '{"user": "bob", "password": "<PASSWORD>"}'),
        ('{\\"password\\": \\"hunter22\\"}', '{\\"password\\": \\"<PASSWORD>\\"}'),
        ("DB_PASSWORD=hunter2hunter2\n", "DB_PASSWORD=<PASSWORD>\n"),
        ("export API_KEY=abcdef123456", "export API_KEY=<PASSWORD>"),
        ("PGPASSWORD=hunter2hunter2 # for psql", "PGPASSWORD=<PASSWORD> # for psql"),
        ("db.password=s3cr3tpass\r\n", "db.password=<PASSWORD>\r\n"),
        ("db:\n  client_secret: abcdefgh1234\n", "db:\n  client_secret: <PASSWORD>\n"),
        ("  - smtp_pass: hunter2hunter2", "  - smtp_pass: <PASSWORD>"),
        ('self.api_key = "abcdef123456"', 'self.api_key = "<PASSWORD>"'),
        ("const apiKey = 'abcdef123456';", "const apiKey = '<PASSWORD>';"),
        ('password: str = "hunter22"', 'password: str = "<PASSWORD>"'),
        ('connect(host="db", password="hunter22")', 'connect(host="db", password="<PASSWORD>")'),
        ("config['secret_key_base'] = 'abcdef123456'", "config['secret_key_base'] = '<PASSWORD>'"),
        ('token := "abcdefgh"', 'token := "<PASSWORD>"'),
        ("'Passwd' => 'hunter22',", "'Passwd' => '<PASSWORD>',"),
        ("ACCESS_TOKEN='ya29.a0AfH6SMB'", "ACCESS_TOKEN='<PASSWORD>'"),
        ("privateKey: `abcdef123456`", "privateKey: `<PASSWORD>`"),
        ("PWD = 'letmein99'", "PWD = '<PASSWORD>'"),
    ],
)
def test_assigned_secrets_keep_name_and_punctuation(text, expected):
    assert redact(text) == (expected, {"password": 1})


@pytest.mark.parametrize(
    "text",
    [
        "password = get_password()",
        "token = request.token",
        "password=get_password()",
        "    token=request.token,",
        'password = "${DB_PASSWORD}"',
        "DB_PASSWORD=${DB_PASSWORD}",
        "DB_PASSWORD=$DB_PASSWORD_FROM_VAULT",
        'secret: "{{ secret }}"',
        'password = "%(password)s"',
        'api_key = "<your-token>"',
        'password = os.environ["DB_PASSWORD"]',
        "apiKey: process.env.API_KEY,",
        'password = getenv("DB_PASSWORD")',
        'password = ""',
        'password = "abc12"',
        "PASSWORD=short",
        'password = "<PASSWORD>"',
        "password: str",
        "api_key: Optional[str] = None",
        "access_token: AccessToken",
        'tokenizer = "bert-base-uncased"',
        'max_tokens = "100000000"',
        'bypass = "abcdefghij"',
        'passes = "abcdefghij"',
        'key = "abcdefghij"',
        "private_key: |\n  indented block\n",
        "if password == 'hunter22': pass",
        "for key, token in pairs:\n    pass\n",
    ],
)
def test_secret_look_alikes_are_kept(text):
    assert redact(text) == (text, {})


def test_several_secrets_on_one_line():
    text = f'login(token="{TOKENS["github classic"]}", password="hunter22", api_key="x")'
    expected = 'login(token="<KEY>", password="<PASSWORD>", api_key="x")'
    assert redact(text) == (expected, {"key": 1, "password": 1})


def test_env_file():
    text = "# local settings\nDEBUG=true\nSECRET_KEY=django-insecure-0123456789\nPORT=8000\n"
    expected = "# local settings\nDEBUG=true\nSECRET_KEY=<PASSWORD>\nPORT=8000\n"
    assert redact(text) == (expected, {"password": 1})


def test_url_assigned_to_a_secret_name_is_one_password():
    text = 'secret_url = "https://u:pw@host"'
    assert redact(text) == ('secret_url = "<PASSWORD>"', {"password": 1})


# URL credentials


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "DATABASE_URL=postgres://app:hunter2@db.example.com:5432/app",
            "DATABASE_URL=postgres://app:<PASSWORD>@db.example.com:5432/app",
        ),
        ("redis://:s3cret@localhost:6379/0", "redis://:<PASSWORD>@localhost:6379/0"),
        (
            "git clone https://bob:pw@host/repo.git",
            "git clone https://bob:<PASSWORD>@host/repo.git",
        ),
    ],
)
def test_url_password_is_replaced_and_user_and_host_kept(text, expected):
    assert redact(text) == (expected, {"password": 1})


@pytest.mark.parametrize(
    "text",
    [
        "postgres://app:${DB_PASSWORD}@db:5432/app",
        "https://example.com:8080/path@v2",
        "see https://example.com/a:b@c",
    ],
)
def test_url_without_a_literal_password_is_kept(text):
    assert redact(text) == (text, {})


# Emails


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("# Author: Jane Doe <jane.doe+tag@mail.example.co.uk>", "# Author: Jane Doe <<EMAIL>>"),
        ("Write to info@example.org.", "Write to <EMAIL>."),
        ("mailto:x_y@host-name.io?subject=hi", "mailto:<EMAIL>?subject=hi"),
        ("git@github.com:org/repo.git", "<EMAIL>:org/repo.git"),
        ("...dots.first@example.com", "...<EMAIL>"),
    ],
)
def test_email_addresses_are_replaced(text, expected):
    assert redact(text) == (expected, {"email": 1})


@pytest.mark.parametrize(
    "text",
    [
        '@app.route("/login")\ndef login(): ...',
        "@dataclass\nclass Point:\n    x: int\n",
        "@pytest.mark.parametrize('a', [1])",
        "@Override\npublic String toString() {",
        'import type { Node } from "@types/node";\n"@babel/core": "^7.0.0"',
        '<img src="icon@2x.png"> <img src="logo@1.5x.webp">',
        "npm install lodash@4.17.21",
        "user@localhost",
        "x = a @ b.T",
    ],
)
def test_email_look_alikes_are_kept(text):
    assert redact(text) == (text, {})


# The whole


MIXED = f"""\
# Maintainer: Jane Doe <jane@example.com>
{RSA_BLOCK}
AWS_ACCESS_KEY_ID = "AKIAIOSFODNN7EXAMPLE"
settings = {{"password": "hunter22", "url": "postgres://u:pw123456@db/app"}}
GITHUB_TOKEN={TOKENS["github classic"]}
@app.route("/")
"""


def test_counts_by_kind():
    text, counts = redact(MIXED)
    assert counts == {"email": 1, "private_key": 1, "key": 2, "password": 2}
    assert text == (
        "# Maintainer: Jane Doe <<EMAIL>>\n"
        "<PRIVATE_KEY>\n"
        'AWS_ACCESS_KEY_ID = "<KEY>"\n'
        'settings = {"password": "<PASSWORD>", "url": "postgres://u:<PASSWORD>@db/app"}\n'
        "GITHUB_TOKEN=<KEY>\n"
        '@app.route("/")\n'
    )


def test_redacting_twice_changes_nothing():
    once, _ = redact(MIXED)
    assert redact(once) == (once, {})


def test_switches_choose_what_is_redacted():
    only_emails, counts = redact(MIXED, secrets=False)
    assert counts == {"email": 1}
    assert "<EMAIL>" in only_emails and "AKIAIOSFODNN7EXAMPLE" in only_emails
    only_secrets, counts = redact(MIXED, emails=False)
    assert "email" not in counts and "jane@example.com" in only_secrets
    assert "AKIAIOSFODNN7EXAMPLE" not in only_secrets
    assert redact(MIXED, secrets=False, emails=False) == (MIXED, {})


def test_text_without_anything_to_redact_is_returned_as_is():
    text = "def add(a, b):\n    return a + b  # no secrets, no addresses\n" * 100
    result, counts = redact(text)
    assert result is text
    assert counts == {}


def test_non_ascii_text_is_untouched():
    text = "Grüße aus Köln — 東京, İstanbul, Ελλάδα 🙂\nlabel = 'Пароль'  # «password» in Russian\n"
    assert redact(text) == (text, {})


def test_offsets_hold_after_characters_that_lower_case_to_two():
    # "İ".lower() is two characters long, so a lower-cased copy would be out of step.
    text = "İ" * 40 + '\npassword = "hunter22"\n'
    assert redact(text) == ("İ" * 40 + '\npassword = "<PASSWORD>"\n', {"password": 1})


# Properties

_AWS_KEY_ID = st.from_regex(r"A(?:KIA|SIA|BIA|CCA)[A-Z0-9]{16}", fullmatch=True)
_EMAIL = st.from_regex(
    r"[a-z0-9][a-z0-9._%+-]{0,15}@[a-z][a-z0-9-]{0,15}(?:\.[a-z][a-z0-9-]{0,10})?\.[a-z]{2,6}",
    fullmatch=True,
)


@given(text=st.text(), planted=st.one_of(_AWS_KEY_ID, _EMAIL), position=st.integers(0, 10**6))
def test_a_planted_key_or_address_never_survives(text, planted, position):
    cut = position % (len(text) + 1)
    redacted, counts = redact(f"{text[:cut]} {planted}\n{text[cut:]}")
    assert planted not in redacted
    assert counts


@given(st.text())
def test_redaction_is_idempotent(text):
    once, _ = redact(text)
    assert redact(once) == (once, {})


# Redacting a new version from the lines it changed

_LINES = [
    "def add(a, b):",
    "    return a + b  # no secret here",
    "@property",
    "token = get_token()",  # a hint that redacts nothing
    'password = os.environ["DB_PASSWORD"]',
    "İstanbul",  # lower-cases to two characters: hints are looked for in an ASCII lower case
    "TO\u212aEN = 'abcdefghijkl'",  # Kelvin sign: lower-cases to `token` in a full lower case
    "    ",
    "",
]
_SECRET_LINES = [
    f"aws = '{TOKENS['aws access key id']}'",
    f"key = {TOKENS['github classic']}",
    'password = "hunter22"',
    "DB_PASS=s3cr3t-value",
    "contact: ada@example.org",
    "url = 'https://user:pa55word@example.org/db'",
    "-----BEGIN RSA PRIVATE KEY-----",
    RSA_BLOCK,
    "-----END RSA PRIVATE KEY-----",
    "Grüße",
]


@settings(deadline=None)
@given(
    old_lines=st.lists(st.sampled_from(_LINES + _SECRET_LINES) | st.text(max_size=12), max_size=12),
    edits=st.lists(
        st.tuples(
            st.integers(0, 100),
            st.sampled_from(["insert", "replace", "delete"]),
            st.sampled_from(_LINES + _SECRET_LINES) | st.text(max_size=12),
        ),
        min_size=1,
        max_size=3,
    ),
)
def test_redacting_the_changed_lines_gives_what_redacting_everything_gives(old_lines, edits):
    # Checked by hand: taking the unchanged lines from the old text rather than its redacted
    # text, or not subtracting the counts of the old changed lines, makes this fail.
    old = "\n".join(old_lines)
    new_lines = list(old_lines)
    for position, kind, line in edits:
        at = position % (len(new_lines) + 1)
        if kind == "insert" or at == len(new_lines):
            new_lines.insert(at, line)
        elif kind == "replace":
            new_lines[at] = line
        else:
            del new_lines[at]
    new = "\n".join(new_lines)
    assert redact_edit(old, new, redact(old)) == redact(new)
    assert redact_edit(old, new, redact(old, secrets=False), secrets=False) == redact(
        new, secrets=False
    )
    if not redact(old)[1]:  # by default, the old text had nothing to redact
        assert redact_edit(old, new) == redact(new)


EDITS_REACHING_ACROSS_LINES = {
    # The changed characters alone hold no hint; their line does.
    "a value typed after an unchanged secret name": (
        'password = os.environ["DB_PASSWORD"]\n',
        'password = "hunter22"\n',
    ),
    # Removing the "İ" lower-cases the text in full again, where the name becomes `token`.
    "a non-ASCII edit changes how unchanged lines lower-case": (
        "İstanbul\nTO\u212aEN = 'abcdefghijkl'\n",
        "Istanbul\nTO\u212aEN = 'abcdefghijkl'\n",
    ),
    "a BEGIN line added above an unchanged key body": (
        f"x = 1\n{RSA_BODY}\n-----END RSA PRIVATE KEY-----\n",
        f"x = 1\n-----BEGIN RSA PRIVATE KEY-----\n{RSA_BODY}\n-----END RSA PRIVATE KEY-----\n",
    ),
}


@pytest.mark.parametrize(
    ("old", "new"), EDITS_REACHING_ACROSS_LINES.values(), ids=EDITS_REACHING_ACROSS_LINES
)
def test_edits_that_reach_across_lines_redact_the_whole_text(old, new):
    # Checked by hand: searching the changed characters rather than their lines fails the first
    # case; without the fallback for non-ASCII edits the second; without the one for private keys
    # the third.
    assert redact(old)[1] == {}
    assert redact(new)[1]
    assert redact_edit(old, new) == redact(new)
