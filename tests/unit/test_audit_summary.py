"""The end-of-run summary: "denied" names the rule and is only for policy refusals; every other
refusal (a 502, the address guard, a malformed message) is "failed" with its reason."""

from __future__ import annotations

import pytest

from nixcell.net.audit import AuditLog, Record


def rec(host: str, rule: str, action: str, status: int | None, reason: str | None) -> Record:
    return Record("c", "GET", "https", host, 443, "/p", rule, action, status, reason=reason)


POLICY = [
    (rec("a.test", "rule 2 (p.toml:5)", "deny", 403, "x"), "GET a.test/p (by rule 2 at p.toml:5)"),
    (rec("b.test", "no rule", "deny", 403, "x"), "GET b.test/p (no rule)"),
    (rec("c.test", "rule 1 (--deny-host c.test)", "deny", 403, None), "by rule 1 at --deny-host"),
]
OTHER = [
    (rec("d.test", "rule 1 (p.toml:2)", "error", 502, "cannot reach d.test:443: refused"),
     "GET d.test/p (502: cannot reach d.test:443: refused)"),
    (rec("e.test", "rule 1 (p.toml:2)", "deny", 403, "nixcell: e.test resolves to 10.0.0.1"),
     "GET e.test/p (403: e.test resolves to 10.0.0.1)"),
    (rec("f.test", "-", "deny", 400, "malformed request: two Content-Length"),
     "(400: malformed request: two Content-Length)"),
    (rec("g.test", "learn", "error", None, None), "GET g.test/p (refused)"),
]  # fmt: skip


@pytest.mark.parametrize(("record", "shown"), POLICY)
def test_policy_refusals_are_denied_by_their_rule(record, shown):
    audit = AuditLog("c", None, str)
    audit.write(record, by_policy=True)
    summary = audit.summary()
    assert summary.startswith("1 request denied: ") and shown in summary
    assert "failed" not in summary


@pytest.mark.parametrize(("record", "shown"), OTHER)
def test_other_refusals_are_failed_with_their_reason(record, shown):
    audit = AuditLog("c", None, str)
    audit.write(record)
    summary = audit.summary()
    assert summary.startswith("1 request failed: ") and shown in summary
    assert "denied" not in summary and "rule" not in summary


def test_both_kinds_allowed_ones_and_the_limit():
    audit = AuditLog("c", None, str)
    assert audit.summary() is None
    audit.write(rec("ok.test", "rule 1 (f:1)", "allow", 200, None))
    assert audit.summary() is None
    for record, _ in POLICY * 3:
        audit.write(record, by_policy=True)
    for record, _ in OTHER:
        audit.write(record)
    denied, failed = audit.summary().split("; ")
    assert denied.startswith("9 requests denied: ") and denied.endswith(", and 4 more")
    assert failed.startswith("4 requests failed: ")
