#!/usr/bin/env python3
"""Writes the push_input seed corpus (fuzz/seeds/push_input, committed).

Each seed is `header lines \\n\\n body` (see fuzz_targets/push_input.rs). Tokens are RS256
JWS signed with the TEST-ONLY key dataplane/tests/data/push_jwt_test_key_a.pk8.der (kid
`key-a`), with claims around the target's fixed clock (1_700_000_000), plus malformed and
hostile token shapes. Run from anywhere: python3 fuzz/seeds/make_push_seeds.py
"""
import base64
import json
import pathlib

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding

ROOT = pathlib.Path(__file__).resolve().parents[2]
OUT = ROOT / "fuzz" / "seeds" / "push_input"
KEY = serialization.load_der_private_key(
    (ROOT / "dataplane/tests/data/push_jwt_test_key_a.pk8.der").read_bytes(), None
)
ATTACKER = serialization.load_der_private_key(
    (ROOT / "dataplane/tests/data/push_jwt_test_key_attacker.pk8.der").read_bytes(), None
)
NOW = 1_700_000_000
AUD = "https://helpr.test/v1/push/gmail"
SA = "gmail-push@helpr-test.iam.gserviceaccount.com"


def b64u(b: bytes) -> str:
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def sign(header, claims, key=KEY) -> str:
    h = header if isinstance(header, str) else json.dumps(header, separators=(",", ":"))
    c = claims if isinstance(claims, str) else json.dumps(claims, separators=(",", ":"))
    si = f"{b64u(h.encode())}.{b64u(c.encode())}"
    sig = key.sign(si.encode(), padding.PKCS1v15(), hashes.SHA256())
    return f"{si}.{b64u(sig)}"


def claims(**patch):
    c = {
        "iss": "https://accounts.google.com",
        "aud": AUD,
        "azp": "112233445566778899000",
        "email": SA,
        "email_verified": True,
        "sub": "112233445566778899000",
        "iat": NOW - 5,
        "exp": NOW + 3595,
    }
    for k, v in patch.items():
        if v is None:
            c.pop(k, None)
        else:
            c[k] = v
    return c


HDR = {"alg": "RS256", "kid": "key-a", "typ": "JWT"}


def push_body(data: dict | str, **message) -> str:
    raw = data if isinstance(data, str) else json.dumps(data)
    m = {"data": base64.b64encode(raw.encode()).decode(), "messageId": "2070443601311540",
         "message_id": "2070443601311540", "publishTime": "2021-02-26T19:13:55.749Z",
         "publish_time": "2021-02-26T19:13:55.749Z", "attributes": {}}
    m.update(message)
    return json.dumps({"message": m, "subscription": "projects/p/subscriptions/gmail-push"})


GOOD_BODY = push_body({"emailAddress": "support@acme.test", "historyId": 9876543210})


def seed(name: str, headers: list[str], body: str | bytes):
    b = body.encode() if isinstance(body, str) else body
    OUT.joinpath(name).write_bytes(("\n".join(headers) + "\n\n").encode() + b)


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    good = sign(HDR, claims())
    ct = "content-type: application/json"
    seed("valid-token-valid-body", [f"authorization: Bearer {good}", ct], GOOD_BODY)
    seed("valid-token-lowercase-scheme", [f"authorization: bearer {good}"], GOOD_BODY)
    seed("valid-token-string-history-id", [f"authorization: Bearer {good}", ct],
         push_body({"emailAddress": "a@b.test", "historyId": "12345"}))
    seed("valid-token-unpadded-data", [f"authorization: Bearer {good}"],
         json.dumps({"message": {"data": b64u(b'{"emailAddress":"u@x.y","historyId":"1"}'),
                                 "message_id": "1"}}))
    seed("valid-token-big-content-length",
         [f"authorization: Bearer {good}", "content-length: 70000"], GOOD_BODY)
    seed("two-authorization-headers",
         [f"authorization: Bearer {good}", "authorization: Bearer x"], GOOD_BODY)
    seed("no-authorization", [ct], GOOD_BODY)
    seed("basic-scheme", ["authorization: Basic dXNlcjpwYXNz"], GOOD_BODY)
    seed("empty-bearer", ["authorization: Bearer "], GOOD_BODY)
    payload = b64u(json.dumps(claims()).encode())
    none_hdr = b64u(b'{"alg":"none","kid":"key-a"}')
    hs_hdr = b64u(b'{"alg":"HS256","kid":"key-a"}')
    seed("alg-none", [f"authorization: Bearer {none_hdr}.{payload}."], GOOD_BODY)
    seed("alg-hs256", [f"authorization: Bearer {hs_hdr}.{payload}.c2ln"], GOOD_BODY)
    seed("crit-header", [f"authorization: Bearer {sign({'alg':'RS256','kid':'key-a','crit':['b64']}, claims())}"], GOOD_BODY)
    dup_alg = sign('{"alg":"RS256","alg":"RS256","kid":"key-a"}', claims())
    dup_aud = sign(HDR, '{"aud":"x","aud":"' + AUD + '","iss":"accounts.google.com"}')
    seed("duplicate-alg", [f"authorization: Bearer {dup_alg}"], GOOD_BODY)
    seed("duplicate-claim", [f"authorization: Bearer {dup_aud}"], GOOD_BODY)
    seed("unknown-kid", [f"authorization: Bearer {sign({'alg':'RS256','kid':'key-b'}, claims())}"], GOOD_BODY)
    seed("attacker-key", [f"authorization: Bearer {sign(HDR, claims(), ATTACKER)}"], GOOD_BODY)
    seed("jwk-in-header", [f"authorization: Bearer {sign({'alg':'RS256','kid':'key-a','jku':'https://evil.test/jwks','jwk':{'kty':'RSA','n':'AQAB','e':'AQAB'}}, claims())}"], GOOD_BODY)
    seed("expired", [f"authorization: Bearer {sign(HDR, claims(exp=NOW - 61))}"], GOOD_BODY)
    seed("not-yet-valid", [f"authorization: Bearer {sign(HDR, claims(nbf=NOW + 61))}"], GOOD_BODY)
    seed("too-old", [f"authorization: Bearer {sign(HDR, claims(iat=NOW - 3661))}"], GOOD_BODY)
    seed("iat-future", [f"authorization: Bearer {sign(HDR, claims(iat=NOW + 61))}"], GOOD_BODY)
    seed("aud-array", [f"authorization: Bearer {sign(HDR, claims(aud=[AUD]))}"], GOOD_BODY)
    seed("email-unverified-string", [f"authorization: Bearer {sign(HDR, claims(email_verified='true'))}"], GOOD_BODY)
    seed("exp-float", [f"authorization: Bearer {sign(HDR, claims(exp=1.7e9))}"], GOOD_BODY)
    seed("short-iss", [f"authorization: Bearer {sign(HDR, claims(iss='accounts.google.com'))}"], GOOD_BODY)
    seed("padded-segments", [f"authorization: Bearer {good}=="], GOOD_BODY)
    seed("four-segments", [f"authorization: Bearer {good}.e30"], GOOD_BODY)
    # Bodies that reach parse_push_body's error paths, and claims payloads as bodies.
    tok = [f"authorization: Bearer {good}"]
    seed("body-not-json", tok, "not json")
    seed("body-no-message", tok, '{"subscription":"s"}')
    seed("body-ids-disagree", tok, push_body({"emailAddress": "a@b", "historyId": "1"}, messageId="1", message_id="2"))
    seed("body-data-not-base64", tok, '{"message":{"messageId":"1","data":"!!"}}')
    seed("body-notification-array", tok, push_body("[1]"))
    seed("body-no-at", tok, push_body({"emailAddress": "nobody", "historyId": "1"}))
    seed("body-history-plus", tok, push_body({"emailAddress": "a@b", "historyId": "+1"}))
    seed("body-history-overflow", tok, push_body({"emailAddress": "a@b", "historyId": "99999999999999999999"}))
    seed("body-history-float", tok, push_body({"emailAddress": "a@b", "historyId": 1.5}))
    seed("body-is-claims", ["x-note: body doubles as a claims payload"], json.dumps(claims()))
    seed("body-is-claims-nbf", [], json.dumps(claims(nbf=NOW)))
    seed("body-is-claims-dup", [], '{"iss":"accounts.google.com","iss":"accounts.google.com"}')
    seed("body-deep-json", tok, '{"message":' * 60 + "1" + "}" * 60)


if __name__ == "__main__":
    main()
