"""lookup_of: the request's wanted fields decide the lookup, remembered per distinct set of them."""

from __future__ import annotations

import pytest

from eslbridge.directory.request import BadRequest, Lookup, classify, lookup_of, parse_form

BASE = (b"section=directory&tag_name=domain&key_name=name&key_value=pbx.example.org&action=sip_auth"
        b"&user=1000&domain=pbx.example.org&sip_auth_nonce=")


def test_the_same_user_with_other_nonces_is_one_lookup():
    first, second = lookup_of(BASE + b"n1"), lookup_of(BASE + b"n2")
    assert first == Lookup("1000", "pbx.example.org", "pbx.example.org", "sip_auth")
    assert second is first  # remembered: only unwanted fields differ
    assert lookup_of(BASE.replace(b"user=1000", b"user=1001") + b"n1").username == "1001"


@pytest.mark.parametrize("body", [
    BASE + b"x", BASE.replace(b"user=1000", b"user=10%3000"), BASE.replace(b"action=sip_auth", b"action=group_call"),
    BASE.replace(b"user=1000", b"user=1000%27%20OR%201%3D1"), b"garbage", b"",
])
def test_it_answers_like_classify_of_parse_form(body):
    assert lookup_of(body) == classify(parse_form(body))


def test_a_bad_encoding_is_refused_every_time():
    body = BASE.replace(b"user=1000", b"user=%FF")
    for _ in range(2):  # errors are not remembered as answers
        with pytest.raises(BadRequest):
            lookup_of(body)
