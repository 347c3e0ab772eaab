"""Compliance evidence: the rule table shared by `fopproxy check` (static) and `scan` (live).

Both commands produce a `Report`: one `Result` per rule of the Card FOP transport page (and of the
product's reading of it), rendered as an aligned table or as JSON that validates against
`docs/compliance-report.schema.json`.
"""
