"""Blind-index normalisation: equal parties hash equal, different ones do not."""

from __future__ import annotations

import pytest

from eslbridge.keys.blindindex import blind_index, normalize_ip, normalize_number, normalize_uri

KEY = b"k" * 44


@pytest.mark.parametrize("raw, expected", [
    ("+49 30 123456", "+4930123456"),
    ("0049-30-123.456", "+4930123456"),
    ("+49 (30) 1234/56", "+4930123456"),
    ("\t030 123456 ", "030123456"),
    ("tel:+1-201-555-0123;ext=1", "+12015550123"),
    ("*97", "*97"),
    ("anonymous", "anonymous"),
])
def test_normalize_number(raw, expected):
    assert normalize_number(raw) == expected


@pytest.mark.parametrize("raw, expected", [
    ("sip:1000@example.com", "sip:1000@example.com"),
    ("SIP:1000@Example.COM:5060;transport=udp", "sip:1000@example.com"),
    ('"Bob" <sip:1000@example.com;user=phone>;tag=abc', "sip:1000@example.com"),
    ("sip:Alice@example.com.", "sip:Alice@example.com"),
    ("sip:%41lice@example.com?subject=x", "sip:Alice@example.com"),
    ("sips:1000@example.com", "sips:1000@example.com"),
    ("1000@example.com", "sip:1000@example.com"),
    ("sip:1000@[2001:DB8:0::1]:5061", "sip:1000@[2001:db8::1]"),
    ("sip:1000@192.0.2.1:5060", "sip:1000@192.0.2.1"),
    ("sip:1000@192.0.2.1.", "sip:1000@192.0.2.1"),
    ("sip:1000@192.0.2.1.example.com", "sip:1000@192.0.2.1.example.com"),
    ("sip:1000@3com.EXAMPLE", "sip:1000@3com.example"),
    ("sip:+4930123;phone-context=example.com@example.com", "sip:+4930123;phone-context=example.com@example.com"),
    ("sip:example.com", "sip:example.com"),
    ("tel:+49-30-123456", "tel:+4930123456"),
])
def test_normalize_uri(raw, expected):
    assert normalize_uri(raw) == expected


@pytest.mark.parametrize("raw, expected", [
    ("192.0.2.1", "192.0.2.1"),
    ("2001:DB8:0:0::1", "2001:db8::1"),
    ("[2001:db8::1]", "2001:db8::1"),
    ("::ffff:192.0.2.1", "192.0.2.1"),
])
def test_normalize_ip(raw, expected):
    assert normalize_ip(raw) == expected


@pytest.mark.parametrize("kind, value", [
    ("number", ""), ("number", " - "), ("number", "00"), ("uri", "sip:1000@"), ("uri", "<sip:1000@x"),
    ("ip", "192.0.2.1:5060"), ("ip", "example.com"), ("ip", ""),
])
def test_bad_values_are_refused(kind, value):
    with pytest.raises(ValueError):
        blind_index(KEY, kind, value)


def test_unknown_kind():
    with pytest.raises(ValueError, match="unknown blind index kind 'email'"):
        blind_index(KEY, "email", "a@b")


def test_equalities_and_inequalities():
    h = blind_index
    assert h(KEY, "uri", "sip:1000@Example.COM;transport=udp") == h(KEY, "uri", "sip:1000@example.com")
    assert h(KEY, "number", "+49 30 123456") == h(KEY, "number", "004930123456")
    assert len(h(KEY, "number", "1000")) == 32
    assert h(KEY, "uri", "sip:alice@example.com") != h(KEY, "uri", "sip:Alice@example.com")  # user is case-sensitive
    assert h(KEY, "number", "030123456") != h(KEY, "number", "+4930123456")
    assert h(KEY, "number", "1000") != h(KEY, "uri", "1000")  # the kind is part of the MAC
    assert h(KEY, "uri", "sip:1000@example.com") != h(b"other key", "uri", "sip:1000@example.com")
